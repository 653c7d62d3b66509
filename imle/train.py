"""Training and evaluation of SRIM: the state, the pure search and train steps, and the entry point.

How the IMLE pools fit the functional loop (common/train_loop.py). With K = steps_per_pool and P = pool_size, pool p
is trained on by steps p*K + 1 ... (p+1)*K. Its images are examples p*P ... (p+1)*P - 1 of the training stream, and
the noise candidates of row i are fixed functions of (seed, p, i, stage, candidate) (imle.candidate_noise), so all a
pool adds to the parameters is which candidate each row chose: `state.pool_choice` (P, stages), checkpointed with
them. `pool_batches` adds the whole pool to the first batch of each pool; the loop's step (`PoolTrainStep`) then
selects with the parameters of that moment before taking the step. A run resumed inside a pool re-reads the pool's
images and finds its choices in the checkpoint, so it trains exactly as an uninterrupted run; nothing random is
saved. The chosen noises are perturbed (0.1 N(0, 1), the port) once per pool, by a noise keyed the same way.

Frozen inputs (VGG19 parameters, feature weights, projection matrices) are an argument of every step, replicated,
never part of the state or the optimiser.
"""
import functools
import itertools
import time
from typing import Any, Iterator

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
from imle import features, imle, models, vgg19


class TrainState(train_state.TrainState):
  batch_stats: Any  # Batch norm running averages ({} without batch norm).
  pool_choice: jax.Array  # (pool_size, stages) int32: the candidate each pool row chose at each stage.
  pool_distance: jax.Array  # (stages,) mean selection distance of the chosen samples, for the logs.


def model_config(config: ml_collections.ConfigDict) -> models.SRIMConfig:
  """The typed model config, checked against the data sizes and the VGG layers it must fit."""
  try:
    cfg = from_config(models.SRIMConfig, config.model, 'config.model')
  except ValueError as e:
    raise UserError(str(e)) from e
  d = config.data
  if d.highres_size != d.lowres_size * 2 ** cfg.num_stages:
    raise UserError(f'config.data.highres_size={d.highres_size} is not config.data.lowres_size={d.lowres_size} x '
                    f'2^config.model.num_stages={2 ** cfg.num_stages}; make the three agree.')
  return cfg


def stage_sides(config: ml_collections.ConfigDict, cfg: models.SRIMConfig) -> list[int]:
  return [config.data.lowres_size * 2 ** (s + 1) for s in range(cfg.num_stages)]


def feature_config(config: ml_collections.ConfigDict, sides: list[int]) -> features.FeatureConfig:
  cfg = from_config(features.FeatureConfig, config.features, 'config.features')
  too_small = [(layer, sides[0]) for layer in cfg.vgg_layers if vgg19.output_side(sides[0], layer) < 1]
  if too_small:
    raise UserError(f'VGG19 layer {too_small[0][0]} has no pixels left for the {too_small[0][1]}-pixel stage-1 '
                    'output; use larger images or shallower config.features.components.')
  return cfg


def imle_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> imle.IMLEConfig:
  cfg = from_config(imle.IMLEConfig, config.imle, 'config.imle')
  sharding.check_batch_size(cfg.pool_size, mesh, 'config.imle.pool_size')
  return cfg


def stage_targets(highres: jax.Array, sides: list[int]) -> list[jax.Array]:
  """The ground truth at each stage's side, RGB in [0, 1]: antialiased bicubic, the data pipeline's downsampling."""
  return [jnp.clip(images.resize(highres, side), 0.0, 255.0) / 255.0 for side in sides[:-1]] + [
      jnp.asarray(highres, jnp.float32) / 255.0]


def create_train_state(model: models.SRIM, cfg: models.SRIMConfig, pool_size: int, tx: optax.GradientTransformation,
                       lowres_size: int, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state, built directly with its shardings (no host copy of the parameters)."""
  lowres = jnp.zeros((1, lowres_size, lowres_size, 3))
  noises = [jnp.zeros((1, *models.noise_shape(cfg, lowres_size, s))) for s in range(cfg.num_stages)]

  def init(rng):
    variables = model.init(rng, lowres, noises, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             batch_stats=variables.get('batch_stats', {}),
                             pool_choice=jnp.zeros((pool_size, cfg.num_stages), jnp.int32),
                             pool_distance=jnp.zeros((cfg.num_stages,), jnp.float32))

  shardings = sharding.state_shardings(jax.eval_shape(init, rng), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def _variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def search_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, frozen: dict, num_candidates: int,
                *, cfg: models.SRIMConfig, feature_map: features.FeatureMap,
                mesh: jax.sharding.Mesh, imle_cfg: imle.IMLEConfig, sides: list[int]) -> tuple[jax.Array, jax.Array]:
  """Hierarchical selection for the rows of batch {'lowres', 'highres' (uint8), 'row'} with the noises of `key`:
  (chosen candidate (R, S), squared selection distance (R, S)). Pool selection and evaluation both run it."""
  def stage_fn(params, s, image, lowres01, noise):
    return models.apply_stage(cfg, params[0], s, image, lowres01, noise)

  def vector_fn(params, images01):
    return feature_map.selection_vectors(params[1], images01)

  lowres = batch['lowres']
  shapes = [models.noise_shape(cfg, lowres.shape[1], s) for s in range(cfg.num_stages)]
  return imle.sharded_select(mesh, stage_fn, vector_fn, (_variables(state), frozen),
                             jnp.asarray(lowres, jnp.float32) / 255.0, stage_targets(batch['highres'], sides),
                             batch['row'], key, noise_shapes=shapes, num_candidates=num_candidates,
                             candidates_per_chunk=imle_cfg.candidates_per_chunk, rows_per_chunk=imle_cfg.rows_per_chunk)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, frozen: dict, *,
               cfg: models.SRIMConfig, feature_map: features.FeatureMap, imle_cfg: imle.IMLEConfig,
               sides: list[int], schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
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
    outputs, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                      jnp.asarray(batch['lowres'], jnp.float32) / 255.0, noises, train=True,
                                      mutable=['batch_stats'])
    distances = {s: feature_map.loss(frozen, outputs[s], targets[s]).mean()
                 for s in range(cfg.num_stages) if weights[s]}
    return sum(weights[s] * d for s, d in distances.items()), (updates, distances)

  (loss, (updates, distances)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {f'distance_stage{s + 1}': d for s, d in distances.items()}
  metrics.update({f'pool_distance_stage{s + 1}': state.pool_distance[s] for s in range(cfg.num_stages)})
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
  state = state.apply_gradients(grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  return state, metrics


class PoolTrainStep:
  """The loop's step: selects the pool's noises when the batch brings a new pool, then trains one step."""

  def __init__(self, search_fn, train_fn, frozen: dict, imle_cfg: imle.IMLEConfig):
    self._search, self._train, self._frozen, self._imle_cfg = search_fn, train_fn, frozen, imle_cfg

  def __call__(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    if 'pool_lowres' in batch:
      pool = {k: batch.pop(f'pool_{k}') for k in ('lowres', 'highres', 'row')}
      number = int(state.step) // self._imle_cfg.steps_per_pool  # Once per pool: the wait costs nothing.
      t0 = time.time()
      choice, distance = self._search(state, pool, imle.pool_key(rng, number), self._frozen,
                                      self._imle_cfg.num_candidates)
      distance = jax.block_until_ready(jax.device_put(distance.mean(0), state.pool_distance.sharding))
      logging.info('Selected the noises of pool %d (%d images) in %.1f s; mean distance per stage %s.', number,
                   choice.shape[0], time.time() - t0, np.round(np.asarray(distance), 5).tolist())
      state = state.replace(pool_choice=choice, pool_distance=distance)
    return self._train(state, batch, rng, self._frozen)


def pool_batches(config: ml_collections.ConfigDict, imle_cfg: imle.IMLEConfig, start_step: int,
                 process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of each step's batch: pool rows (images + 'pool_index'), plus the whole pool's rows
  ('pool_lowres', 'pool_highres', 'pool_row') at the first step of each pool. Every process reads the whole pool."""
  size, per_pool = imle_cfg.pool_size, imle_cfg.steps_per_pool
  batch, pool_part = config.batch_size // process_count, slice(
      process_index * size // process_count, (process_index + 1) * size // process_count)
  stream = data.make_dataset(config.data, 'train', batch_size=size, seed=config.seed,
                             start_index=start_step // per_pool * size, process_index=0, process_count=1)
  pool = None
  for step in itertools.count(start_step):  # `step` = state.step before the step.
    number, local_step = divmod(step, per_pool)
    if pool is None or local_step == 0:
      pool = next(stream)
    rows = imle.pool_rows(config.seed, number, local_step, config.batch_size, size)
    rows = rows[process_index * batch:(process_index + 1) * batch]
    out = {'lowres': pool['lowres'][rows], 'highres': pool['highres'][rows], 'pool_index': rows}
    if local_step == 0:
      out.update(pool_lowres=pool['lowres'][pool_part], pool_highres=pool['highres'][pool_part],
                 pool_row=np.arange(size, dtype=np.int32)[pool_part])
    yield out


def load_vgg(config: ml_collections.ConfigDict, feature_cfg: features.FeatureConfig) -> vgg19.VGGWeights | None:
  """The VGG19 weights of config.vgg (None if phi has no VGG component); warns once when they are untrained."""
  if not feature_cfg.vgg_layers:
    return None
  cfg = from_config(vgg19.VGGConfig, config.vgg, 'config.vgg')
  if cfg.weights_path:
    weights = vgg19.load_weights(cfg.weights_path)
    check_feature_weights(feature_cfg, weights)
    logging.info('VGG19 weights from %s (%s preprocessing).', weights.source, weights.preprocessing)
    return weights
  logging.warning(
      'config.vgg.weights_path is empty: the feature distance uses UNTRAINED (random) VGG19 features, not the '
      "paper's perceptual ones. Pass --config.vgg.weights_path=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 "
      '(Keras) or a .npz converted from torchvision\'s vgg19-dcbb9e9d.pth by `python -m imle.vgg19 convert --pth '
      'vgg19-dcbb9e9d.pth --out vgg19.npz`.')
  return vgg19.random_weights(cfg.random_seed)


_PREPROCESSING = {'torch': "torchvision's (RGB, 0-1, ImageNet mean / std)",
                  'caffe': "Caffe's (BGR, 0-255, minus the ImageNet mean pixel)"}
_FILE_FOR = {'torch': '`python -m imle.vgg19 convert --pth vgg19-dcbb9e9d.pth --out vgg19_torchvision.npz` '
                      "(torchvision's weights)",
             'caffe': "Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"}


def check_feature_weights(feature_cfg: features.FeatureConfig, weights: vgg19.VGGWeights) -> None:
  """Refuses fixed feature weights tuned for one VGG19 preprocessing with a weights file that expects the other.

  Refused, not rescaled: no one factor maps the features of one file onto the other's. The files hold different
  networks (Keras' is the original Caffe VGG19; torchvision's was trained again), and even for one network the input
  scale (0-255 against units of the ImageNet std, ~57x at conv1_1) reaches conv2_2 and conv4_4 through biases and
  ReLUs, not as a constant factor. Untrained weights (no file) are not checked: random features have no scale that
  tuned weights could match, and the run already warns that its distance is not the paper's.
  """
  tuned = feature_cfg.weights_tuned_for
  if feature_cfg.weights and tuned and tuned != weights.preprocessing:
    raise UserError(
        f'config.features.weights={feature_cfg.weights} were tuned for {_PREPROCESSING[tuned]} VGG19 inputs '
        f"(config.features.weights_tuned_for='{tuned}'), but {weights.source} expects "
        f'{_PREPROCESSING[weights.preprocessing]} inputs, whose VGG features are of another scale (tens of times '
        'larger for Caffe\'s 0-255 than for torchvision\'s), so the weights no longer balance the terms. Pass '
        f'{_FILE_FOR[tuned]} as --config.vgg.weights_path, or keep this file and estimate weights for it with '
        "--config.features.weights='()'.")


def make_frozen(config: ml_collections.ConfigDict, feature_cfg: features.FeatureConfig, sides: list[int],
                mesh: jax.sharding.Mesh) -> tuple[features.FeatureMap, dict]:
  """The feature map and its frozen parameters, replicated: VGG19, the weights w_i (estimated if not configured)
  and the projection matrices."""
  weights = load_vgg(config, feature_cfg)
  feature_map = features.FeatureMap(feature_cfg, weights.preprocessing if weights else 'caffe')
  vgg_params = jax.device_put(weights.up_to(feature_cfg.vgg_layers) if weights else {}, sharding.replicated(mesh))
  w = feature_cfg.weights
  if not w:
    n = feature_cfg.num_weight_estimation_images
    sample = next(data.make_dataset(config.data, 'train', batch_size=n, seed=config.seed, process_index=0,
                                    process_count=1))
    w = features.estimate_weights(feature_map, vgg_params, sample['highres'] / np.float32(255))
    logging.info('Feature weights estimated on %d training images: %s (fix them with --config.features.weights).',
                 n, ', '.join(f'{c}={v:.4g}' for c, v in zip(feature_cfg.components, w)))
  frozen = {'vgg': vgg_params, 'weights': jax.device_put(np.asarray(w, np.float32), sharding.replicated(mesh)),
            'projection': features.projection_matrices(feature_cfg, sides, mesh)}
  return feature_map, frozen


def compile_steps(state: TrainState, mesh: jax.sharding.Mesh, frozen: dict, *, cfg: models.SRIMConfig,
                  feature_map: features.FeatureMap, imle_cfg: imle.IMLEConfig, sides: list[int],
                  schedule: optax.Schedule):
  """jit-compiled search and train steps with explicit shardings; the train step donates the state."""
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  common = dict(cfg=cfg, feature_map=feature_map, imle_cfg=imle_cfg, sides=sides)
  search = jax.jit(functools.partial(search_step, mesh=mesh, **common), static_argnums=4,
                   in_shardings=(state_sh, batch_sh, rep, frozen_sh), out_shardings=(rep, rep))
  train = jax.jit(functools.partial(train_step, schedule=schedule, **common),
                  in_shardings=(state_sh, batch_sh, rep, frozen_sh), out_shardings=(state_sh, rep), donate_argnums=0)
  return search, train


def evaluate(state: TrainState, batches: Iterator[dict[str, np.ndarray]], search_fn, mesh, key, frozen,
             num_candidates: int) -> dict[str, float]:
  """Mean distance from each held-out truth to the nearest of m samples, per stage (padding masked out)."""
  sums, count = 0.0, 0.0
  for i, batch in enumerate(batches):
    n = len(batch['mask'])  # Rows of this process; they key the eval noises.
    batch['row'] = ((i * jax.process_count() + jax.process_index()) * n + np.arange(n)).astype(np.int32)
    batch = sharding.to_global(batch, mesh)
    mask = batch.pop('mask').astype(jnp.float32)
    _, distance = search_fn(state, batch, key, frozen, num_candidates)
    sums += np.asarray(jax.device_get((distance * mask[:, None]).sum(0)), np.float64)
    count += float(jax.device_get(mask.sum()))
  if not count:
    raise UserError('The eval split yielded no examples; check config.data.eval_split / num_eval_examples.')
  return {f'distance_stage{s + 1}': float(v) / count for s, v in enumerate(sums)}


def restore_for_sampling(config: ml_collections.ConfigDict, workdir: str,
                         step: int | None = None) -> tuple[models.SRIM, dict]:
  """The model of a training run and its variables (params, batch_stats) at `step` (default: latest), replicated."""
  cfg = model_config(config)
  model = models.SRIM(cfg)
  mesh = sharding.data_mesh()
  tx, _ = optim.make_optimizer(config.optimizer)
  pool_size = from_config(imle.IMLEConfig, config.imle, 'config.imle').pool_size
  abstract = jax.eval_shape(lambda rng: create_train_state(model, cfg, pool_size, tx, config.data.lowres_size, rng,
                                                           mesh), jax.random.key(0))
  state = checkpoint.restore_latest(checkpoint.open_manager(workdir), abstract, step)
  return model, _variables(state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the SRIM model of `config` in `workdir` (resuming if it holds checkpoints); returns the final metrics."""
  cfg = model_config(config)
  sides = stage_sides(config, cfg)
  feature_cfg = feature_config(config, sides)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  imle_cfg = imle_config(config, mesh)
  model = models.SRIM(cfg)
  tx, schedule = optim.make_optimizer(config.optimizer)
  grid_rng = train_loop.seed_key(config.seed, 'samples')
  state = create_train_state(model, cfg, imle_cfg.pool_size, tx, config.data.lowres_size,
                             train_loop.seed_key(config.seed, 'init'), mesh)
  logging.info('Model: %s parameters.', f'{sum(x.size for x in jax.tree.leaves(state.params)):,}')
  feature_map, frozen = make_frozen(config, feature_cfg, sides, mesh)
  search_fn, train_fn = compile_steps(state, mesh, frozen, cfg=cfg, feature_map=feature_map, imle_cfg=imle_cfg,
                                      sides=sides, schedule=schedule)
  # Every process draws the same grids, of the global batch.
  first_eval = sharding.gather(next(data.make_dataset(config.data, 'eval', batch_size=config.batch_size,
                                                      seed=config.seed)))
  eval_rng = imle.eval_key(train_loop.seed_key(config.seed, 'eval'))

  def train_batches(start_step: int):
    return pool_batches(config, imle_cfg, start_step, jax.process_index(), jax.process_count())

  def run_eval(state):
    batches = data.make_dataset(config.data, 'eval', batch_size=config.batch_size, seed=config.seed)
    return evaluate(state, batches, search_fn, mesh, eval_rng, frozen, imle_cfg.eval_num_candidates)

  num_grid = min(config.num_sample_images, int(first_eval['mask'].sum()))
  grid_lowres, grid_highres = first_eval['lowres'][:num_grid], first_eval['highres'][:num_grid]

  def make_grids(state, step):
    del step  # The same noises at every grid, so that the grids show the model changing.
    samples = np.asarray(models.sample(model, _variables(state), sharding.replicate(grid_lowres, mesh), grid_rng,
                                       config.num_samples_per_image))
    columns = [grid_lowres] + [samples[:, k] for k in range(samples.shape[1])] + [grid_highres]
    return {'lowres_samples_truth': images.make_grid(columns)}

  _, metrics = train_loop.run(config, workdir, state=state, mesh=mesh,
                              train_step=PoolTrainStep(search_fn, train_fn, frozen, imle_cfg),
                              train_batches=train_batches,
                              evaluate=run_eval, make_grids=make_grids)
  return metrics
