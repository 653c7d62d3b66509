"""Train a model: python launch/train.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.field=value ...]

With no --config it runs configs/demo.py on the photographs that ship with scikit-image (no download). The method
named by `config.method` does the work; this file only parses flags, joins the other processes of a multi-host job
(--distributed, or --coordinator_address/--num_processes/--process_id), and reports user errors in one line.
SIGTERM saves the current step and exits 0: run the same command to resume.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_logs, use_huge_pages  # noqa: E402  (after the path)


def define_flags():
  config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'demo.py'), 'Experiment config file.', lock_config=True
  )
  flags.DEFINE_string(
    'workdir', None, 'Checkpoints, logs and samples go here; a run resumes from it. Default: runs/<config file name>.'
  )
  flags.DEFINE_bool(
    'distributed',
    False,
    'Join the other processes of a multi-host job with jax.distributed; '
    'without the three flags below JAX detects them (Cloud TPU pods, SLURM).',
  )
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (or JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (or JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1 (or JAX_PROCESS_ID).')
  flags.DEFINE_integer('distributed_timeout', 300, 'Seconds to wait for all processes to join.')


def main(argv):
  del argv
  quiet_logs()
  from common import distributed  # After flag parsing, so --help stays fast.
  from common.errors import UserError

  try:
    config = flags.FLAGS.config
    _ = config.method  # A config file that failed to load raises here.
  except OSError as e:
    fail(e)
  args = flags.FLAGS
  try:
    distributed.initialize(
      args.distributed, args.coordinator_address, args.num_processes, args.process_id, args.distributed_timeout
    )
  except UserError as e:
    fail(e, code=1)
  import jax

  if jax.process_index() > 0:  # One log for the job: process 0's.
    logging.set_verbosity(logging.WARNING)
  workdir = flags.FLAGS.workdir or os.path.join(
    'runs', os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))[0]
  )
  run(config, workdir)


def run(config, workdir: str):
  """Trains `config` in `workdir` with the method it names; a user error ends in one `error:` line and exit 1."""
  import jax

  from common import preemption
  from common.errors import UserError

  try:
    from launch import methods

    metrics = methods.module(config.method).train_and_evaluate(config, workdir)
  except preemption.Preempted as e:
    if jax.process_index() == 0:
      print(e)
    return
  except UserError as e:
    fail(e, code=1)
  if jax.process_index() > 0:
    return
  # Per-site ReLU figures stay in TensorBoard; the summary below names the worst site.
  print('final metrics: ' + ', '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items()) if 'relu_dead/' not in k))
  print(f'workdir: {workdir} (TensorBoard: tensorboard --logdir={workdir}; sample grids in {workdir}/samples)')
  if 'heldout/bits_per_dim' in metrics:  # pixelcnn: where the model stands against bicubic, and how to go on.
    from pixelsr import summary

    steps = config.num_train_steps
    shown = {k: v for k, v in metrics.items() if k.startswith(('heldout/', 'eval/relu_dead'))}
    print('\n'.join(summary.summary_lines(shown, steps, summary.continue_command(sys.argv, workdir, 2 * steps))))


if __name__ == '__main__':
  use_huge_pages()
  try:
    define_flags()  # config_flags applies --config.* overrides of the default config file here.
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
