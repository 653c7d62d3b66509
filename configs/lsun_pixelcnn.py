"""Pixel recursive SR on centre-cropped LSUN bedrooms, 8x8 -> 32x32: the paper's table 2 with B = 10.

  python launch/train.py --config=configs/lsun_pixelcnn.py --workdir=runs/lsun
  python launch/train.py --config=configs/lsun_pixelcnn.py:runlocal --workdir=/tmp/smoke   # tiny smoke run

Meant for the paper's hardware, 8 GPUs in synchronous data parallel for 2M steps. Compare with figure 4 / appendix
B samples and table 1 (bottom). Needs lsun/bedroom prepared by tfds (see docs/pixel_recursive.md, "Datasets").
"""

from configs import defaults


def get_config(arg: str | None = None):
  c = defaults.pixelcnn_config()
  c.data.name = 'lsun/bedroom'
  c.data.crop = 'centre'
  c.data.eval_split = 'validation'
  c.model.cond_blocks = 10
  c.evaluate.nn_database_size = 3_033_042  # NN searches the whole train split, as the paper's "3 million images".
  c.num_train_steps = 2_000_000
  if arg == 'runlocal':
    defaults.shrink_for_smoke_run(c)
  return c.lock()
