"""The L2 regression baseline of table 1 (`models.RegressionSR`): training by the generic loop, and prediction.

Trained like the pixel recursive model (same data, optimiser, loop and checkpoints; `config.method='regression'`),
with the mean squared error on the [-1, 1] scale between the prediction and the target as the loss.
"""
import functools
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from common import checkpoint, data, images, metrics, optim, sharding, train_loop
from common.config import from_config
from common.errors import UserError
from pixelsr import models

TrainState = train_state.TrainState


def model_config(config: ml_collections.ConfigDict) -> models.ConditioningConfig:
  """The typed model config, checked against the data sizes it must fit."""
  cfg = from_config(models.ConditioningConfig, config.model, 'config.model')
  d = config.data
  if d.highres_size != d.lowres_size * cfg.upsample_factor:
    raise UserError(f'config.data.highres_size={d.highres_size} is not config.data.lowres_size={d.lowres_size} x '
                    f'config.model.upsample_factor={cfg.upsample_factor}; make the three agree.')
  return cfg


def create_train_state(model: nn.Module, cfg: models.ConditioningConfig, tx: optax.GradientTransformation,
                       data_cfg: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state, built directly with its shardings (no host copy of the parameters)."""
  lowres = jnp.zeros((1, data_cfg.lowres_size, data_cfg.lowres_size, cfg.num_colours), jnp.uint8)

  def init(rng):
    return TrainState.create(apply_fn=model.apply, params=model.init(rng, lowres)['params'], tx=tx)

  shardings = sharding.state_shardings(jax.eval_shape(init, rng), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def _squared_errors(prediction: jax.Array, highres: jax.Array) -> jax.Array:
  """Per-example mean squared error on the [-1, 1] scale."""
  return jnp.mean(jnp.square(prediction - images.uint8_to_signed(highres)), axis=(1, 2, 3))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous data-parallel step. The model is deterministic, so `rng` is unused (kept for the loop)."""
  del rng

  def loss_fn(params):
    return _squared_errors(state.apply_fn({'params': params}, batch['lowres']), batch['highres']).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  step_metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  return state.apply_gradients(grads=grads), step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples: the loss, and the pSNR of the rounded prediction."""
  prediction = state.apply_fn({'params': state.params}, batch['lowres'])
  per_example = {'l2': _squared_errors(prediction, batch['highres']),
                 'psnr': metrics.bounded_psnr(images.signed_to_uint8(prediction), batch['highres'])}
  mask = batch['mask'].astype(jnp.float32)
  sums = {k: (v * mask).sum() for k, v in per_example.items()}
  sums['count'] = mask.sum()
  return sums


def evaluate(state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], step_fn, mesh) -> dict[str, float]:
  """Means over the whole eval set, each example counted once (padding is masked out)."""
  totals: dict[str, float] = {}
  for batch in eval_batches:
    sums = jax.device_get(step_fn(state, sharding.to_global(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop('count', 0.0)
  if not count:
    raise UserError('The eval split yielded no examples; check config.data.eval_split / num_eval_examples.')
  return {k: v / count for k, v in totals.items()}


def restore(config: ml_collections.ConfigDict, workdir: str,
            step: int | None = None) -> tuple[models.RegressionSR, dict]:
  """The model of a training run and its parameters at `step` (default: the latest checkpoint), replicated."""
  cfg = model_config(config)
  model = models.RegressionSR(cfg)
  mesh = sharding.data_mesh()
  tx, _ = optim.make_optimizer(config.optimizer)
  abstract = jax.eval_shape(lambda rng: create_train_state(model, cfg, tx, config.data, rng, mesh), jax.random.key(0))
  state = checkpoint.restore_latest(checkpoint.open_manager(workdir), abstract, step)
  return model, {'params': state.params}


@functools.partial(jax.jit, static_argnames='model')
def predict(model: models.RegressionSR, variables: dict, lowres: jax.Array) -> jax.Array:
  """uint8 low-res (B, h, w, C) -> the baseline's uint8 high-res image (B, H, W, C)."""
  return images.signed_to_uint8(model.apply(variables, lowres))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the regression baseline of `config` in `workdir` (resuming if it holds checkpoints); returns the final
  metrics ('train/loss', 'eval/l2', 'eval/psnr', ...)."""
  cfg = model_config(config)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  model = models.RegressionSR(cfg)
  tx, schedule = optim.make_optimizer(config.optimizer)
  state = create_train_state(model, cfg, tx, config.data, train_loop.seed_key(config.seed, 'init'), mesh)
  logging.info('Regression model: %s parameters.', f'{sum(x.size for x in jax.tree.leaves(state.params)):,}')
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train_fn = jax.jit(functools.partial(train_step, schedule=schedule), in_shardings=(state_sh, batch_sh, rep),
                     out_shardings=(state_sh, rep), donate_argnums=0)
  eval_fn = jax.jit(eval_step, in_shardings=(state_sh, batch_sh), out_shardings=rep)
  # Fail on a missing dataset now, not after compiling. Every process draws the same grids, of the global batch.
  first_eval = sharding.gather(next(data.make_dataset(config.data, 'eval', batch_size=config.batch_size,
                                                      seed=config.seed)))

  def train_batches(start_step: int):
    return data.make_dataset(config.data, 'train', batch_size=config.batch_size, seed=config.seed,
                             start_index=start_step * config.batch_size)

  def run_eval(state):
    batches = data.make_dataset(config.data, 'eval', batch_size=config.batch_size, seed=config.seed)
    return evaluate(state, batches, eval_fn, mesh)

  num_grid = min(config.num_sample_images, int(first_eval['mask'].sum()))
  grid_lowres, grid_highres = first_eval['lowres'][:num_grid], first_eval['highres'][:num_grid]

  def make_grids(state, step):
    del step
    prediction = predict(model, {'params': state.params}, sharding.replicate(grid_lowres, mesh))
    return {'lowres_prediction_truth': images.make_grid([grid_lowres, np.asarray(prediction), grid_highres])}

  _, final = train_loop.run(config, workdir, state=state, mesh=mesh, train_step=train_fn,
                            train_batches=train_batches, evaluate=run_eval, make_grids=make_grids)
  return final
