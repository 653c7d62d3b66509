"""Table 1's non-learned baselines: bicubic upsampling and nearest neighbour in the downsampled training set.

The nearest-neighbour search streams the database through the device in fixed-size chunks and keeps, per query, the
nearest entry seen so far (distance, index and high-res image): memory is O(queries x chunk), whatever the size of
the database (the paper searched 3 million LSUN bedrooms), and the database never has to fit anywhere at once.
"""

import functools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common import images


def bicubic(lowres: jax.Array | np.ndarray, size: int, method: str = 'antialiased') -> jax.Array:
  """uint8 (..., h, w, C) -> uint8 (..., size, size, C): bicubic upsampling by `method` (config.data.resize: 'tf1'
  is TF1's resize_bicubic, as the paper's baseline most likely was), clipped and rounded."""
  return images.quantize(images.bicubic_upsample(lowres, size, method=method))


class Neighbours(NamedTuple):
  """For each query, the nearest database entry: squared Euclidean distance of the uint8 low-res images (an exact
  integer), its index in the database order, and its high-res image (uint8 (Q, H, W, C))."""

  distance: jax.Array
  index: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (a field named as in the papers' NN)
  highres: jax.Array


def _centred_int8(lowres: jax.Array | np.ndarray) -> jax.Array:
  """uint8 images -> int8 vectors minus 128: distances are unchanged and int8 products accumulate exactly in int32."""
  flat = jnp.asarray(lowres).reshape(lowres.shape[0], -1)
  return (flat.astype(jnp.int32) - 128).astype(jnp.int8)


@functools.partial(jax.jit, donate_argnums=0)
def _merge_chunk(
  best: Neighbours, queries_QD: jax.Array, lowres_N: jax.Array, highres_N: jax.Array, start: jax.Array, count: jax.Array
) -> Neighbours:
  """`best` updated with database entries start .. start + count - 1 (rows count .. N - 1 are padding)."""
  lowres_ND = _centred_int8(lowres_N)
  dot = functools.partial(jnp.einsum, preferred_element_type=jnp.int32)
  # |q - x|^2 = |q|^2 - 2 q.x + |x|^2 in int32: exact (< 2^31 for images up to ~32k sub-pixels), so ties are real
  # ties, broken below by the lower index as a brute-force argmin would.
  distance_QN = (
    dot('qd,qd->q', queries_QD, queries_QD)[:, None]
    - 2 * dot('qd,nd->qn', queries_QD, lowres_ND)
    + dot('nd,nd->n', lowres_ND, lowres_ND)[None, :]
  )
  distance_QN = jnp.where(jnp.arange(lowres_ND.shape[0]) < count, distance_QN, jnp.iinfo(jnp.int32).max)
  nearest_Q = jnp.argmin(distance_QN, axis=1)  # The first of equal minima.
  chunk_distance = jnp.take_along_axis(distance_QN, nearest_Q[:, None], axis=1)[:, 0]
  better = chunk_distance < best.distance  # Strict: on a tie, the earlier chunk's entry stays.
  return Neighbours(
    distance=jnp.where(better, chunk_distance, best.distance),
    index=jnp.where(better, start + nearest_Q.astype(jnp.int32), best.index),
    highres=jnp.where(better[:, None, None, None], highres_N[nearest_Q], best.highres),
  )


def nearest_neighbours(
  queries: jax.Array | np.ndarray,
  database: Iterable[tuple[jax.Array | np.ndarray, jax.Array | np.ndarray]],
  chunk_size: int,
) -> Neighbours:
  """Exact Euclidean nearest neighbours of low-res `queries` among a stream of (lowres, highres) database chunks.

  Args:
    queries: uint8 (Q, h, w, C) low-res images.
    database: yields (lowres uint8 (n, h, w, C), highres uint8 (n, H, W, C)) with 0 < n <= chunk_size, host or
      device arrays; entries are indexed in the order they arrive. A short chunk is padded to chunk_size, so the
      device step compiles once.
    chunk_size: database entries compared per device step; memory grows with queries x chunk_size only.

  Returns:
    Neighbours with distance int32 (Q,) (sum of squared differences on the 0..255 scale), index int32 (Q,) of the
    first nearest entry (ties go to the lower index) and its highres (Q, H, W, C).
  """
  queries_QD = _centred_int8(queries)
  best, start = None, 0
  for lowres, highres in database:
    count = lowres.shape[0]
    if not 0 < count <= chunk_size or highres.shape[0] != count:
      raise ValueError(
        f'database chunks must hold 1..{chunk_size} low-res and as many high-res images, got '
        f'{lowres.shape} and {highres.shape}'
      )
    if best is None:
      best = Neighbours(
        distance=jnp.full((queries_QD.shape[0],), jnp.iinfo(jnp.int32).max, jnp.int32),
        index=jnp.full((queries_QD.shape[0],), -1, jnp.int32),
        highres=jnp.zeros((queries_QD.shape[0], *highres.shape[1:]), jnp.uint8),
      )
    if count < chunk_size:
      pad = lambda x, n=chunk_size - count: jnp.pad(jnp.asarray(x), [(0, n)] + [(0, 0)] * (x.ndim - 1))
      lowres, highres = pad(lowres), pad(highres)
    best = _merge_chunk(
      best,
      queries_QD,
      jnp.asarray(lowres, jnp.uint8),
      jnp.asarray(highres, jnp.uint8),
      jnp.int32(start),
      jnp.int32(count),
    )
    start += count
  if best is None:
    raise ValueError('nearest_neighbours was given an empty database.')
  return best


def array_chunks(lowres: np.ndarray, highres: np.ndarray, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """An in-memory database as the chunk stream `nearest_neighbours` reads."""
  for start in range(0, lowres.shape[0], chunk_size):
    yield lowres[start : start + chunk_size], highres[start : start + chunk_size]
