"""Training and evaluation of the pixel recursive model: state, the pure train/eval steps, and the entry point."""
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

from common import checkpoint, data, images, optim, sharding, train_loop
from common.config import from_config
from common.errors import UserError
from pixelsr import losses, models, sampling

TrainState = train_state.TrainState


def model_config(config: ml_collections.ConfigDict) -> models.PixelSRConfig:
  """The typed model config, checked against the data sizes it must fit."""
  cfg = from_config(models.PixelSRConfig, config.model, 'config.model')
  d = config.data
  if d.highres_size != d.lowres_size * cfg.upsample_factor:
    raise UserError(f'config.data.highres_size={d.highres_size} is not config.data.lowres_size={d.lowres_size} x '
                    f'config.model.upsample_factor={cfg.upsample_factor}; make the three agree.')
  if config.loss not in ('O1', 'O2'):
    raise UserError(f"config.loss must be 'O1' (eq. 7) or 'O2' (eq. 8), got {config.loss!r}.")
  return cfg


def create_train_state(model: nn.Module, cfg: models.PixelSRConfig, tx: optax.GradientTransformation,
                       data_cfg: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state, built directly with its shardings (no host copy of the parameters)."""
  lowres = jnp.zeros((1, data_cfg.lowres_size, data_cfg.lowres_size, cfg.num_colours), jnp.uint8)
  highres = jnp.zeros((1, data_cfg.highres_size, data_cfg.highres_size, cfg.num_colours), jnp.uint8)

  def init(rng):
    params = model.init(rng, lowres, highres)['params']
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  shardings = sharding.state_shardings(jax.eval_shape(init, rng), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, loss_kind: str,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous data-parallel step. The model is deterministic, so `rng` is unused (kept for the loop)."""
  del rng

  def loss_fn(params):
    cond_logits, prior_logits = state.apply_fn({'params': params}, batch['lowres'], batch['highres'])
    return losses.loss_and_metrics(cond_logits, prior_logits, batch['highres'], loss_kind)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, loss_kind: str) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples of the batch, so batches can be added up exactly."""
  cond_logits, prior_logits = state.apply_fn({'params': state.params}, batch['lowres'], batch['highres'])
  per_example = losses.per_example_losses(cond_logits, prior_logits, batch['highres'])
  per_example[loss_kind] = losses.objective(per_example['ce_joint'], per_example['ce_cond'], loss_kind)
  mask = batch['mask'].astype(jnp.float32)
  sums = {k: (v * mask).sum() for k, v in per_example.items()}
  sums['count'] = mask.sum()
  return sums


def compile_steps(config: ml_collections.ConfigDict, schedule: optax.Schedule, state: TrainState,
                  mesh: jax.sharding.Mesh):
  """jit-compiled train and eval steps with explicit shardings; the train state is donated."""
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train = jax.jit(functools.partial(train_step, loss_kind=config.loss, schedule=schedule),
                  in_shardings=(state_sh, batch_sh, rep), out_shardings=(state_sh, rep), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, loss_kind=config.loss), in_shardings=(state_sh, batch_sh),
                     out_shardings=rep)
  return train, evaluate


def evaluate(state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], step_fn, mesh) -> dict[str, float]:
  """Metrics over the whole eval set, each example counted once (padding is masked out)."""
  totals: dict[str, float] = {}
  for batch in eval_batches:
    sums = jax.device_get(step_fn(state, sharding.to_global(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop('count', 0.0)
  if not count:
    raise UserError('The eval split yielded no examples; check config.data.eval_split / num_eval_examples.')
  metrics = {k: v / count for k, v in totals.items()}
  metrics['bits_per_dim'] = metrics['ce_joint'] / losses.LN2
  return metrics


def restore_for_sampling(config: ml_collections.ConfigDict, workdir: str,
                         step: int | None = None) -> tuple[models.PixelRecursiveSR, dict]:
  """The model of a training run and its parameters at `step` (default: the latest checkpoint), replicated."""
  cfg = model_config(config)
  model = models.PixelRecursiveSR(cfg)
  mesh = sharding.data_mesh()
  tx, _ = optim.make_optimizer(config.optimizer)
  abstract = jax.eval_shape(lambda rng: create_train_state(model, cfg, tx, config.data, rng, mesh), jax.random.key(0))
  state = checkpoint.restore_latest(checkpoint.open_manager(workdir), abstract, step)
  return model, {'params': state.params}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the model of `config` in `workdir` (resuming if it holds checkpoints); returns the final metrics."""
  cfg = model_config(config)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  model = models.PixelRecursiveSR(cfg)
  tx, schedule = optim.make_optimizer(config.optimizer)
  sample_rng = train_loop.seed_key(config.seed, 'samples')
  state = create_train_state(model, cfg, tx, config.data, train_loop.seed_key(config.seed, 'init'), mesh)
  logging.info('Model: %s parameters.', f'{sum(x.size for x in jax.tree.leaves(state.params)):,}')
  train_fn, eval_fn = compile_steps(config, schedule, state, mesh)
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
  grid_lowres = first_eval['lowres'][:num_grid]
  grid_highres = first_eval['highres'][:num_grid]

  def make_grids(state, step):
    samples = sampling.sample(model, {'params': state.params}, sharding.replicate(grid_lowres, mesh),
                              jax.random.fold_in(sample_rng, step), temperature=config.sample_temperature)
    return {'lowres_sample_truth': images.make_grid([grid_lowres, np.asarray(samples), grid_highres])}

  _, metrics = train_loop.run(config, workdir, state=state, mesh=mesh, train_step=train_fn,
                              train_batches=train_batches, evaluate=run_eval, make_grids=make_grids)
  return metrics
