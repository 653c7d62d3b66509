"""Pixel recursive SR on cropped CelebA faces, 8x8 -> 32x32: the paper's table 2 with B = 6.

  python launch/train.py --config=configs/celeba_pixelcnn.py --workdir=runs/celeba
  python launch/train.py --config=configs/celeba_pixelcnn.py:runlocal --workdir=/tmp/smoke   # tiny smoke run

Meant for the paper's hardware, 8 GPUs in synchronous data parallel (any device count dividing the batch of 32 works;
the result does not depend on it). Compare with figure 5 / appendix C samples and table 1 (top). Needs CelebA
prepared by tfds (see docs/pixel_recursive.md, "Datasets").
"""

from configs import defaults


def get_config(arg: str | None = None):
  c = defaults.pixelcnn_config()
  c.data.name = 'celeb_a'
  c.data.crop = 'celeba'
  c.data.eval_split = 'validation'
  c.model.cond_blocks = 6
  c.num_train_steps = 200_000
  if arg == 'runlocal':
    defaults.shrink_for_smoke_run(c)
  return c.lock()
