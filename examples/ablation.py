"""An ablation as a short script: the pixel recursive paper's two objectives, O1 (eq. 7: the joint model's cross
entropy alone) against O2 (eq. 8: plus the conditioning network's own), on the demo's photographs.

  python examples/ablation.py [--steps=2000] [--size=demo|tiny] [--workdir=runs/ablation]

Each arm is the demo's config with one field changed, trained by the library's own loop in its own workdir (a run
resumes there), and the held-out figures of every arm end as one markdown table. Another ablation is another
`ARMS` entry: any config field, e.g. {'model.prior_channels': 16}.
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # A checkout without pip install.

from configs import demo  # noqa: E402  (after the path)
from pixelsr import train  # noqa: E402

ARMS = {'O2 (eq. 8)': {'loss': 'O2'}, 'O1 (eq. 7)': {'loss': 'O1'}}
# Held-out figures, in bits per colour value (lower is better): the joint model, the conditioning network A alone,
# and the tau = 1.0 samples' consistency with their input (table 1's column).
COLUMNS = {
  'heldout/bits_per_dim': 'bits/dim, A+B',
  'heldout/cond_bits_per_dim': 'bits/dim, A alone',
  'heldout/sample_consistency': 'consistency',
}


def arm_config(overrides: dict, steps: int, size: str):
  """configs/demo.py with `overrides` ({'dotted.field': value}) and `steps` steps; 'tiny': its smoke-run size."""
  config = demo.get_config('runlocal' if size == 'tiny' else None)
  with config.unlocked():
    for field, value in {
      **overrides,
      'num_train_steps': steps,
      'eval_every_steps': steps,
      'checkpoint_every_steps': steps,
      'sample_every_steps': 0,
    }.items():
      *parents, leaf = field.split('.')
      section = config
      for name in parents:
        section = section[name]
      section[leaf] = value
  return config


def run(steps: int, size: str, workdir: str) -> dict[str, dict[str, float]]:
  """Trains every arm and returns its final metrics, by arm."""
  return {
    name: train.train_and_evaluate(arm_config(overrides, steps, size), os.path.join(workdir, name.split()[0].lower()))
    for name, overrides in ARMS.items()
  }


def table(results: dict[str, dict[str, float]]) -> str:
  lines = ['| arm | ' + ' | '.join(COLUMNS.values()) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
  for name, metrics in results.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{metrics.get(k, math.nan):.4f}' for k in COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=2000, help="Train steps per arm (the demo's 2,000).")
  parser.add_argument('--size', choices=('demo', 'tiny'), default='demo', help="'tiny': the smoke-run model.")
  parser.add_argument('--workdir', default=os.path.join('runs', 'ablation'), help='One subfolder per arm.')
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f'--steps must be positive, got {args.steps}.')
  print(table(run(args.steps, args.size, args.workdir)), end='')


if __name__ == '__main__':
  main()
