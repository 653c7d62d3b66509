"""How the objective's scale (`config.loss_reduction`: eq. 8's per-image sum, or the mean over sub-pixels) changes
training under a config's optimiser: the median |gradient| at init, then CE(A) and CE(A + B) on held-out crops and
the conditioning network's dead ReLU channels over the first steps.

  python benchmarks/loss_reduction.py                      # CelebA-size model on the embedded photos, 200 steps
  python benchmarks/loss_reduction.py --config=configs/demo.py --steps=600 --reductions=mean

Data: the embedded scikit-image photos (random crops, as configs/demo.py; no download), whatever the config's own
source. Both runs start from the same init and see the same batches. Results go in benchmarks/README.md.
"""

import importlib
import time

import jax
import numpy as np
from absl import app, flags

from common import cli, relu_health, sharding, train_loop, trainer
from pixelsr import losses, train

flags.DEFINE_string('config', 'configs/celeba_pixelcnn.py', 'Pixel recursive config file (its model and optimiser).')
flags.DEFINE_list('reductions', ['mean', 'sum'], 'config.loss_reduction values to compare.')
flags.DEFINE_integer('steps', 200, 'Training steps per run.')
flags.DEFINE_integer('batch_size', 8, 'Global batch size.')
flags.DEFINE_list('eval_at', ['0', '20', '50', '100', '200'], 'Steps at which to evaluate.')
flags.DEFINE_integer('eval_examples', 64, 'Held-out crops per evaluation.')
FLAGS = flags.FLAGS


def load_config(path: str, reduction: str):
  module = importlib.import_module(path.removesuffix('.py').replace('/', '.'))
  config = module.get_config().unlock()
  config.data.update(
    source='embedded', crop='random', random_crop_min=32, random_crop_max=96, num_eval_examples=FLAGS.eval_examples
  )
  config.update(batch_size=FLAGS.batch_size, loss_reduction=reduction)
  return config


def median_abs_gradients(config, state, batch) -> dict[str, float]:
  """Median |d loss / d parameter| of the conditioning network and of the prior, at `state`."""

  def loss_fn(params):
    cond, prior = state.apply_fn({'params': params}, batch['lowres'], batch['highres'])
    return losses.loss_and_metrics(cond, prior, batch['highres'], config.loss, reduction=config.loss_reduction)[0]

  grads = jax.grad(loss_fn)(state.params)
  return {
    net: float(np.median(np.abs(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[net])]))))
    for net in ('conditioning', 'prior')
  }


def run(reduction: str) -> list[dict]:
  config = load_config(FLAGS.config, reduction)
  mesh = sharding.data_mesh()
  state = train.create_train_state(config, train_loop.seed_key(config.seed, 'init'), mesh)
  train_fn, eval_fn = train.compile_steps(train.setup(config, mesh), state)
  batches = trainer.train_batches(config)(0)
  first = sharding.to_global(next(batches), mesh)
  print(f'{reduction}: median |gradient| at init', median_abs_gradients(config, state, first), flush=True)
  rows, eval_at, t0 = [], {int(s) for s in FLAGS.eval_at}, time.time()
  for step in range(FLAGS.steps + 1):
    if step in eval_at:
      metrics = train.evaluate(state, trainer.eval_batches(config), eval_fn, mesh)
      row = {
        'reduction': reduction,
        'step': step,
        'ce_cond_bits': metrics['ce_cond'] / losses.LN2,
        'ce_joint_bits': metrics['ce_joint'] / losses.LN2,
        'relu_dead_worst': metrics['relu_dead_worst'],
        'relu_active': metrics['relu_active'],
        'worst_site': relu_health.worst_site(metrics)[0],
        'seconds': round(time.time() - t0),
      }
      print(row, flush=True)
      rows.append(row)
    if step < FLAGS.steps:
      state, _ = train_fn(
        state,
        first if step == 0 else sharding.to_global(next(batches), mesh),
        train_loop.seed_key(config.seed, 'train'),
      )
  return rows


def main(argv):
  del argv
  cli.quiet_logs()
  rows = [row for reduction in FLAGS.reductions for row in run(reduction)]
  print('| reduction | step | CE(A) bits | CE(A+B) bits | dead ReLU, worst site | active |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(
      f'| {r["reduction"]} | {r["step"]} | {r["ce_cond_bits"]:.3f} | {r["ce_joint_bits"]:.3f} | '
      f'{r["relu_dead_worst"]:.0%} ({r["worst_site"]}) | {r["relu_active"]:.2f} |'
    )


if __name__ == '__main__':
  app.run(main)
