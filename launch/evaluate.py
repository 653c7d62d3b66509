"""Table 1 of the pixel recursive paper in one command: pSNR, SSIM, MS-SSIM, consistency and NLL of Bicubic, NN,
Regression and the model's samples (tau = 1.0, 1.1, 1.2, greedy), written to <workdir>/table1.{md,csv,png}. With an
SRIM config: SRIM's table 1, luminance pSNR/SSIM and diversity of bicubic, SRGAN (--srgan_workdir) and SRIM's
samples, and its figures 4-6 (input | bicubic | SRGAN | SRIM samples | truth), in <workdir>/table_srim.{md,csv} and
figure_srim*.png; with an SRGAN config, the same for bicubic and SRGAN alone.

  python launch/evaluate.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--regression_workdir=DIR]
                            [--num_examples=N] [--config.evaluate.field=value ...]

--workdir is the pixel recursive run (as given to launch/train.py; default runs/<config file name>), and where the
table goes. A row whose model has no checkpoint is skipped with a message. The work is in pixelsr/evaluate.py.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_logs  # noqa: E402  (after the path)


def define_flags():
  config_flags.DEFINE_config_file('config', os.path.join(_REPO, 'configs', 'demo.py'),
                                  'The pixel recursive config of the run: its data and `evaluate` sections.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The pixel recursive run to evaluate; table1.md, table1.csv and table1.png '
                      'are written here. Default: runs/<config file name>.')
  flags.DEFINE_string('regression_workdir', '', 'The regression baseline run (configs/*_regression.py); '
                      'empty: the Regression row is skipped.')
  flags.DEFINE_integer('num_examples', None, 'Eval examples to score; default config.evaluate.num_examples '
                       '(SRIM: config.data.num_eval_examples).')
  flags.DEFINE_integer('num_samples', 4, 'SRIM only: samples per input, scored each (table_srim.{md,csv}).')
  flags.DEFINE_string('srgan_workdir', '', 'SRIM only: an SRGAN run (configs/*_srgan.py) on the same data, for the '
                      'SRGAN row; empty: no SRGAN row.')
  flags.DEFINE_integer('num_figure_rows', 8, 'SRIM / SRGAN: examples in figure_srim*.png.', lower_bound=0)


def evaluate_srim(config, workdir: str):
  from common.errors import UserError
  try:
    from imle import evaluate
    F = flags.FLAGS
    num = F.num_examples if F.num_examples is not None else config.data.num_eval_examples
    results, figures = evaluate.tables(config, workdir, num, F.num_samples, srgan_workdir=F.srgan_workdir,
                                       figure_rows=F.num_figure_rows)
    samples = f', {F.num_samples} SRIM samples each' if config.method == 'srim' else ''
    paths = evaluate.write(results, workdir, f'{num or "all"} examples per split{samples}; pSNR/SSIM on BT.601 '
                           'luminance (common/metrics.py).', figures)
  except UserError as e:
    fail(e, code=1)
  for label, rows in results.items():
    for name, r in rows.items():
      print(f'{name} ({label}): pSNR(Y) {r["psnr_y"]:.2f} dB, SSIM(Y) {r["ssim_y"]:.3f}, '
            f'diversity {r["diversity"]:.4f}')
  print('wrote ' + ', '.join(paths))


def main(argv):
  del argv
  quiet_logs()
  from common.errors import UserError  # After flag parsing, so --help stays fast.
  try:
    config = flags.FLAGS.config
    srim = config.method in ('srim', 'srgan')  # A config file that failed to load raises here.
    if not srim:
      config.evaluate  # A regression config has no `evaluate`.
  except OSError as e:
    fail(e)
  except AttributeError:
    fail('--config must be a pixel recursive config (configs/*_pixelcnn.py, configs/demo.py), which has an '
         '`evaluate` section, or an SRIM or SRGAN config; pass the regression run as --regression_workdir.')
  workdir = flags.FLAGS.workdir or os.path.join('runs', os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS['config'])))[0])
  if srim:
    evaluate_srim(config, workdir)
    return
  try:
    from pixelsr import evaluate
    table = evaluate.table1(config, workdir, flags.FLAGS.regression_workdir, flags.FLAGS.num_examples)
    paths = evaluate.write(table, workdir)
  except UserError as e:
    fail(e, code=1)
  print(evaluate.markdown(table), end='')
  print('wrote ' + ', '.join(paths))


if __name__ == '__main__':
  try:
    define_flags()
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
