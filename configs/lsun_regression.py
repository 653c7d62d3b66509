"""The L2 regression baseline of table 1 (bottom) on LSUN bedrooms: configs/lsun_pixelcnn.py's conditioning network
(B = 10) with 3 outputs and tanh, predicting the residual over the bicubic upsample; same data, optimiser and 2M steps.

  python launch/train.py --config=configs/lsun_regression.py --workdir=runs/lsun_regression
  python launch/train.py --config=configs/lsun_regression.py:runlocal --workdir=/tmp/smoke   # tiny smoke run

Meant for the paper's hardware (8 GPUs). Its workdir is launch/evaluate.py's --regression_workdir. Needs
lsun/bedroom prepared by tfds (see docs/pixel_recursive.md, "Datasets").
"""

from configs import defaults, lsun_pixelcnn


def get_config(arg: str | None = None):
  return defaults.regression_config(lsun_pixelcnn.get_config(arg)).lock()
