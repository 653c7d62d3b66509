"""Table 1 of the pixel recursive paper in one command: pSNR, SSIM, MS-SSIM, consistency and NLL of Bicubic, NN,
Regression and the model's samples (tau = 1.0, 1.1, 1.2, greedy), written to <workdir>/table1.{md,csv,png}. With an
SRIM config: SRIM's table 1, luminance pSNR/SSIM and diversity of bicubic, SRGAN (--srgan_workdir=DIR[,DIR...], a
row per run) and SRIM's samples, and its figures 4-6 (input | bicubic | SRGAN | SRIM samples | truth), in
<workdir>/table_srim.{md,csv} and figure_srim*.png; with an SRGAN config, the same for bicubic and SRGAN alone.

  python launch/evaluate.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--regression_workdir=DIR]
                            [--num_examples=N] [--config.evaluate.field=value ...]

With --sr_space, any config: the space of samples scored as the NTIRE 2021 challenge does (LPIPS, diversity,
LR-PSNR; launch/sr_space.py) for --workdir, --regression_workdir, --srgan_workdir and --runs, beside Bicubic, in
<workdir>/sr_space.{md,csv,png}.

--workdir is the pixel recursive run (as given to launch/train.py; default runs/<config file name>), and where the
table goes. A row whose model has no checkpoint is skipped with a message. The work is in pixelsr/evaluate.py.
"""

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_logs, use_huge_pages  # noqa: E402  (after the path)


def define_flags():
  config_flags.DEFINE_config_file(
    'config',
    os.path.join(_REPO, 'configs', 'demo.py'),
    'The pixel recursive config of the run: its data and `evaluate` sections.',
    lock_config=True,
  )
  flags.DEFINE_string(
    'workdir',
    None,
    'The pixel recursive run to evaluate; table1.md, table1.csv and table1.png '
    'are written here. Default: runs/<config file name>.',
  )
  flags.DEFINE_string(
    'regression_workdir',
    '',
    'The regression baseline run (configs/*_regression.py); empty: the Regression row is skipped.',
  )
  flags.DEFINE_integer(
    'num_examples',
    None,
    'Eval examples to score; default config.evaluate.num_examples (SRIM: config.data.num_eval_examples).',
  )
  flags.DEFINE_integer('num_samples', 4, 'SRIM only: samples per input, scored each (table_srim.{md,csv}).')
  flags.DEFINE_list(
    'srgan_workdir',
    [],
    'SRIM and --sr_space: SRGAN runs (configs/*_srgan.py) on the same data, '
    "comma-separated, a row each ('SRGAN' for one; for several, named by variant: 'SRGAN (Ledig)', "
    "'SRGAN (tensorlayer)'); empty: no SRGAN row.",
  )
  flags.DEFINE_integer('num_figure_rows', 8, 'SRIM / SRGAN: examples in figure_srim*.png.', lower_bound=0)
  flags.DEFINE_bool(
    'sr_space',
    False,
    'Score the space of super-resolutions instead (NTIRE 2021: LPIPS, diversity, LR-PSNR of --sr_space_samples '
    'samples per input) for --workdir, --regression_workdir, --srgan_workdir and --runs, beside Bicubic: '
    'sr_space.{md,csv,png} in --workdir.',
  )
  flags.DEFINE_list('runs', [], '--sr_space: more runs of any method and the same scale, a row each, comma-separated.')
  flags.DEFINE_integer('sr_space_samples', 10, '--sr_space: samples per input (the challenge: 10).')
  flags.DEFINE_integer('sr_space_examples', 16, '--sr_space: eval examples scored.')
  flags.DEFINE_integer(
    'sr_space_size',
    0,
    "--sr_space: low-res side of the scored inputs; 0: the config's if its high-res side is >= 48 pixels, else "
    'the side whose output is 48 (launch/sr_space.py).',
  )
  flags.DEFINE_integer('sr_space_figure_inputs', 2, '--sr_space: inputs in sr_space.png.', lower_bound=0)


def evaluate_srim(
  config,
  workdir: str,
  *,
  num_examples: int | None,
  num_samples: int,
  srgan_workdir: str | Sequence[str],
  num_figure_rows: int,
):
  from common.errors import UserError

  try:
    from imle import evaluate

    num = num_examples if num_examples is not None else config.data.num_eval_examples
    results, figures = evaluate.tables(
      config, workdir, num, num_samples, srgan_workdir=srgan_workdir, figure_rows=num_figure_rows
    )
    samples = f', {num_samples} SRIM samples each' if config.method == 'srim' else ''
    paths = evaluate.write(
      results, workdir, f'{num or "all"} examples per split{samples}.', figures, evaluate.table_convention(config)
    )
  except UserError as e:
    fail(e, code=1)
  for label, rows in results.items():
    for name, r in rows.items():
      print(
        f'{name} ({label}): pSNR(Y) {r["psnr_y"]:.2f} dB, SSIM(Y) {r["ssim_y"]:.3f}, diversity {r["diversity"]:.4f}'
      )
  print('wrote ' + ', '.join(paths))


def main(argv):
  del argv
  quiet_logs()
  try:
    config = flags.FLAGS.config
    _ = config.method  # A config file that failed to load raises here.
  except OSError as e:
    fail(e)
  F = flags.FLAGS
  workdir = F.workdir or os.path.join(
    'runs', os.path.splitext(os.path.basename(config_flags.get_config_filename(F['config'])))[0]
  )
  run(
    config,
    workdir,
    regression_workdir=F.regression_workdir,
    num_examples=F.num_examples,
    num_samples=F.num_samples,
    srgan_workdir=F.srgan_workdir,
    num_figure_rows=F.num_figure_rows,
    sr_space=F.sr_space,
    runs=F.runs,
    sr_space_samples=F.sr_space_samples,
    sr_space_examples=F.sr_space_examples,
    sr_space_size=F.sr_space_size,
    sr_space_figure_inputs=F.sr_space_figure_inputs,
  )


def evaluate_sr_space(
  config,
  workdir: str,
  regression_workdir: str,
  srgan_workdir: str | Sequence[str],
  runs: Sequence[str],
  *,
  num_samples: int,
  num_examples: int,
  lowres_size: int,
  figure_inputs: int,
):
  from common.errors import UserError
  from imle.evaluate import srgan_workdirs
  from launch import sr_space

  try:
    others = [w for w in [regression_workdir, *srgan_workdirs(srgan_workdir), *runs] if w]
    rows = sr_space.rows(config, workdir, others, num_samples)
    lowres, highres = sr_space.inputs(config, num_examples, lowres_size or sr_space.default_lowres_size(config.data))
    result = sr_space.evaluate(config, rows, lowres, highres, num_samples, min(figure_inputs, len(lowres)))
    paths = sr_space.write(result, workdir)
  except UserError as e:
    fail(e, code=1)
  print(sr_space.markdown(result), end='')
  print('wrote ' + ', '.join(paths))


def run(
  config,
  workdir: str,
  *,
  regression_workdir: str = '',
  num_examples: int | None = None,
  num_samples: int = 4,
  srgan_workdir: str | Sequence[str] = '',
  num_figure_rows: int = 8,
  sr_space: bool = False,
  runs: Sequence[str] = (),
  sr_space_samples: int = 10,
  sr_space_examples: int = 16,
  sr_space_size: int = 0,
  sr_space_figure_inputs: int = 2,
):
  """Writes the tables of `config`'s method for the run in `workdir` (with `sr_space`, the SR-space table of it and
  the other runs); a user error ends in one `error:` line."""
  from common.errors import UserError  # After flag parsing, so --help stays fast.
  from launch import methods

  try:
    kind = methods.method(config.method).table  # An unknown method, named.
  except UserError as e:
    fail(e, code=1)
  if sr_space:
    evaluate_sr_space(
      config,
      workdir,
      regression_workdir,
      srgan_workdir,
      runs,
      num_samples=sr_space_samples,
      num_examples=sr_space_examples,
      lowres_size=sr_space_size,
      figure_inputs=sr_space_figure_inputs,
    )
    return
  if runs:
    fail('--runs adds rows to the --sr_space table; pass --sr_space, or drop --runs.')
  if kind == 'srim':
    evaluate_srim(
      config,
      workdir,
      num_examples=num_examples,
      num_samples=num_samples,
      srgan_workdir=srgan_workdir,
      num_figure_rows=num_figure_rows,
    )
    return
  if kind != 'table1' or 'evaluate' not in config:
    fail(
      '--config must be a pixel recursive config (configs/*_pixelcnn.py, configs/demo.py), which has an '
      '`evaluate` section, or an SRIM or SRGAN config; pass the regression run as --regression_workdir.'
    )
  try:
    from pixelsr import evaluate

    table = evaluate.table1(config, workdir, regression_workdir, num_examples)
    paths = evaluate.write(table, workdir)
  except UserError as e:
    fail(e, code=1)
  print(evaluate.markdown(table), end='')
  print('wrote ' + ', '.join(paths))


if __name__ == '__main__':
  use_huge_pages()
  try:
    define_flags()
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
