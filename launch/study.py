"""Human studies: PRSR's "% Fooled" (section 5.3) and SRIM's pairwise preference (Table 2), as a web app.

  python launch/study.py build --kind=fooled --workdir=runs/celeba --regression_workdir=runs/celeba_regression \
      --out=studies/celeba                        # images + manifest, from trained runs
  python launch/study.py build --kind=preference --workdir=runs/srim --srgan_workdir=runs/srgan --out=studies/srim
  python launch/study.py invite --study=studies/celeba --count=200 --base_url=https://study.example.org > links.txt
  python launch/study.py serve --study=studies/celeba --port=8080   # only invited links; --open: any ?worker=ID
  python launch/study.py report --study=studies/celeba              # % Fooled with intervals, figure 7, table1.md

`serve` needs the web packages: pip install -e '.[study]'. The work is in common/study/.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_logs  # noqa: E402  (after the path)

COMMANDS = ('build', 'invite', 'serve', 'report')
INSTALL = "pip install -e '.[study]'"


def define_flags():
  # build
  flags.DEFINE_enum(
    'kind',
    'fooled',
    ['fooled', 'preference'],
    'build: "% Fooled" (PRSR 5.3) from a pixel '
    "recursive run, or SRIM's pairwise preference (Table 2) from an SRIM and an SRGAN run.",
  )
  flags.DEFINE_string('workdir', None, 'build: the pixel recursive run (fooled) or the SRIM run (preference).')
  flags.DEFINE_string(
    'regression_workdir', '', 'build --kind=fooled: the regression baseline run; empty: no Regression row.'
  )
  flags.DEFINE_string('srgan_workdir', None, 'build --kind=preference: the SRGAN run.')
  flags.DEFINE_string('out', None, 'build: the new study folder (must not exist or be empty).')
  config_flags.DEFINE_config_file(
    'config',
    None,
    'build --kind=fooled: the pixel recursive config for the rows '
    '(its data and evaluate sections); default: the config saved in --workdir.',
    lock_config=True,
  )
  flags.DEFINE_integer(
    'num_examples', 100, 'build --kind=fooled: eval examples to make images of, at least practice_pairs + main_pairs.'
  )
  flags.DEFINE_integer('per_class', 2, 'build --kind=preference: eval images of each seen and each unseen class.')
  flags.DEFINE_list(
    'rows',
    [],
    "build --kind=fooled: the table 1 rows to study (default: the paper's four: Regression and each tau=...; "
    "Bicubic is refused, as it is the golden questions' algorithm; NN is allowed with a warning).",
  )
  flags.DEFINE_integer(
    'scale',
    None,
    'build: nearest-neighbour enlargement of every image (default: the smallest that shows them at 128 CSS '
    "pixels or more: fooled 4, 32x32 at 128x128; preference 1 for SRIM's 128x128); smaller is warned.",
  )
  flags.DEFINE_integer(
    'display_ms',
    None,
    'build: how long each pair is shown before it is hidden (fooled: 1000, '
    'as PRSR and Zhang et al.; preference: 0, shown until answered).',
  )
  flags.DEFINE_integer('practice_pairs', 10, 'build --kind=fooled: practice pairs with feedback, not counted.')
  flags.DEFINE_integer('main_pairs', 45, 'build --kind=fooled: pairs after the practice, golden ones included.')
  flags.DEFINE_integer('golden_pairs', 5, 'build --kind=fooled: golden questions (bicubic vs truth) among them.')
  flags.DEFINE_integer('workers_per_algorithm', 40, 'build --kind=fooled: valid sessions wanted per algorithm.')
  flags.DEFINE_integer(
    'pairs_per_split',
    10,
    'build --kind=preference: pairs per test of seen and of unseen classes, each from a different class.',
  )
  flags.DEFINE_integer('participants', 31, 'build --kind=preference: finished sessions wanted (SRIM had 31).')
  flags.DEFINE_integer('seed', 0, 'build --kind=preference: the key of the SRIM samples.')
  # serve / report
  flags.DEFINE_string('study', None, 'serve, report: the study folder made by build.')
  flags.DEFINE_string(
    'host',
    '127.0.0.1',
    'serve: address to listen on (0.0.0.0: every interface; behind a reverse proxy keep 127.0.0.1).',
  )
  flags.DEFINE_integer('port', 8080, 'serve: TCP port.')
  flags.DEFINE_string(
    'registry', '', 'serve: a SQLite file shared by several studies, so that a worker takes part in only one of them.'
  )
  flags.DEFINE_float(
    'abandon_after_s', 1800, "serve: an unfinished session idle this long no longer holds its algorithm's place."
  )
  flags.DEFINE_integer(
    'serve_seed',
    None,
    'serve: seeds the assignment of algorithms and the order and sides of '
    'pairs, for a reproducible simulation; default: fresh randomness, which workers cannot '
    'predict.',
  )
  flags.DEFINE_string('forwarded_allow_ips', '127.0.0.1', 'serve: proxies trusted for X-Forwarded-* headers.')
  flags.DEFINE_bool(
    'open',
    False,
    "serve: take any worker id (a crowd platform's, put in the link), not only invited ones; then count only "
    'approved completions with report --approved.',
  )
  flags.DEFINE_integer(
    'new_sessions_per_minute', 20, 'serve: new sessions one client address may start in any minute (0: no limit).'
  )
  # invite
  flags.DEFINE_integer('count', 0, 'invite: how many signed links to print, each for a new random worker id.')
  flags.DEFINE_string(
    'base_url', '', 'invite: the address workers reach the server at, e.g. https://study.example.org.'
  )
  flags.DEFINE_string(
    'approved',
    '',
    "report: a crowd platform's approved completions, a CSV of worker id, completion code; only sessions on it count.",
  )
  flags.DEFINE_string(
    'table1_dir',
    None,
    'report --kind=fooled: the folder of the table1.md to merge % Fooled into '
    '(default: the --workdir the study was built from).',
  )


def _need(name: str, command: str):
  value = flags.FLAGS[name].value
  if not value:
    fail(f'{command} needs --{name}.')
  return value


def build():
  from common.errors import UserError

  f = flags.FLAGS
  out, workdir = _need('out', 'build'), _need('workdir', 'build')
  display_ms = f.display_ms if f.display_ms is not None else (1000 if f.kind == 'fooled' else 0)
  try:
    from launch import study_build as build_lib

    if f.kind == 'fooled':
      m = build_lib.build_fooled(
        out,
        workdir,
        f.regression_workdir,
        config=f.config,
        num_examples=f.num_examples,
        rows=f.rows,
        scale=f.scale,
        practice_pairs=f.practice_pairs,
        main_pairs=f.main_pairs,
        golden_pairs=f.golden_pairs,
        workers_per_arm=f.workers_per_algorithm,
        display_ms=display_ms,
      )
    else:
      m = build_lib.build_preference(
        out,
        workdir,
        _need('srgan_workdir', 'build --kind=preference'),
        per_class=f.per_class,
        scale=f.scale,
        seed=f.seed,
        pairs_per_split=f.pairs_per_split,
        participants=f.participants,
        display_ms=display_ms,
      )
  except UserError as e:
    fail(e, code=1)
  compared = ', '.join(m.arms) if m.kind == 'fooled' else '; '.join(' vs '.join(t) for t in m.tests)
  print(
    f'Built a {m.kind} study of {len(m.examples)} examples in {out} ({compared}); images shown at '
    f'{m.image_size[1]}x{m.image_size[0]} pixels.'
  )
  for note in m.notes:
    print(f'  {note}')


def serve():
  from common.errors import UserError

  study = _need('study', 'serve')
  if flags.FLAGS.new_sessions_per_minute < 0:
    fail(f'--new_sessions_per_minute must be >= 0 (0: no limit), got {flags.FLAGS.new_sessions_per_minute}.')
  try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    fail(f'serve needs the web server packages ({e.name} is missing): {INSTALL}', code=1)
  from common.study import server

  try:
    server.serve(
      study,
      host=flags.FLAGS.host,
      port=flags.FLAGS.port,
      registry=flags.FLAGS.registry,
      abandon_after_s=flags.FLAGS.abandon_after_s,
      forwarded_allow_ips=flags.FLAGS.forwarded_allow_ips,
      seed=flags.FLAGS.serve_seed,
      open_study=flags.FLAGS.open,
      new_sessions_per_minute=flags.FLAGS.new_sessions_per_minute,
    )
  except UserError as e:
    fail(e, code=1)


def invite():
  from common.errors import UserError
  from common.study import access, manifest

  study, base_url = _need('study', 'invite'), _need('base_url', 'invite')
  if flags.FLAGS.count < 1:
    fail(f'invite needs --count >= 1, got {flags.FLAGS.count}.')
  try:
    manifest.load(study)
  except UserError as e:
    fail(e, code=1)
  print('\n'.join(access.invitations(study, flags.FLAGS.count, base_url)))


def report():
  from common.errors import UserError
  from common.study import access, manifest
  from common.study import report as report_lib

  study = _need('study', 'report')
  try:
    m = manifest.load(study)
    table1_dir = flags.FLAGS.table1_dir if flags.FLAGS.table1_dir is not None else m.source.get('workdir', '')
    approved = access.read_approved(flags.FLAGS.approved) if flags.FLAGS.approved else None
    paths = report_lib.write(study, table1_dir, approved)
    print(report_lib.summary(study, approved), end='')
  except UserError as e:
    fail(e, code=1)
  print('wrote ' + ', '.join(paths))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    fail(f'usage: launch/study.py {{{"|".join(COMMANDS)}}} [--flags]; got {" ".join(argv[1:]) or "no command"}.')
  quiet_logs(imports_tensorflow=argv[1] == 'build')  # serve and report never load TensorFlow.
  {'build': build, 'invite': invite, 'serve': serve, 'report': report}[argv[1]]()


if __name__ == '__main__':
  try:
    define_flags()
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
