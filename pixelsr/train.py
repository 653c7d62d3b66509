"""Training and evaluation of the pixel recursive model: state, the pure train/eval steps, and the entry point.

The shape every method shares (common/trainer.py): model_config, create_train_state, train_step, eval_step,
compile_steps, evaluate, restore, train_and_evaluate.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from common import checkpoint, relu_health, sharding, train_loop, trainer, validation
from common.config import from_config
from common.errors import UserError
from pixelsr import losses, models, summary

TrainState = train_state.TrainState


def model_config(config: ml_collections.ConfigDict) -> models.PixelSRConfig:
  """The typed model config, checked against the data sizes it must fit."""
  cfg = from_config(models.PixelSRConfig, config.model, 'config.model')
  validation.check_sizes_agree(config.data, cfg.upsample_factor, 'config.model.upsample_factor')
  if config.loss not in ('O1', 'O2'):
    raise UserError(f"config.loss must be 'O1' (eq. 7) or 'O2' (eq. 8), got {config.loss!r}.")
  return cfg


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """config.evaluate (see configs/defaults.py)."""

  num_examples: int
  batch_size: int
  temperatures: tuple[float, ...]
  greedy: bool
  nn_database_size: int
  nn_chunk_size: int
  num_figure_rows: int

  def __post_init__(self):
    positive = ('batch_size', 'nn_database_size', 'nn_chunk_size', 'num_figure_rows')
    for name in positive + ('num_examples',):
      if getattr(self, name) < (1 if name in positive else 0):
        raise UserError(
          f'config.evaluate.{name} must be {"positive" if name in positive else ">= 0"}, got {getattr(self, name)}.'
        )
    if not all(0 < t < math.inf for t in self.temperatures):
      raise UserError(
        f'config.evaluate.temperatures must be finite and > 0 (greedy is config.evaluate.greedy), got '
        f'{self.temperatures}.'
      )

  def sampled_rows(self) -> dict[str, float]:
    rows = {f'tau={t}': t for t in self.temperatures}
    return rows | ({'greedy': math.inf} if self.greedy else {})


def evaluate_config(config: ml_collections.ConfigDict, num_examples: int | None = None) -> EvaluateConfig:
  """config.evaluate, typed and checked; `num_examples` (--num_examples) overrides its num_examples."""
  section = dict(config.evaluate)
  if num_examples is not None:
    section['num_examples'] = num_examples
  return from_config(EvaluateConfig, section, 'config.evaluate')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every value of `config` that training, sampling or evaluation uses, checked before anything is read, built or
  written: a UserError naming the first bad field."""
  validation.check_common(config)
  model_config(config)
  evaluate_config(config)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> trainer.Setup:
  """`config` parsed once: what the state and the steps are built from."""
  return trainer.make_setup(config, mesh, model_config(config))


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state of `config`'s model and optimiser, built directly with its shardings."""
  return init_state(setup(config, mesh), rng)


def init_state(run: trainer.Setup, rng: jax.Array) -> TrainState:
  """The initial state of the set-up's model and optimiser, built directly with its shardings."""
  cfg, d = run.model, run.config.data
  model = models.PixelRecursiveSR(cfg)
  lowres = np.zeros((1, d.lowres_size, d.lowres_size, cfg.num_colours), np.uint8)
  highres = np.zeros((1, d.highres_size, d.highres_size, cfg.num_colours), np.uint8)

  def init(rng):
    return TrainState.create(apply_fn=model.apply, params=model.init(rng, lowres, highres)['params'], tx=run.optimizer)

  return trainer.create_sharded(init, rng, run.mesh)


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  loss_kind: losses.Objective,
  schedule: optax.Schedule,
  num_parts: int = 1,
  reduction: losses.Reduction = 'mean',
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous data-parallel step, the batch differentiated in `num_parts` parts (`trainer.batch_parts`). The
  model is deterministic, so `rng` is unused (kept for the loop). `loss` is the objective optimised (its scale set
  by `reduction`); the other metrics are nats per sub-pixel."""
  del rng

  def loss_fn(params, batch):
    cond_logits, prior_logits = state.apply_fn({'params': params}, batch['lowres'], batch['highres'])
    return losses.loss_and_metrics(cond_logits, prior_logits, batch['highres'], loss_kind, reduction=reduction)

  (loss, metrics), grads = trainer.value_and_grad_in_parts(loss_fn, state.params, batch, num_parts)
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, loss_kind: losses.Objective) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples of the batch, so batches can be added up exactly: the losses, and
  each conditioning ReLU channel's positive fraction (`relu_health`)."""
  (cond_logits, prior_logits), stats = state.apply_fn(
    {'params': state.params}, batch['lowres'], batch['highres'], mutable=[relu_health.COLLECTION]
  )
  per_example = losses.per_example_losses(cond_logits, prior_logits, batch['highres'])
  per_example[loss_kind] = losses.objective(per_example['ce_joint'], per_example['ce_cond'], loss_kind)
  return {**trainer.masked_sums(per_example, batch['mask']), **relu_health.channel_sums(stats, batch['mask'])}


def compile_steps(run: trainer.Setup, state: TrainState):
  """(train_fn, eval_fn): the steps jitted with explicit shardings; the train step donates the state."""
  config = run.config
  step = functools.partial(
    train_step, loss_kind=config.loss, schedule=run.schedule, num_parts=run.num_parts, reduction=config.loss_reduction
  )
  train_fn = trainer.jit_train_step(step, state, run.mesh)
  eval_fn = trainer.jit_eval_step(functools.partial(eval_step, loss_kind=config.loss), state, run.mesh)
  return train_fn, eval_fn


def evaluate(
  state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], eval_fn, mesh: jax.sharding.Mesh
) -> dict[str, float]:
  """Metrics over the whole eval set, each example counted once (padding is masked out): the losses, bits/dim and
  the conditioning network's dead ReLU channels (`relu_health.summarise`; the worst site is logged)."""
  metrics, relus = relu_health.split(trainer.masked_means(state, eval_batches, eval_fn, mesh))
  metrics['bits_per_dim'] = metrics['ce_joint'] / losses.LN2
  logging.info('Conditioning network on the eval split: %s.', relu_health.describe(relus))
  return {**metrics, **relus}


def restore(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[models.PixelRecursiveSR, dict]:
  """The model of a training run and its parameters at `step` (default: the latest checkpoint), replicated."""
  state = trainer.restore_state(functools.partial(create_train_state, config), workdir, step)
  return models.PixelRecursiveSR(model_config(config)), {'params': state.params}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the model of `config` in `workdir` (resuming if it holds checkpoints); returns the final metrics."""
  check_config(config)
  mesh = sharding.data_mesh()
  run = setup(config, mesh)
  model = models.PixelRecursiveSR(run.model)
  sample_rng = train_loop.seed_key(config.seed, 'samples')
  state = init_state(run, train_loop.seed_key(config.seed, 'init'))
  logging.info('Model: %s parameters.', trainer.num_params(state.params))
  train_fn, eval_fn = compile_steps(run, state)
  grid_lowres, grid_highres = trainer.grid_inputs(config)

  def make_grids(state, step):
    # input | bicubic | tau = config.sample_temperature, 1.2, greedy | truth, labelled (pixelsr/summary.py).
    columns = summary.grid_columns(
      model,
      {'params': state.params},
      sharding.replicate(grid_lowres, mesh),
      grid_highres,
      jax.random.fold_in(sample_rng, step),
      temperatures=sorted({config.sample_temperature, 1.2, math.inf}),
      resize_method=config.data.resize,
    )
    return {'lowres_sample_truth': summary.labelled_grid(columns)}

  state, metrics = train_loop.run(
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
  if config.eval_every_steps:  # Where the model stands against bicubic: launch/train.py prints it.
    figures = summary.heldout_figures(
      model,
      {'params': state.params},
      trainer.eval_batches(config),
      mesh=mesh,
      resize_method=config.data.resize,
      sample_key=train_loop.seed_key(config.seed, 'eval'),
    )
    metrics.update({f'heldout/{k}': v for k, v in figures.items()})
  return metrics
