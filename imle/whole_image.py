"""Super-resolution of a whole image of any size, in overlapping tiles: SRIM and SRGAN are fully convolutional.

The low-res image is cut into `tile` x `tile` cores; each core is run with up to `overlap` low-res pixels of context
on every side (fewer at the image's border, where the untiled network sees its zero padding too) and only the core's
output is kept. Once `overlap` reaches the network's receptive radius (`receptive_radius`), every kept output pixel
sees exactly the input the untiled network would give it, so the stitched image equals the untiled one; memory is
that of one tile, whatever the image's size. SRIM's noise is one field per stage for the whole output: the noise of
a pixel is a function of its position alone (drawn in fixed blocks keyed by their position), so neighbouring tiles
agree on the pixels they share and no tile needs more of the field than its own window.
"""

import math
from collections.abc import Callable, Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from common import images
from imle import models, srgan, srgan_models

# (lowres uint8 (1, h, w, 3), one noise window per stage (1, f_s h, f_s w, C)) -> uint8 (1, f h, f w, 3).
TileFn = Callable[[jax.Array, Sequence[jax.Array]], jax.Array]
# (top, bottom, left, right) of a low-res window -> the noise of each stage over it, (f_s h, f_s w, C) each.
NoiseFn = Callable[[int, int, int, int], Sequence[np.ndarray]]
NOISE_BLOCK = 32  # Side of the blocks the noise fields are drawn in, in each stage's own pixels.


def srim_receptive_radius(cfg: models.SRIMConfig) -> int:
  """Low-res pixels of context an SRIM output pixel depends on, on each side (rounded up): stage s, at scale
  2^(s+1), has `num_convs` convs reaching kernel_size // 2 of its pixels each, and its bilinear upsampling of the
  previous image (and of the input, the skip image) reaches one pixel of that image."""
  radius = sum(cfg.num_convs * (cfg.kernel_size // 2) / 2 ** (s + 1) + 1 / 2**s for s in range(cfg.num_stages))
  return math.ceil(radius)


def srgan_receptive_radius(cfg: srgan_models.SRGANConfig) -> int:
  """The same for SRResNet: the 9x9 conv, two 3x3 convs per residual block and the trunk's 3x3 at low resolution;
  a 3x3 conv per x2 upsampler; the last 9x9 at full resolution."""
  upsamplers = cfg.upsample_factor.bit_length() - 1
  radius = 4 + 2 * cfg.generator_blocks + 1 + sum(1 / 2**u for u in range(upsamplers)) + 4 / cfg.upsample_factor
  return math.ceil(radius)


def _cores(length: int, tile: int) -> list[tuple[int, int]]:
  return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def super_resolve(
  fn: TileFn, lowres: np.ndarray, factor: int, *, tile: int, overlap: int, noises: NoiseFn = lambda *window: ()
) -> np.ndarray:
  """uint8 (h, w, 3) -> uint8 (factor h, factor w, 3), tile by tile; `noises` gives each window's noise fields."""
  if tile < 1 or overlap < 0:
    raise ValueError(f'tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}.')
  height, width = lowres.shape[:2]
  out = np.zeros((height * factor, width * factor, 3), np.uint8)
  for y0, y1 in _cores(height, tile):
    for x0, x1 in _cores(width, tile):
      wy0, wy1 = max(0, y0 - overlap), min(height, y1 + overlap)
      wx0, wx1 = max(0, x0 - overlap), min(width, x1 + overlap)
      windows = [jnp.asarray(n[None]) for n in noises(wy0, wy1, wx0, wx1)]
      result = np.asarray(fn(jnp.asarray(lowres[None, wy0:wy1, wx0:wx1]), windows))[0]
      oy, ox = (y0 - wy0) * factor, (x0 - wx0) * factor
      out[y0 * factor : y1 * factor, x0 * factor : x1 * factor] = result[
        oy : oy + (y1 - y0) * factor, ox : ox + (x1 - x0) * factor
      ]
  return out


def noise_window(key: jax.Array, top: int, bottom: int, left: int, right: int, channels: int) -> np.ndarray:
  """Rows top..bottom-1, columns left..right-1 of an endless N(0, 1) field: block (i, j) of NOISE_BLOCK pixels is
  drawn with fold_in(fold_in(key, i), j), so a pixel's noise depends on its position only."""
  b = NOISE_BLOCK
  rows = []
  for i in range(top // b, (bottom - 1) // b + 1):
    row = [
      jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j), (b, b, channels))
      for j in range(left // b, (right - 1) // b + 1)
    ]
    rows.append(np.concatenate([np.asarray(block) for block in row], axis=1))
  field = np.concatenate(rows, axis=0)
  y, x = top - (top // b) * b, left - (left // b) * b
  return field[y : y + bottom - top, x : x + right - left]


def srim_noises(cfg: models.SRIMConfig, key: jax.Array) -> NoiseFn:
  """SRIM's noise windows: stage s's field (at scale 2^(s+1)) keyed by fold_in(key, s)."""

  def noises(top, bottom, left, right):
    return [
      noise_window(
        jax.random.fold_in(key, s),
        top * 2 ** (s + 1),
        bottom * 2 ** (s + 1),
        left * 2 ** (s + 1),
        right * 2 ** (s + 1),
        cfg.noise_channels,
      )
      for s in range(cfg.num_stages)
    ]

  return noises


def srim_tile_fn(model: models.SRIM, variables: dict) -> TileFn:
  @jax.jit
  def fn(lowres, noises):
    outputs = cast(
      list[jax.Array], model.apply(variables, jnp.asarray(lowres, jnp.float32) / 255.0, noises, train=False)
    )
    highres01 = outputs[-1]
    return images.quantize(highres01 * 255.0)

  return fn


def srgan_tile_fn(model: srgan_models.Generator, variables: dict) -> TileFn:
  fn = jax.jit(lambda lowres: srgan.predict(model, variables, lowres))
  return lambda lowres, noises: fn(lowres)


def for_run(config, workdir: str, step: int | None = None):
  """(tile_fn, upsampling factor, receptive radius, key -> NoiseFn) of an SRIM or SRGAN run."""
  from imle import train  # Restoring needs the training module; the tiling above does not.

  if config.method == 'srim':
    model, variables = train.restore(config, workdir, step)
    return (
      srim_tile_fn(model, variables),
      2**model.cfg.num_stages,
      srim_receptive_radius(model.cfg),
      lambda key: srim_noises(model.cfg, key),
    )
  model, variables = srgan.restore(config, workdir, step)
  return (
    srgan_tile_fn(model, variables),
    model.cfg.upsample_factor,
    srgan_receptive_radius(model.cfg),
    lambda key: lambda *window: (),
  )
