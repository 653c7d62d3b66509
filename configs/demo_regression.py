"""The regression baseline of the quickstart: configs/demo.py's conditioning network with 3 outputs and tanh, trained
on the same embedded photographs with the same optimiser and steps (no download).

  python launch/train.py --config=configs/demo_regression.py        # -> runs/demo_regression
  python launch/evaluate.py --regression_workdir=runs/demo_regression

Meant for a 2-core CPU: about 1.5 minutes. Its workdir is launch/evaluate.py's --regression_workdir.
"""
from configs import defaults, demo


def get_config(arg: str | None = None):
  return defaults.regression_config(demo.get_config(arg)).lock()
