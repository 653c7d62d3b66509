"""Train a model: python launch/train.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.field=value ...]

With no --config it runs configs/demo.py on the photographs that ship with scikit-image (no download). The method
named by `config.method` does the work; this file only parses flags and reports user errors in one line.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_orbax  # noqa: E402  (after the path)


def define_flags():
  config_flags.DEFINE_config_file('config', os.path.join(_REPO, 'configs', 'demo.py'), 'Experiment config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Checkpoints, logs and samples go here; a run resumes from it. '
                      'Default: runs/<config file name>.')


def main(argv):
  del argv
  quiet_orbax()
  from common.errors import UserError  # After flag parsing, so --help stays fast.
  try:
    config = flags.FLAGS.config
    config.method  # A config file that failed to load raises here.
  except OSError as e:
    fail(e)
  workdir = flags.FLAGS.workdir or os.path.join('runs', os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS['config'])))[0])
  try:
    if config.method == 'pixelcnn':
      from pixelsr import train
    elif config.method == 'regression':
      from pixelsr import regression as train
    elif config.method == 'srim':
      from imle import train
    else:
      raise UserError(f"config.method={config.method!r} is not a method of this library; use 'pixelcnn', "
                      "'regression' or 'srim'.")
    metrics = train.train_and_evaluate(config, workdir)
  except UserError as e:
    fail(e, code=1)
  print('final metrics: ' + ', '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items())))
  print(f'workdir: {workdir} (TensorBoard: tensorboard --logdir={workdir}; sample grids in {workdir}/samples)')


if __name__ == '__main__':
  try:
    define_flags()  # config_flags applies --config.* overrides of the default config file here.
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
