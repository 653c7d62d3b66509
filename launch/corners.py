"""Figure 2 of the pixel recursive paper in one command: train L2 regression, per-pixel cross-entropy and the PixelCNN
on MNIST corners (configs/mnist_corners.py), then measure how often each puts the digit in one corner only.

  python launch/corners.py [--workdir=runs/mnist_corners] [--num_samples=4] [--num_examples=N] [--figure_rows=8]
                           [--mnist_source=idx|tfds] [--mnist_dir=DIR] [--tfds_data_dir=DIR] [--runlocal]

The models train in <workdir>/l2, ce and pixelcnn (resuming from their checkpoints; a finished run is not retrained);
figure2.png, corners.md and corners.csv go into --workdir. The work is in pixelsr/corners.py. Without the folder
--mnist_dir (default: the lab's ../shared/data/mnist), the digits come from tfds mnist (`tfds build mnist` once).
"""

import os
import sys

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # configs/ import configs.defaults when run from a checkout without `pip install -e`.

from common.cli import fail, parse_flags, quiet_logs, use_huge_pages  # noqa: E402  (after the path)

DATA_FLAGS = ('mnist_source', 'mnist_dir', 'tfds_data_dir')  # config.data fields this command takes as flags


def own_flags(message: str) -> str:
  """The library's messages name launch/train.py's flags, --config.data.<field>; this command's are --<field>."""
  for field in DATA_FLAGS:
    message = message.replace(f'--config.data.{field}', f'--{field}')
  return message


def define_flags():
  flags.DEFINE_string(
    'workdir',
    'runs/mnist_corners',
    'The three runs go in <workdir>/l2, ce, pixelcnn; the figure and the table in <workdir>.',
  )
  flags.DEFINE_integer('num_samples', 4, 'Samples per test input of the sampled rows (and PixelCNN figure columns).')
  flags.DEFINE_integer('num_examples', 0, 'Test inputs measured, the first of the held-out digits; 0 = all.')
  flags.DEFINE_integer('figure_rows', 8, 'Test inputs shown in figure2.png, one per row.')
  flags.DEFINE_enum(
    'mnist_source',
    None,
    ['idx', 'tfds'],
    'Overrides config.data.mnist_source: the raw IDX file (idx) or tfds mnist (tfds).',
  )
  flags.DEFINE_string(
    'mnist_dir',
    None,
    'Overrides config.data.mnist_dir, the folder of t10k-images-idx3-ubyte.gz '
    '(relative: from the repository root); where it does not exist, tfds mnist is read instead.',
  )
  flags.DEFINE_string(
    'tfds_data_dir',
    None,
    'Overrides config.data.tfds_data_dir, where tfds mnist is prepared '
    '(default: $TFDS_DATA_DIR or ~/tensorflow_datasets).',
  )
  flags.DEFINE_bool('runlocal', False, 'Tiny models and a few steps: a smoke run of the whole command.')


def main(argv):
  del argv
  quiet_logs()
  args = flags.FLAGS
  for name, least in (('num_samples', 1), ('num_examples', 0), ('figure_rows', 1)):
    if args[name].value < least:
      fail(f'--{name} must be >= {least}, got {args[name].value}')
  from common.errors import UserError  # After flag parsing, so --help stays fast.
  from configs import mnist_corners
  from pixelsr import corners

  configs = {}
  for model in mnist_corners.MODELS:
    config = mnist_corners.get_config(model + (',runlocal' if args.runlocal else ''))
    for field in DATA_FLAGS:
      if args[field].value is not None:
        config.data[field] = args[field].value
    configs[model] = config
  try:
    rows, paths = corners.reproduce(
      configs, args.workdir, num_examples=args.num_examples, num_samples=args.num_samples, figure_rows=args.figure_rows
    )
  except UserError as e:
    fail(own_flags(str(e)), code=1)
  with open(paths[0]) as f:
    print(f.read(), end='')
  print('wrote ' + ', '.join(paths))


if __name__ == '__main__':
  use_huge_pages()
  try:
    define_flags()
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
