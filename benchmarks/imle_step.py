"""SRIM's IMLE cost: one selection round, the training steps, the share of the nearest-neighbour search, memory.

  python benchmarks/imle_step.py                                   # configs/imagenet_srim.py: pool 640, m = 100
  python benchmarks/imle_step.py --config=configs/imagenet_srim.py:port --steps=50
  python benchmarks/imle_step.py --config=configs/demo_srim.py:runlocal --steps=3 --repeats=1   # a quick check

Runs the real jitted selection and train steps of the config (sharded over all local devices) on random uint8 images
of its sizes, with untrained VGG19 weights unless --config.vgg.weights_path is given (the cost is the same) and unit
feature weights (the config's estimate needs data and changes nothing here). Reported:

- selection round: one hierarchical selection of the whole pool (pool_size x num_candidates x stages candidates:
  noise, stage forward, VGG features, projection, distances), after a compiling call;
- NN search: the search itself, i.e. the squared distances from each truth's selection vector to its candidates' and
  the running argmin, timed by running exactly those operations on as many chunk-sized blocks of random vectors of
  the same width as the round has; its share of the round and of a whole pool cycle (round + steps_per_pool steps);
- train step: mean time of a step on pool rows (batch_size, forward + backward through both stages and VGG19);
- peak memory: the device's peak_bytes_in_use where the backend reports it (GPU/TPU), else the process's peak RSS.
Results go in benchmarks/README.md with the device.

  python benchmarks/imle_step.py --agreement --photos --config.imle.pool_size=64 --repeats=0
  python benchmarks/imle_step.py --agreement --config=configs/demo_srim.py --workdir=runs/demo_srim

--agreement instead runs the selection round in float32, with bf16 VGG features (config.features.selection_dtype)
and with bf16 candidates too (config.imle.candidate_dtype) on the same pool, state and noises, and compares the
choices with float32's: the share of rows choosing the same candidate per stage and at every stage, and the float32
selection distance of each run's chosen path (stage 1 output, then stage 2 from it), so that a different choice is
priced in the distance float32 minimises. --workdir selects with the model of a training run (its latest
checkpoint) instead of an untrained one, on images of its data; --photos takes the pool from random crops of
scikit-image's photos instead of uniform noise.
"""

import copy
import dataclasses
import functools
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from common import checkpoint, data, sharding  # noqa: E402  (after the path)
from imle import imle, models, train  # noqa: E402

config_flags.DEFINE_config_file(
  'config', os.path.join(_REPO, 'configs', 'imagenet_srim.py'), 'SRIM config.', lock_config=False
)
flags.DEFINE_integer('steps', 20, 'Timed train steps (after a compiling one).')
flags.DEFINE_integer(
  'repeats',
  2,
  'Timed selection rounds and search runs (after a compiling one); with '
  '--agreement 0 = one call each, compile included.',
)
flags.DEFINE_bool('agreement', False, 'Compare the float32 and bfloat16 selections instead (see the module doc).')
flags.DEFINE_string('workdir', '', 'With --agreement: select with the latest checkpoint of this run.')
flags.DEFINE_bool(
  'photos',
  False,
  "The pool from random crops of scikit-image's photos instead of uniform noise "
  '(and the feature weights estimated on them, as a run does).',
)
FLAGS = flags.FLAGS


def peak_memory_gib() -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'host peak RSS'


def timed(fn, *args, repeats: int) -> tuple[float, float, object]:
  """(compile + first call seconds, mean seconds of `repeats` further calls (0 if none), last result)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = jax.block_until_ready(fn(*args))
  return first, (time.perf_counter() - t0) / repeats if repeats else 0.0, out


def search_only(mesh, num_rows: int, widths: list[int], imle_cfg: imle.IMLEConfig):
  """A jitted function running the search's own operations (distances to the truth, running argmin) over as many
  blocks as a selection round, on one block of random selection vectors per stage (the per-block data dependence
  through the running minimum keeps XLA from hoisting the work out of the loops)."""
  rows = imle.largest_divisor(num_rows // mesh.size, imle_cfg.rows_per_chunk)
  chunk = imle.largest_divisor(imle_cfg.num_candidates, imle_cfg.candidates_per_chunk)
  blocks, chunks = num_rows // mesh.size // rows, imle_cfg.num_candidates // chunk

  def per_device(key):
    total = jnp.zeros((), jnp.float32)
    for s, width in enumerate(widths):
      candidates = jax.random.normal(jax.random.fold_in(key, s), (rows, chunk, width))
      target = jax.random.normal(jax.random.fold_in(key, 100 + s), (rows, width))

      def block(carry, _, candidates=candidates, target=target):
        def scan_chunk(best, first):
          d = jnp.square(candidates + best[0][:, None, None] * 1e-30 - target[:, None]).sum(-1)
          j = jnp.argmin(d, axis=1)
          d_min = jnp.take_along_axis(d, j[:, None], axis=1)[:, 0]
          better = d_min < best[0]
          return (jnp.where(better, d_min, best[0]), jnp.where(better, first + j, best[1])), None

        (best_d, _), _ = jax.lax.scan(
          scan_chunk, (jnp.full((rows,), jnp.inf) + carry, jnp.zeros((rows,), jnp.int32)), jnp.arange(chunks)
        )
        return carry + best_d.min() * 1e-30, None

      total, _ = jax.lax.scan(block, total, None, length=blocks)
    return total[None]

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=jax.sharding.PartitionSpec(),
      out_specs=jax.sharding.PartitionSpec(sharding.DATA_AXIS),
      check_vma=False,
    )
  )


def measure(config, steps: int, repeats: int) -> dict:
  cfg = train.model_config(config)
  sides = train.stage_sides(config, cfg)
  config.features.weights = (1.0,) * len(config.features.components)
  feature_cfg = train.feature_config(config, sides)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  imle_cfg = train.imle_config(config, mesh)
  state = train.create_train_state(config, jax.random.key(0), mesh)
  feature_map, frozen = train.make_frozen(config, feature_cfg, sides, mesh)
  pool_step, _ = train.compile_steps(train.setup(config, mesh, feature_map, frozen), state)
  search_fn, train_fn = pool_step.search, pool_step.train
  rng, key = np.random.default_rng(0), jax.random.key(0)
  size, low, high = imle_cfg.pool_size, config.data.lowres_size, config.data.highres_size
  pool = {
    'lowres': rng.integers(0, 256, (size, low, low, 3), np.uint8),
    'highres': rng.integers(0, 256, (size, high, high, 3), np.uint8),
    'row': np.arange(size, dtype=np.int32),
  }
  pool_global = sharding.to_global(pool, mesh)
  select = lambda *args: search_fn(*args, imle_cfg.num_candidates)
  select_first, select_s, (choice, _) = timed(
    select, state, pool_global, imle.pool_key(key, 0), frozen, repeats=repeats
  )
  state = state.replace(pool_choice=choice)

  widths = [
    int(jax.eval_shape(feature_map.selection_vectors, frozen, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)).shape[1])
    for s in sides
  ]
  search = search_only(mesh, size, widths, imle_cfg)
  _, search_s, _ = timed(search, key, repeats=repeats)

  rows = imle.pool_rows(0, 0, 0, config.batch_size, size)
  batch = sharding.to_global(
    {'lowres': pool['lowres'][rows], 'highres': pool['highres'][rows], 'pool_index': rows}, mesh
  )
  t0 = time.perf_counter()
  state, metrics = train_fn(state, batch, key, frozen)
  jax.block_until_ready(metrics)
  train_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_fn(state, batch, key, frozen)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  cycle_s = select_s + imle_cfg.steps_per_pool * step_s
  memory, memory_kind = peak_memory_gib()
  return dict(
    params=sum(x.size for x in jax.tree.leaves(state.params)),
    pool=size,
    m=imle_cfg.num_candidates,
    stages=cfg.num_stages,
    widths=widths,
    select_first_s=select_first,
    select_s=select_s,
    search_s=search_s,
    train_first_s=train_first,
    step_s=step_s,
    cycle_s=cycle_s,
    steps_per_pool=imle_cfg.steps_per_pool,
    peak_gib=memory,
    memory_kind=memory_kind,
  )


# Name -> (config.imle.candidate_dtype, config.features.selection_dtype).
VARIANTS = {
  'float32': ('float32', 'float32'),
  'bf16 features': ('float32', 'bfloat16'),
  'bf16 candidates + features': ('bfloat16', 'bfloat16'),
}


def chosen_path_distances(config, feature_map, frozen, variables, pool, key, choices, rows_at_once=8) -> list:
  """For each (R, S) choice array: the (R, S) float32 selection distance to the truth of each stage's output along
  the chosen candidates."""
  cfg = train.model_config(config)
  sides = train.stage_sides(config, cfg)

  @jax.jit
  def path(variables, frozen, lowres, highres, rows, choice):
    lowres01 = lowres.astype(jnp.float32) / 255.0
    targets, image, out = train.stage_targets(highres, sides), lowres01, []
    for s in range(cfg.num_stages):
      noise = imle.candidate_noise(key, rows, s, choice[:, s], models.noise_shape(cfg, lowres.shape[1], s))
      image = models.apply_stage(cfg, variables, s, image, lowres01, noise)
      out.append(
        jnp.square(
          feature_map.selection_vectors(frozen, image) - feature_map.selection_vectors(frozen, targets[s])
        ).sum(-1)
      )
    return jnp.stack(out, -1)

  blocks = range(0, len(pool['row']), rows_at_once)
  return [
    np.concatenate(
      [
        np.asarray(
          path(
            variables,
            frozen,
            *(pool[k][i : i + rows_at_once] for k in ('lowres', 'highres', 'row')),
            choice[i : i + rows_at_once],
          )
        )
        for i in blocks
      ]
    )
    for choice in choices
  ]


def agreement(config, repeats: int, workdir: str, photos: bool) -> dict:
  """The float32 and bfloat16 selections of one pool: times, choices, and their float32 path distances."""
  cfg = train.model_config(config)
  sides = train.stage_sides(config, cfg)
  size, high = config.imle.pool_size, config.data.highres_size
  if photos:
    config.data.update(
      source='embedded', crop='random', random_crop_min=high, random_crop_max=3 * high, num_unseen_classes=0
    )
  elif not workdir:
    config.features.weights = (1.0,) * len(config.features.components)
  mesh = sharding.data_mesh()
  imle_cfg = train.imle_config(config, mesh)
  state = train.create_train_state(config, jax.random.key(0), mesh)
  if workdir:  # The run's own pool size: the restored state's pool_choice has its shape.
    recorded = copy.deepcopy(config)
    recorded.imle.pool_size = checkpoint.load_config(workdir).imle.pool_size
    _, variables = train.restore(recorded, workdir)
    state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  if photos or workdir:
    pool = next(
      data.make_dataset(config.data, 'train', batch_size=size, seed=config.seed + 1, process_index=0, process_count=1)
    )  # seed + 1: not the images the weights were estimated on.
    pool = {'lowres': pool['lowres'], 'highres': pool['highres']}
  else:
    rng = np.random.default_rng(0)
    pool = {
      'lowres': rng.integers(0, 256, (size, config.data.lowres_size, config.data.lowres_size, 3), np.uint8),
      'highres': rng.integers(0, 256, (size, high, high, 3), np.uint8),
    }
  pool['row'] = np.arange(size, dtype=np.int32)
  pool_global, key = sharding.to_global(pool, mesh), imle.pool_key(jax.random.key(0), 0)
  feature_map, frozen = train.make_frozen(config, train.feature_config(config, sides), sides, mesh)  # float32
  out = {}
  for name, (candidate_dtype, feature_dtype) in VARIANTS.items():
    config.imle.candidate_dtype = candidate_dtype
    variant_map = dataclasses.replace(
      feature_map, cfg=dataclasses.replace(feature_map.cfg, selection_dtype=feature_dtype)
    )
    pool_step, _ = train.compile_steps(train.setup(config, mesh, variant_map, frozen), state)
    search = functools.partial(pool_step.search, num_candidates=imle_cfg.num_candidates)
    first, seconds, (choice, distance) = timed(search, state, pool_global, key, frozen, repeats=repeats)
    out[name] = dict(first_s=first, select_s=seconds, choice=np.asarray(choice), distance=np.asarray(distance))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  paths = chosen_path_distances(config, feature_map, frozen, variables, pool, key, [r['choice'] for r in out.values()])
  for r, path in zip(out.values(), paths):
    r['path'] = path
  return dict(pool=size, m=imle_cfg.num_candidates, runs=out)


def print_agreement(r: dict) -> None:
  f32 = r['runs']['float32']
  print(
    f'selection round of {r["pool"]} images x {r["m"]} candidates, float32: '
    + (
      f'{f32["select_s"]:.2f} s (first call with compile {f32["first_s"]:.1f} s)'
      if f32['select_s']
      else f'{f32["first_s"]:.1f} s with compile'
    )
  )
  for name, run in r['runs'].items():
    if name == 'float32':
      continue
    same = f32['choice'] == run['choice']
    print(
      f'{name}: '
      + (
        f'{run["select_s"]:.2f} s = {f32["select_s"] / run["select_s"]:.2f}x (first call with '
        f'compile {run["first_s"]:.1f} s)'
        if run['select_s']
        else f'{run["first_s"]:.1f} s with compile'
      )
      + f'; every stage the same: {same.all(1).mean():.2%}'
    )
    for s in range(same.shape[1]):
      excess = run['path'][:, s] / f32['path'][:, s] - 1
      print(
        f'  stage {s + 1}: same candidate for {same[:, s].mean():.2%} of rows; float32 distance of the chosen '
        f"path {run['path'][:, s].mean():.6g} against float32's {f32['path'][:, s].mean():.6g} (per row: "
        f'ratio - 1 mean {excess.mean():+.3%}, max {excess.max():+.3%})'
      )
  print(
    f"check: the float32 path distances equal the float32 selection's own to "
    f'{np.abs(f32["path"] / f32["distance"] - 1).max():.1e} (relative)'
  )


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.agreement:
    print(
      f'device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}); '
      f'{config.data.lowres_size} -> {config.data.highres_size}, projection_dim {config.features.projection_dim}, '
      f'selection of {config.features.selection_components}, pool from '
      f'{"photos" if FLAGS.photos else config.data.source + " data" if FLAGS.workdir else "noise"}, '
      f'model {FLAGS.workdir or "untrained"}'
    )
    print_agreement(agreement(config, FLAGS.repeats, FLAGS.workdir, FLAGS.photos))
    return
  if FLAGS.repeats < 1:
    sys.exit('error: --repeats must be >= 1 without --agreement (the round and the search are timed over them).')
  print(
    f'device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}); '
    f'{config.data.lowres_size} -> {config.data.highres_size}, projection_dim {config.features.projection_dim}, '
    f'selection of {config.features.selection_components}'
  )
  r = measure(config, FLAGS.steps, FLAGS.repeats)
  print(
    f'{r["params"]:,} params | selection round ({r["pool"]} images x {r["m"]} candidates x {r["stages"]} stages, '
    f'vectors of {r["widths"]}): {r["select_s"]:.2f} s (first call with compile {r["select_first_s"]:.1f} s)'
  )
  print(
    f'NN search itself: {r["search_s"]:.4f} s = {100 * r["search_s"] / r["select_s"]:.2f}% of the round, '
    f'{100 * r["search_s"] / r["cycle_s"]:.3f}% of a pool cycle (round + {r["steps_per_pool"]:,} steps)'
  )
  print(
    f'train step (batch {config.batch_size}): {r["step_s"]:.4f} s, {1 / r["step_s"]:.2f} steps/s (first call '
    f'with compile {r["train_first_s"]:.1f} s); selection = {100 * r["select_s"] / r["cycle_s"]:.1f}% of a cycle'
  )
  print(f'peak memory: {r["peak_gib"]:.2f} GiB {r["memory_kind"]}')


if __name__ == '__main__':
  app.run(main)
