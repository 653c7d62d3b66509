"""Whole images through the pixel recursive model (`launch/sample.py --whole_image`): the model is fully
convolutional, so an h x w input of any size gives an (f h) x (f w) output, drawn by the cached sampler
(`sampling.sample`) sub-pixel after sub-pixel. A model trained on 32x32 crops sees a larger canvas only through its
receptive field: each sub-pixel depends on the input near it and on the output above and to its left.

The cost is one sequential step per sub-pixel (the samples of an input are drawn side by side), so it grows with the
output's area: before sampling, `time_per_pixel` times the same sampler on a strip of the input, and `estimate`
turns that into an estimated time for the whole image.
"""

import dataclasses
import time

import jax
import numpy as np

from pixelsr import sampling

STRIP_ROWS, STRIP_COLUMNS = 2, 16  # The low-res strip timed before sampling: 8 x 64 output pixels at x4.


@dataclasses.dataclass(frozen=True)
class Timing:
  """What a timed strip measured: seconds per output pixel (all its colours, all samples side by side), and the
  seconds the first call spent compiling (a new image size compiles again)."""

  seconds_per_pixel: float
  compile_seconds: float


def time_per_pixel(
  model, variables, lowres: np.ndarray, temperature: float, num_samples: int, key: jax.Array
) -> Timing:
  """Times `sampling.sample` on a strip of `lowres` (uint8 (h, w, C)): its first STRIP_ROWS rows and STRIP_COLUMNS
  columns (edge-padded where it is smaller), with `num_samples` samples, as the whole image will be drawn. The first
  call compiles; the second is the measured one. On a shared CPU the rate varies by 2x from run to run."""
  strip = lowres[:STRIP_ROWS, :STRIP_COLUMNS]
  pad = ((0, STRIP_ROWS - strip.shape[0]), (0, STRIP_COLUMNS - strip.shape[1]), (0, 0))
  strip = np.pad(strip, pad, mode='edge')[None]
  seconds, y = [], None
  for _ in range(2):
    start = time.perf_counter()
    y = jax.block_until_ready(sampling.sample(model, variables, strip, key, temperature, num_samples))
    seconds.append(time.perf_counter() - start)
  assert y is not None
  return Timing(seconds[1] / (y.shape[1] * y.shape[2]), max(seconds[0] - seconds[1], 0.0))


def output_size(cfg, height: int, width: int) -> tuple[int, int]:
  """The (H, W) of the output for an h x w input."""
  return height * cfg.upsample_factor, width * cfg.upsample_factor


def estimate(cfg, timing: Timing, height: int, width: int, num_draws: int = 1) -> float:
  """Estimated seconds to draw `num_draws` calls of `sampling.sample` (e.g. one per temperature) for an h x w input:
  one compilation, then the strip's time per output pixel times the output's pixels."""
  out_h, out_w = output_size(cfg, height, width)
  return timing.compile_seconds + num_draws * timing.seconds_per_pixel * out_h * out_w


def duration(seconds: float) -> str:
  """'45 s', '12 min', '3.2 h'."""
  if seconds < 90:
    return f'{seconds:.0f} s'
  if seconds < 90 * 60:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'
