"""The L2 regression baseline of table 1 (`models.RegressionSR`): training by the generic loop, and prediction.

Trained like the pixel recursive model (same data, optimiser, loop and checkpoints; `config.method='regression'`),
with the squared error on the [-1, 1] scale between the prediction and the target as the loss: summed over each
image's sub-pixels or averaged (`config.loss_reduction`, the pixel recursive model's field and value), averaged over
the batch.
"""

import functools
from collections.abc import Iterator
from typing import cast

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from common import checkpoint, images, metrics, relu_health, sharding, train_loop, trainer, validation
from common.config import from_config
from pixelsr import models

TrainState = train_state.TrainState


def model_config(config: ml_collections.ConfigDict) -> models.ConditioningConfig:
  """The typed model config, checked against the data sizes it must fit."""
  cfg = from_config(models.ConditioningConfig, config.model, 'config.model')
  validation.check_sizes_agree(config.data, cfg.upsample_factor, 'config.model.upsample_factor')
  return cfg


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every value of `config` that training, sampling or evaluation uses, checked before anything is read, built or
  written: a UserError naming the first bad field."""
  validation.check_common(config)
  model_config(config)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> trainer.Setup:
  """`config` parsed once: what the state and the steps are built from."""
  return trainer.make_setup(config, mesh, model_config(config))


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state of `config`'s model and optimiser, built directly with its shardings."""
  return init_state(setup(config, mesh), rng)


def init_state(run: trainer.Setup, rng: jax.Array) -> TrainState:
  """The initial state of the set-up's model and optimiser, built directly with its shardings."""
  cfg, size = run.model, run.config.data.lowres_size
  model = models.RegressionSR(cfg)
  lowres = np.zeros((1, size, size, cfg.num_colours), np.uint8)

  def init(rng):
    return TrainState.create(apply_fn=model.apply, params=model.init(rng, lowres)['params'], tx=run.optimizer)

  return trainer.create_sharded(init, rng, run.mesh)


def _squared_errors(prediction: jax.Array, highres: jax.Array) -> jax.Array:
  """Per-example mean squared error on the [-1, 1] scale."""
  return jnp.mean(jnp.square(prediction - images.uint8_to_signed(highres)), axis=(1, 2, 3))


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  schedule: optax.Schedule,
  num_parts: int = 1,
  reduction: str = 'mean',
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous data-parallel step, the batch differentiated in `num_parts` parts (`trainer.batch_parts`). The
  model is deterministic, so `rng` is unused (kept for the loop). `loss` is the objective optimised (its scale set
  by `reduction`), `l2` the mean squared error per sub-pixel."""
  del rng
  sub_pixels = np.prod(batch['highres'].shape[1:]) if reduction == 'sum' else 1

  def loss_fn(params, batch):
    l2 = _squared_errors(state.apply_fn({'params': params}, batch['lowres']), batch['highres']).mean()
    return l2 * sub_pixels, {'l2': l2}

  (loss, aux), grads = trainer.value_and_grad_in_parts(loss_fn, state.params, batch, num_parts)
  step_metrics = dict(loss=loss, l2=aux['l2'], grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  return state.apply_gradients(grads=grads), step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples: the loss, the pSNR of the rounded prediction, and each ReLU
  channel's positive fraction (`relu_health`)."""
  prediction, stats = state.apply_fn({'params': state.params}, batch['lowres'], mutable=[relu_health.COLLECTION])
  per_example = {
    'l2': _squared_errors(prediction, batch['highres']),
    'psnr': metrics.bounded_psnr(images.signed_to_uint8(prediction), batch['highres']),
  }
  return {**trainer.masked_sums(per_example, batch['mask']), **relu_health.channel_sums(stats, batch['mask'])}


def compile_steps(run: trainer.Setup, state: TrainState):
  """(train_fn, eval_fn): the steps jitted with explicit shardings; the train step donates the state."""
  reduction = run.config.loss_reduction
  step = functools.partial(train_step, schedule=run.schedule, num_parts=run.num_parts, reduction=reduction)
  return trainer.jit_train_step(step, state, run.mesh), trainer.jit_eval_step(eval_step, state, run.mesh)


def evaluate(
  state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], eval_fn, mesh: jax.sharding.Mesh
) -> dict[str, float]:
  """Means over the whole eval set, each example counted once (padding is masked out), and the dead ReLU channels
  (`relu_health.summarise`; the worst site is logged)."""
  means, relus = relu_health.split(trainer.masked_means(state, eval_batches, eval_fn, mesh))
  logging.info('Regression network on the eval split: %s.', relu_health.describe(relus))
  return {**means, **relus}


def restore(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[models.RegressionSR, dict]:
  """The model of a training run and its parameters at `step` (default: the latest checkpoint), replicated."""
  state = trainer.restore_state(functools.partial(create_train_state, config), workdir, step)
  return models.RegressionSR(model_config(config)), {'params': state.params}


@functools.partial(jax.jit, static_argnames='model')
def predict(model: models.RegressionSR, variables: dict, lowres: jax.Array) -> jax.Array:
  """uint8 low-res (B, h, w, C) -> the baseline's uint8 high-res image (B, H, W, C)."""
  return images.signed_to_uint8(cast(jax.Array, model.apply(variables, lowres)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the regression baseline of `config` in `workdir` (resuming if it holds checkpoints); returns the final
  metrics ('train/loss', 'eval/l2', 'eval/psnr', ...)."""
  check_config(config)
  mesh = sharding.data_mesh()
  run = setup(config, mesh)
  model = models.RegressionSR(run.model)
  state = init_state(run, train_loop.seed_key(config.seed, 'init'))
  logging.info('Regression model: %s parameters.', trainer.num_params(state.params))
  train_fn, eval_fn = compile_steps(run, state)
  grid_lowres, grid_highres = trainer.grid_inputs(config)

  def make_grids(state, step):
    del step
    prediction = predict(model, {'params': state.params}, sharding.replicate(grid_lowres, mesh))
    return {'lowres_prediction_truth': images.make_grid([grid_lowres, np.asarray(prediction), grid_highres])}

  _, final = train_loop.run(
    config,
    workdir,
    state=state,
    mesh=mesh,
    train_step=train_fn,
    train_batches=trainer.train_batches(config),
    evaluate=lambda state: evaluate(state, trainer.eval_batches(config), eval_fn, mesh),
    make_grids=make_grids,
    model_defaults=checkpoint.field_defaults(run.model),
  )
  return final
