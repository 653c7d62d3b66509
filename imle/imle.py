"""Conditional IMLE with hierarchical sampling (sections 2.2 and 2.4): the noises of a pool and the exact search.

For every image of a pool: draw m noises for the first stage, keep the one whose output is nearest to the ground
truth downsampled to that stage's side; with it fixed, draw m noises for the second stage and keep the one nearest
to the ground truth; and so on (stages are numbered from 0 in the code, from 1 in the logs). The search is exact
(every candidate's distance is computed; m is ~100), on the device, and bounded in memory: each device walks its
rows `rows_per_chunk` at a time (`lax.map`) and, for each stage, the candidates `candidates_per_chunk` at a time
(`lax.scan`) keeping a running minimum, so at most rows x candidates images are alive at once. `sharded_select`
splits the rows over the data mesh with `shard_map`; no device talks to another (batch norm uses its running
averages in selection, see models.py).

Every noise is a fixed function of (key, row, stage, candidate) (`candidate_noise`), so a selection is stored as the
index of the chosen candidate and the noise is drawn again where it is needed. Ties go to the lowest index.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from common.errors import UserError
from common.sharding import DATA_AXIS

# Independent streams folded into the run's base key.
_POOL_STREAM, _EVAL_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class IMLEConfig:
  """Built from config.imle; the paper is silent on these numbers, the defaults are the authors' port."""

  pool_size: int = 640  # Training images whose noises are selected together.
  steps_per_pool: int = 20_000  # Training steps on a pool before the next pool is drawn and selected.
  num_candidates: int = 100  # m: noises tried per image and stage.
  noise_perturbation: float = 0.1  # Std of the N(0, 1) noise added to each chosen noise (once per pool); 0 = none.
  intermediate_loss_weight: float = 0.0  # Weight of earlier stages' distance to the downsampled truth; 0 = the
  # loss is on the final output only (the paper's "distance to the chosen sample", the port's loss).
  candidates_per_chunk: int = 25  # Memory bound of the search: candidates evaluated at once per row ...
  rows_per_chunk: int = 8  # ... for this many rows per device (each rounded down to a divisor).
  eval_num_candidates: int = 100  # m of the held-out evaluation (distance to the nearest of m samples).
  # Compute dtype of the candidates' stage forward passes in the pool selection (parameters, outputs and the
  # evaluation stay float32); with config.features.selection_dtype, the round in bf16 (GPU/TPU).
  candidate_dtype: Literal['float32', 'bfloat16'] = 'float32'

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, str):  # Literals: checked by from_config.
        continue
      if value < 0 or (value == 0 and field.type is int):
        raise UserError(f'config.imle.{field.name} must be {"positive" if field.type is int else ">= 0"}, got {value}.')


def pool_key(base_key: jax.Array, pool: jax.Array | int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(base_key, _POOL_STREAM), pool)


def eval_key(base_key: jax.Array) -> jax.Array:
  """The same noises at every evaluation, so that the curve shows the model, not the draw."""
  return jax.random.fold_in(base_key, _EVAL_STREAM)


def _row_stage_key(key: jax.Array, row: jax.Array, stage: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(key, row), stage)


def candidate_noise(
  key: jax.Array, rows: jax.Array, stage: int, candidates: jax.Array, shape: tuple[int, ...]
) -> jax.Array:
  """Noise of candidate candidates[r, ...] of row rows[r] at `stage`: (R, *candidates.shape[1:], *shape)."""

  def one(row, candidate):
    return jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(_row_stage_key(key, row, stage), 0), candidate), shape
    )

  per_row = one
  for _ in range(candidates.ndim - 1):
    per_row = jax.vmap(per_row, in_axes=(None, 0))
  return jax.vmap(per_row)(rows, candidates)


def perturbation(key: jax.Array, rows: jax.Array, stage: int, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) noise (R, *shape), one per row and stage of a pool, added (scaled) to the chosen noise."""
  return jax.vmap(lambda row: jax.random.normal(jax.random.fold_in(_row_stage_key(key, row, stage), 1), shape))(rows)


StageFn = Callable[[object, int, jax.Array, jax.Array, jax.Array], jax.Array]
VectorFn = Callable[[object, jax.Array], jax.Array]


def largest_divisor(n: int, at_most: int) -> int:
  """The chunk size actually used: the largest divisor of n that is <= at_most."""
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def search_chunks(pool_size: int, num_devices: int, rows_per_chunk: int, at_most: int = 10) -> int:
  """Into how many equal parts the host splits a pool's selection, to report progress between them (at most
  `at_most`). Rows are independent and keyed by their number, and each part keeps the rows per device a multiple of
  the rows `select` computes at once, so the chosen candidates are those of one call over the pool (their distances
  differ only by float rounding)."""
  per_device = pool_size // num_devices
  block = largest_divisor(per_device, rows_per_chunk)
  return largest_divisor(per_device // block, at_most)


def _select_block(
  stage_fn: StageFn, vector_fn: VectorFn, params, lowres01, targets01, rows, key, *, noise_shapes, num_candidates, chunk
):
  """Hierarchical selection for r rows: (choice (r, S) int32, squared distance (r, S))."""
  r = rows.shape[0]
  image, choices, distances = lowres01, [], []
  for s, shape in enumerate(noise_shapes):
    target = vector_fn(params, targets01[s])  # (r, V)

    def scan_chunk(best, first, s=s, shape=shape, image=image, target=target):
      noise = candidate_noise(key, rows, s, first + jnp.broadcast_to(jnp.arange(chunk), (r, chunk)), shape)
      outputs = stage_fn(
        params,
        s,
        jnp.repeat(image, chunk, axis=0),
        jnp.repeat(lowres01, chunk, axis=0),
        noise.reshape(r * chunk, *shape),
      )
      vectors = vector_fn(params, outputs).reshape(r, chunk, -1)
      d = jnp.square(vectors - target[:, None]).sum(-1)  # (r, chunk)
      j = jnp.argmin(d, axis=1)
      d_min = jnp.take_along_axis(d, j[:, None], axis=1)[:, 0]
      better = d_min < best[0]  # Strict: an earlier chunk keeps a tie.
      return (jnp.where(better, d_min, best[0]), jnp.where(better, first + j, best[1]).astype(jnp.int32)), None

    init = (jnp.full((r,), jnp.inf, jnp.float32), jnp.zeros((r,), jnp.int32))
    (best_d, best_j), _ = jax.lax.scan(scan_chunk, init, jnp.arange(0, num_candidates, chunk))
    image = stage_fn(params, s, image, lowres01, candidate_noise(key, rows, s, best_j, shape))
    choices.append(best_j)
    distances.append(best_d)
  return jnp.stack(choices, -1), jnp.stack(distances, -1)


def select(
  stage_fn: StageFn,
  vector_fn: VectorFn,
  params,
  lowres01: jax.Array,
  targets01: list[jax.Array],
  rows: jax.Array,
  key: jax.Array,
  *,
  noise_shapes: list[tuple[int, ...]],
  num_candidates: int,
  candidates_per_chunk: int,
  rows_per_chunk: int,
) -> tuple[jax.Array, jax.Array]:
  """Exact hierarchical nearest-sample search on one device.

  Args:
    stage_fn: (params, stage, previous image, lowres01, noise) -> that stage's output, all batched the same way.
    vector_fn: (params, images) -> (N, V) vectors whose squared Euclidean distances are the selection distance.
    params: what the two functions need (model variables, frozen feature parameters).
    lowres01: (R, h, w, 3) inputs; targets01[s]: (R, ...) the ground truth at stage s's side.
    rows: (R,) the rows' numbers in their pool: they key the noises.
    key: the pool's key.
  Returns:
    (chosen candidate (R, S) int32, its squared selection distance (R, S) float32).
  """
  num_rows = rows.shape[0]
  r = largest_divisor(num_rows, rows_per_chunk)
  chunk = largest_divisor(num_candidates, candidates_per_chunk)
  block = functools.partial(
    _select_block,
    stage_fn,
    vector_fn,
    params,
    key=key,
    noise_shapes=noise_shapes,
    num_candidates=num_candidates,
    chunk=chunk,
  )
  split = lambda x: x.reshape(num_rows // r, r, *x.shape[1:])
  choice, distance = jax.lax.map(
    lambda xs: block(xs[0], xs[1], xs[2]), (split(lowres01), [split(t) for t in targets01], split(rows))
  )
  return choice.reshape(num_rows, -1), distance.reshape(num_rows, -1)


def sharded_select(
  mesh: jax.sharding.Mesh, stage_fn: StageFn, vector_fn: VectorFn, params, lowres01, targets01, rows, key, **kwargs
) -> tuple[jax.Array, jax.Array]:
  """`select` with the rows split over the mesh's data axis (params and key replicated); call inside jit."""
  fn = jax.shard_map(
    functools.partial(select, stage_fn, vector_fn, **kwargs),
    mesh=mesh,
    in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS), P()),
    out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
    check_vma=False,
  )  # `select` is plain per-device code (no collectives): skip varying-axis types.
  return fn(params, lowres01, targets01, rows, key)


def pool_rows(seed: int, pool: int, local_step: int, batch_size: int, pool_size: int) -> np.ndarray:
  """Rows of the pool trained on at step `local_step` of the pool: shuffled epochs over the pool, int32 (batch,).

  Example n = local_step * batch_size + i is row perm_e[n % pool_size] of epoch e = n // pool_size, where perm_e is a
  permutation keyed by (seed, pool, e): a function of the step alone.
  """
  n = local_step * batch_size + np.arange(batch_size)
  epochs = n // pool_size
  perms = {e: np.random.default_rng([seed, pool, e]).permutation(pool_size) for e in np.unique(epochs)}
  return np.array([perms[e][i % pool_size] for e, i in zip(epochs, n)], np.int32)
