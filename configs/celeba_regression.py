"""The L2 regression baseline of table 1 (top) on CelebA: configs/celeba_pixelcnn.py's conditioning network (B = 6)
with 3 outputs and tanh, predicting the residual over the bicubic upsample; same data, optimiser and 200k steps.

  python launch/train.py --config=configs/celeba_regression.py --workdir=runs/celeba_regression
  python launch/train.py --config=configs/celeba_regression.py:runlocal --workdir=/tmp/smoke   # tiny smoke run

Meant for the paper's hardware (8 GPUs). Its workdir is launch/evaluate.py's --regression_workdir. Needs CelebA
prepared by tfds (see docs/pixel_recursive.md, "Datasets").
"""

from configs import celeba_pixelcnn, defaults


def get_config(arg: str | None = None):
  return defaults.regression_config(celeba_pixelcnn.get_config(arg)).lock()
