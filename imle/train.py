"""Training and evaluation of SRIM: the state, the pure search and train steps, and the entry point.

How the IMLE pools fit the functional loop (common/train_loop.py). With K = steps_per_pool and P = pool_size, pool p
is trained on by steps p*K + 1 ... (p+1)*K. Its images are examples p*P ... (p+1)*P - 1 of the training stream, and
the noise candidates of row i are fixed functions of (seed, p, i, stage, candidate) (imle.candidate_noise), so all a
pool adds to the parameters is which candidate each row chose: `state.pool_choice` (P, stages), checkpointed with
them. `pools.pool_batches` adds the whole pool to the first batch of each pool; the loop's step (`PoolTrainStep`) then
selects with the parameters of that moment before taking the step. A run resumed inside a pool re-reads the pool's
images and finds its choices in the checkpoint, so it trains exactly as an uninterrupted run; nothing random is
saved. The chosen noises are perturbed (0.1 N(0, 1), the port) once per pool, by a noise keyed the same way.

Frozen inputs (VGG19 parameters, feature weights, projection matrices) are an argument of every step, replicated,
never part of the state or the optimiser.
"""

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from common import checkpoint, data, images, progress, sharding, train_loop, trainer, validation
from common.config import from_config
from common.errors import UserError
from imle import features, imle, models, pools, vgg19


class TrainState(train_state.TrainState):
  batch_stats: Any  # Batch norm running averages ({} without batch norm).
  pool_choice: jax.Array  # (pool_size, stages) int32: the candidate each pool row chose at each stage.
  pool_distance: jax.Array  # (stages,) mean selection distance of the chosen samples, for the logs.


def model_config(config: ml_collections.ConfigDict) -> models.SRIMConfig:
  """The typed model config, checked against the data sizes and the VGG layers it must fit."""
  cfg = from_config(models.SRIMConfig, config.model, 'config.model')
  validation.check_sizes_agree(config.data, 2**cfg.num_stages, '2^config.model.num_stages')
  return cfg


def stage_sides(config: ml_collections.ConfigDict, cfg: models.SRIMConfig) -> list[int]:
  return [config.data.lowres_size * 2 ** (s + 1) for s in range(cfg.num_stages)]


def feature_config(config: ml_collections.ConfigDict, sides: list[int]) -> features.FeatureConfig:
  cfg = from_config(features.FeatureConfig, config.features, 'config.features')
  vgg19.check_layers(cfg.vgg_layers, config.vgg.weights_path, 'config.features.components')
  too_small = [(layer, sides[0]) for layer in cfg.vgg_layers if vgg19.output_side(sides[0], layer) < 1]
  if too_small:
    raise UserError(
      f'VGG19 layer {too_small[0][0]} has no pixels left for the {too_small[0][1]}-pixel stage-1 '
      'output; use larger images or shallower config.features.components.'
    )
  return cfg


def imle_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> imle.IMLEConfig:
  cfg = from_config(imle.IMLEConfig, config.imle, 'config.imle')
  sharding.check_batch_size(cfg.pool_size, mesh, 'config.imle.pool_size')
  return cfg


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every value of `config` that training, sampling or evaluation uses, checked before anything is read, built or
  written: a UserError naming the first bad field."""
  validation.check_common(config)
  cfg = model_config(config)
  feature_config(config, stage_sides(config, cfg))
  from_config(imle.IMLEConfig, config.imle, 'config.imle')
  from_config(vgg19.VGGConfig, config.vgg, 'config.vgg')


def stage_targets(highres: jax.Array, sides: list[int]) -> list[jax.Array]:
  """The ground truth at each stage's side, RGB in [0, 1]: antialiased bicubic, the data pipeline's downsampling."""
  return [jnp.clip(images.resize(highres, side), 0.0, 255.0) / 255.0 for side in sides[:-1]] + [
    jnp.asarray(highres, jnp.float32) / 255.0
  ]


@dataclasses.dataclass(frozen=True)
class SRIMParts:
  """SRIM's own part of a run's set-up (`trainer.Setup.method`)."""

  imle: imle.IMLEConfig
  feature_map: features.FeatureMap | None  # None: a set-up to build or restore a state, not to compile steps.
  frozen: dict | None  # The feature map's frozen inputs (VGG weights, projection), sharded.
  sides: list[int]  # Each stage's output side.


def setup(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  feature_map: features.FeatureMap | None = None,
  frozen: dict | None = None,
) -> trainer.Setup:
  """`config` parsed once: what the state and the steps are built from (the steps also need the feature map and
  its frozen inputs, `make_frozen`'s)."""
  cfg = model_config(config)
  parts = SRIMParts(imle_config(config, mesh), feature_map, frozen, stage_sides(config, cfg))
  return trainer.make_setup(config, mesh, cfg, parts)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state of `config`'s model, optimiser and pool choices, built directly with its shardings."""
  return init_state(setup(config, mesh), rng)


def init_state(run: trainer.Setup, rng: jax.Array) -> TrainState:
  """The initial state of the set-up's model, optimiser and pool choices, built directly with its shardings."""
  cfg, pool_size = run.model, run.method.imle.pool_size
  model = models.SRIM(cfg)
  lowres_size = run.config.data.lowres_size
  lowres = jnp.zeros((1, lowres_size, lowres_size, 3))
  noises = [jnp.zeros((1, *models.noise_shape(cfg, lowres_size, s))) for s in range(cfg.num_stages)]

  def init(rng):
    variables = model.init(rng, lowres, noises, train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      tx=run.optimizer,
      batch_stats=variables.get('batch_stats', {}),
      pool_choice=jnp.zeros((pool_size, cfg.num_stages), jnp.int32),
      pool_distance=jnp.zeros((cfg.num_stages,), jnp.float32),
    )

  return trainer.create_sharded(init, rng, run.mesh)


def _variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def search_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  key: jax.Array,
  frozen: dict,
  num_candidates: int,
  *,
  cfg: models.SRIMConfig,
  feature_map: features.FeatureMap,
  mesh: jax.sharding.Mesh,
  imle_cfg: imle.IMLEConfig,
  sides: list[int],
  candidate_dtype: str = 'float32',
  feature_dtype: str = 'float32',
) -> tuple[jax.Array, jax.Array]:
  """Hierarchical selection for the rows of batch {'lowres', 'highres' (uint8), 'row'} with the noises of `key`:
  (chosen candidate (R, S), squared selection distance (R, S)), the candidates computed in `candidate_dtype` and
  their VGG features in `feature_dtype`. Pool selection (config.imle.candidate_dtype and
  config.features.selection_dtype) and evaluation (float32) both run it."""

  def stage_fn(params, s, image, lowres01, noise):
    return models.apply_stage(cfg, params[0], s, image, lowres01, noise, jnp.dtype(candidate_dtype))

  def vector_fn(params, images01):
    return feature_map.selection_vectors(params[1], images01, jnp.dtype(feature_dtype))

  lowres = batch['lowres']
  shapes = [models.noise_shape(cfg, lowres.shape[1], s) for s in range(cfg.num_stages)]
  return imle.sharded_select(
    mesh,
    stage_fn,
    vector_fn,
    (_variables(state), frozen),
    jnp.asarray(lowres, jnp.float32) / 255.0,
    stage_targets(batch['highres'], sides),
    batch['row'],
    key,
    noise_shapes=shapes,
    num_candidates=num_candidates,
    candidates_per_chunk=imle_cfg.candidates_per_chunk,
    rows_per_chunk=imle_cfg.rows_per_chunk,
  )


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  frozen: dict,
  *,
  cfg: models.SRIMConfig,
  feature_map: features.FeatureMap,
  imle_cfg: imle.IMLEConfig,
  sides: list[int],
  schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on pool rows batch['pool_index'] with their chosen (perturbed) noises, batch norm in training mode."""
  key = imle.pool_key(rng, state.step // imle_cfg.steps_per_pool)
  rows, lowres_side = batch['pool_index'], batch['lowres'].shape[1]
  noises = []
  for s in range(cfg.num_stages):
    shape = models.noise_shape(cfg, lowres_side, s)
    chosen = imle.candidate_noise(key, rows, s, state.pool_choice[rows, s], shape)
    noises.append(chosen + imle_cfg.noise_perturbation * imle.perturbation(key, rows, s, shape))
  targets = stage_targets(batch['highres'], sides)
  weights = [imle_cfg.intermediate_loss_weight] * (cfg.num_stages - 1) + [1.0]

  def loss_fn(params):
    outputs, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      jnp.asarray(batch['lowres'], jnp.float32) / 255.0,
      noises,
      train=True,
      mutable=['batch_stats'],
    )
    distances = {
      s: feature_map.loss(frozen, outputs[s], targets[s]).mean() for s in range(cfg.num_stages) if weights[s]
    }
    return sum(weights[s] * d for s, d in distances.items()), (updates, distances)

  (loss, (updates, distances)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {f'distance_stage{s + 1}': d for s, d in distances.items()}
  metrics.update({f'pool_distance_stage{s + 1}': state.pool_distance[s] for s in range(cfg.num_stages)})
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  state = state.apply_gradients(grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  return state, metrics


class PoolTrainStep:
  """The loop's step: selects the pool's noises when the batch brings a new pool, then trains one step.

  The selection runs in `num_chunks` calls of `search` over equal parts of the pool, so that a progress bar can
  report it (on the paper's sizes a round is ~30 s on an H100 and far longer on a CPU); `imle.search_chunks` picks
  parts that leave the chosen candidates those of one call."""

  def __init__(
    self, search_fn, train_fn, frozen: dict, imle_cfg: imle.IMLEConfig, num_chunks: int = 1, rows_of: Any = None
  ):
    self.search, self.train, self._frozen, self._imle_cfg = search_fn, train_fn, frozen, imle_cfg
    self._num_chunks, self._rows_of = num_chunks, rows_of

  def __call__(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    if 'pool_lowres' in batch:
      pool = {k: batch.pop(f'pool_{k}') for k in ('lowres', 'highres', 'row')}
      number = int(state.step) // self._imle_cfg.steps_per_pool  # Once per pool: the wait costs nothing.
      key, size = imle.pool_key(rng, number), pool['row'].shape[0] // self._num_chunks
      t0 = time.time()
      parts = []
      for i in progress.track(range(self._num_chunks), desc=f'Selecting pool {number}', unit='part'):
        part = pool if self._num_chunks == 1 else self._rows_of(pool, i * size, size)
        parts.append(jax.block_until_ready(self.search(state, part, key, self._frozen, self._imle_cfg.num_candidates)))
      choice, distance = (jnp.concatenate([p[j] for p in parts]) for j in (0, 1))
      distance = jax.block_until_ready(jax.device_put(distance.mean(0), state.pool_distance.sharding))
      logging.info(
        'Selected the noises of pool %d (%d images) in %.1f s; mean distance per stage %s.',
        number,
        choice.shape[0],
        time.time() - t0,
        np.round(np.asarray(distance), 5).tolist(),
      )
      state = state.replace(pool_choice=choice, pool_distance=distance)
    return self.train(state, batch, rng, self._frozen)


def make_frozen(
  config: ml_collections.ConfigDict, feature_cfg: features.FeatureConfig, sides: list[int], mesh: jax.sharding.Mesh
) -> tuple[features.FeatureMap, dict]:
  """The feature map and its frozen parameters, replicated: VGG, the weights w_i (estimated if not configured)
  and the projection matrices."""
  weights = features.load_vgg(config, feature_cfg)
  feature_map = features.FeatureMap(
    feature_cfg, weights.preprocessing if weights else 'caffe', weights.network if weights else 'vgg19'
  )
  vgg_params = jax.device_put(weights.up_to(feature_cfg.vgg_layers) if weights else {}, sharding.replicated(mesh))
  w = feature_cfg.weights
  if not w:
    n = feature_cfg.num_weight_estimation_images
    sample = next(
      data.make_dataset(config.data, 'train', batch_size=n, seed=config.seed, process_index=0, process_count=1)
    )
    w = features.estimate_weights(feature_map, vgg_params, sample['highres'] / np.float32(255))
    logging.info(
      'Feature weights estimated on %d training images: %s (fix them with --config.features.weights).',
      n,
      ', '.join(f'{c}={v:.4g}' for c, v in zip(feature_cfg.components, w)),
    )
  frozen = {
    'vgg': vgg_params,
    'weights': jax.device_put(np.asarray(w, np.float32), sharding.replicated(mesh)),
    'projection': features.projection_matrices(feature_cfg, sides, mesh),
  }
  return feature_map, frozen


def eval_step(
  state: TrainState, batch: dict[str, jax.Array], key: jax.Array, frozen: dict, *, num_candidates: int, **search_args
) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) rows of the distance from each truth to the nearest of `num_candidates`
  samples (hierarchical selection with the fixed evaluation noises of `key`), per stage."""
  _, distance = search_step(state, batch, key, frozen, num_candidates, **search_args)
  return trainer.masked_sums(
    {f'distance_stage{s + 1}': distance[:, s] for s in range(distance.shape[1])}, batch['mask']
  )


def compile_steps(run: trainer.Setup, state: TrainState) -> tuple['PoolTrainStep', Any]:
  """(train_fn, eval_fn): the loop's step (pool selection, then the jitted train step, which donates the state) and
  `eval_fn(state, batch)`, the jitted `eval_step` with the fixed evaluation noises, both with explicit shardings."""
  config, mesh, cfg, schedule = run.config, run.mesh, run.model, run.schedule
  imle_cfg, feature_map, frozen = run.method.imle, run.method.feature_map, run.method.frozen
  if feature_map is None or frozen is None:
    raise ValueError('compile_steps needs the set-up of the feature map and its frozen inputs (setup(..., frozen)).')
  state_sh, frozen_sh = trainer.shardings_of(state), trainer.shardings_of(frozen)
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  search_args = dict(cfg=cfg, feature_map=feature_map, imle_cfg=imle_cfg, sides=run.method.sides)
  search = jax.jit(
    functools.partial(
      search_step,
      mesh=mesh,
      candidate_dtype=imle_cfg.candidate_dtype,
      feature_dtype=feature_map.cfg.selection_dtype,
      **search_args,
    ),
    static_argnums=4,
    in_shardings=(state_sh, batch_sh, rep, frozen_sh),
    out_shardings=(rep, rep),
  )
  train = trainer.jit_train_step(functools.partial(train_step, schedule=schedule, **search_args), state, mesh, frozen)
  eval_jit = jax.jit(
    functools.partial(eval_step, num_candidates=imle_cfg.eval_num_candidates, mesh=mesh, **search_args),
    in_shardings=(state_sh, batch_sh, rep, frozen_sh),
    out_shardings=rep,
  )
  eval_key = imle.eval_key(train_loop.seed_key(config.seed, 'eval'))
  # Rows start .. start + size of the pool, sharded as a batch (in jit: the pool is a global array).
  rows_of = jax.jit(
    lambda pool, start, size: jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), pool),
    static_argnums=2,
    out_shardings=batch_sh,
  )
  num_chunks = imle.search_chunks(imle_cfg.pool_size, mesh.size, imle_cfg.rows_per_chunk)
  return (
    PoolTrainStep(search, train, frozen, imle_cfg, num_chunks, rows_of),
    lambda state, batch: eval_jit(state, batch, eval_key, frozen),
  )


def _with_rows(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
  """Each eval batch with the global index of its rows ('row'), which keys their evaluation noises."""
  for i, batch in enumerate(batches):
    n = len(batch['mask'])  # Rows of this process.
    yield {**batch, 'row': ((i * jax.process_count() + jax.process_index()) * n + np.arange(n)).astype(np.int32)}


def evaluate(
  state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], eval_fn, mesh: jax.sharding.Mesh
) -> dict[str, float]:
  """Mean distance from each held-out truth to the nearest of m samples, per stage (padding masked out)."""
  return trainer.masked_means(state, _with_rows(eval_batches), eval_fn, mesh)


def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> tuple[models.SRIM, dict]:
  """The model of a training run and its variables (params, batch_stats) at `step` (default: latest), replicated."""
  state = trainer.restore_state(functools.partial(create_train_state, config), workdir, step)
  return models.SRIM(model_config(config)), _variables(state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the SRIM model of `config` in `workdir` (resuming if it holds checkpoints); returns the final metrics."""
  check_config(config)
  mesh = sharding.data_mesh()
  run = setup(config, mesh)
  sides, imle_cfg = run.method.sides, run.method.imle
  model = models.SRIM(run.model)
  grid_rng = train_loop.seed_key(config.seed, 'samples')
  state = init_state(run, train_loop.seed_key(config.seed, 'init'))
  logging.info('Model: %s parameters.', trainer.num_params(state.params))
  feature_map, frozen = make_frozen(config, feature_config(config, sides), sides, mesh)
  run = dataclasses.replace(run, method=dataclasses.replace(run.method, feature_map=feature_map, frozen=frozen))
  train_fn, eval_fn = compile_steps(run, state)
  grid_lowres, grid_highres = trainer.grid_inputs(config)

  def train_batches(start_step: int):
    return pools.pool_batches(config, imle_cfg, start_step, jax.process_index(), jax.process_count())

  def make_grids(state, step):
    del step  # The same noises at every grid, so that the grids show the model changing.
    samples = np.asarray(
      models.sample(
        model, _variables(state), sharding.replicate(grid_lowres, mesh), grid_rng, config.num_samples_per_image
      )
    )
    columns = [grid_lowres] + [samples[:, k] for k in range(samples.shape[1])] + [grid_highres]
    return {'lowres_samples_truth': images.make_grid(columns)}

  _, metrics = train_loop.run(
    config,
    workdir,
    state=state,
    mesh=mesh,
    train_step=train_fn,
    train_batches=train_batches,
    evaluate=lambda state: evaluate(state, trainer.eval_batches(config), eval_fn, mesh),
    make_grids=make_grids,
    model_defaults=checkpoint.field_defaults(run.model),
  )
  return metrics
