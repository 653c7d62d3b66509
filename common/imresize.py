"""MATLAB's `imresize` with its default bicubic kernel, in numpy: the operator the super-resolution literature
downsamples with, and the one the NTIRE 2021 "Learning the Super-Resolution Space" toolkit applies before its
LR-PSNR (through a Python port of it).

What makes it MATLAB's and not `tf.image.resize` / `jax.image.resize`:
- Keys' cubic kernel with a = -0.5, widened by 1/scale when shrinking (antialiasing), normalised per output pixel;
- pixel centres at u = x / scale + (1 - 1 / scale) / 2 for output pixel x (1-based);
- outside the image, the half-sample symmetric reflection (x_0 = x_1, x_-1 = x_2, ...), not renormalised weights;
- the output size ceil(scale * size) for a scale, and the smaller-scale dimension resized first;
- a uint8 image is rounded (half away from zero) and saturated after each dimension, as MATLAB keeps the class.
The toolkit's port rounds with np.around (half to even); the two differ only on exact .5 ties.
"""

import math
from collections.abc import Sequence

import numpy as np

KERNEL_WIDTH = 4.0  # Keys' cubic is non-zero on (-2, 2).


def cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5, MATLAB's `cubic`."""
  ax = np.abs(np.asarray(x, np.float64))
  ax2, ax3 = ax * ax, ax * ax * ax
  return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def weights_matrix(in_length: int, out_length: int, scale: float) -> np.ndarray:
  """(out_length, in_length) float64: row x holds the weights output pixel x gives each input pixel, the
  reflected taps folded onto the pixels they mirror."""
  if scale < 1:  # Antialiasing: the kernel stretched to the output's pixel spacing.
    kernel = lambda t: scale * cubic(scale * t)
    width = KERNEL_WIDTH / scale
  else:
    kernel, width = cubic, KERNEL_WIDTH
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1 - 1 / scale)
  taps = np.floor(u - width / 2)[:, None] + np.arange(math.ceil(width) + 2)[None, :]  # 1-based input positions.
  w = kernel(u[:, None] - taps)
  w /= w.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
  index = mirror[np.mod(taps.astype(np.int64) - 1, 2 * in_length)]
  matrix = np.zeros((out_length, in_length))
  np.add.at(matrix, (np.repeat(np.arange(out_length), taps.shape[1]), index.reshape(-1)), w.reshape(-1))
  return matrix


def _round_uint8(x: np.ndarray) -> np.ndarray:
  return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)  # Non-negative: half away from zero is floor(x + .5).


def imresize(image: np.ndarray, scale: float | None = None, output_shape: Sequence[int] | None = None) -> np.ndarray:
  """Resizes the two axes before the last of `image` ((H, W, C), or (..., H, W, C) with leading batch axes) by
  `scale` (output ceil(scale * size)) or to `output_shape` (H', W'), as MATLAB's imresize(image, scale) /
  imresize(image, [H' W']) with 'bicubic' and antialiasing. uint8 in, uint8 out; a float image stays float64."""
  image = np.asarray(image)
  if image.ndim < 3:
    raise ValueError(f'imresize takes (..., H, W, C) images, got shape {image.shape}.')
  in_shape = image.shape[-3:-1]
  if (scale is None) == (output_shape is None):
    raise ValueError('imresize takes exactly one of scale and output_shape.')
  if scale is not None:
    if scale <= 0:
      raise ValueError(f'imresize scale must be positive, got {scale}.')
    scales = (float(scale), float(scale))
    out_shape = tuple(math.ceil(scale * n) for n in in_shape)
  else:
    out_shape = tuple(int(n) for n in output_shape)  # type: ignore[union-attr]  (one of the two is given)
    if len(out_shape) != 2 or min(out_shape) < 1:
      raise ValueError(f'imresize output_shape must be two positive sizes, got {output_shape}.')
    scales = tuple(o / i for o, i in zip(out_shape, in_shape))
  is_uint8 = image.dtype == np.uint8
  out = image
  for dim in sorted(range(2), key=lambda d: scales[d]):  # Stable: equal scales resize rows first, as MATLAB.
    matrix = weights_matrix(in_shape[dim], out_shape[dim], scales[dim])
    axis = image.ndim - 3 + dim
    out = np.moveaxis(np.tensordot(matrix, out.astype(np.float64), axes=([1], [axis])), 0, axis)
    if is_uint8:
      out = _round_uint8(out)
  return out
