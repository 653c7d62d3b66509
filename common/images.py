"""Image helpers: bicubic resizing, quantization, value ranges, grids and file I/O.

Pixel values are floats in [0, 255] or uint8 unless a name says otherwise. The resizes
match TensorFlow's bicubic resizes (RESIZE_METHODS), which the data pipeline uses, so the
JAX side (metrics, baselines) sees the same operator as the data.
"""

import functools
import os
import uuid
from collections.abc import Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from common.errors import UserError

# Larger images are decoded reduced (JPEG) or refused: a full decode would take 3 bytes a pixel, and the models
# read 32x32 (SRIM 128x128) crops of them.
MAX_IMAGE_PIXELS = 64 * 2**20
# The bicubic resizes of config.data.resize: 'antialiased' = tf.image.resize(..., 'bicubic', antialias=True);
# 'no_antialias' = the same with antialias=False; 'tf1' = tf.compat.v1.image.resize_bicubic (TF1's default,
# align_corners=False, half_pixel_centers=False).
RESIZE_METHODS = ('antialiased', 'no_antialias', 'tf1')
# TF's ResizeBicubic kernel looks its weights up in a table of 1024 sub-pixel offsets.
_TF_TABLE_SIZE = 1024


class ImageError(UserError, ValueError):
  """A file that cannot be read as an image; the message names the file."""


def _size_2d(size: int | Sequence[int]) -> tuple[int, int]:
  if np.ndim(size) == 0:  # An int, or a NumPy scalar.
    return int(cast(int, size)), int(cast(int, size))
  pair = cast(Sequence[int], size)
  return int(pair[0]), int(pair[1])


@functools.cache
def _tf_bicubic_weights(in_size: int, out_size: int, half_pixel_centers: bool) -> np.ndarray:
  """The (out_size, in_size) matrix of TF's non-antialiased ResizeBicubic on one axis.

  Mirrors tensorflow/core/kernels/image/resize_bicubic_op.cc, in float32 as there: the
  sub-pixel offset is rounded to 1/1024 for the table lookup. With half-pixel centres (TF2's
  tf.image.resize) output pixel i samples the input at (i + 0.5) * in/out - 0.5 with Keys'
  a = -0.5, and taps outside the image get weight 0, the rest renormalized. Without them
  (the legacy kernel of TF1's resize_bicubic) it samples at i * in/out with a = -0.75, and
  taps outside the image are clamped to the edge pixel. Its output grid starts on the input's
  first pixel instead of covering the same area, and at an integer downscaling factor f it
  takes exactly every f-th pixel (the kernel is 1 at offset 0 and 0 at the other taps).
  """
  x = (np.arange(_TF_TABLE_SIZE + 1) / _TF_TABLE_SIZE).astype(np.float32).astype(np.float64)
  a = -0.5 if half_pixel_centers else -0.75
  near = (((a + 2) * x - (a + 3)) * x * x + 1).astype(np.float32)  # |t| in [0, 1]
  x1 = (x.astype(np.float32) + np.float32(1)).astype(np.float64)
  far = (((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a).astype(np.float32)  # |t| in [1, 2]

  scale = np.float32(in_size) / np.float32(out_size)
  if half_pixel_centers:
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  else:
    centre = np.arange(out_size, dtype=np.float32) * scale
  first = np.floor(centre)
  offset = np.rint((centre - first) * np.float32(_TF_TABLE_SIZE)).astype(np.int64)
  taps = first.astype(np.int64)[:, None] + np.arange(-1, 3)
  tap_weights = np.stack(
    [far[offset], near[offset], near[_TF_TABLE_SIZE - offset], far[_TF_TABLE_SIZE - offset]], axis=1
  )
  if half_pixel_centers:
    tap_weights = np.where((taps >= 0) & (taps < in_size), tap_weights, np.float32(0))
    tap_weights *= np.float32(1) / tap_weights.sum(axis=1, keepdims=True, dtype=np.float32)

  weights = np.zeros((out_size, in_size), np.float32)
  rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
  np.add.at(weights, (rows, np.clip(taps, 0, in_size - 1)), tap_weights)
  return weights


def resize(images: jax.Array | np.ndarray, size: int | Sequence[int], *, method: str = 'antialiased') -> jax.Array:
  """Bicubic resize of an image (H, W, C) or a batch (..., H, W, C) to `size` (h, w).

  'antialiased' equals `tf.image.resize(x, size, 'bicubic', antialias=True)` (and
  `jax.image.resize(..., 'bicubic')`): when downsampling, the kernel is widened by the
  scale factor. 'no_antialias' equals `tf.image.resize(..., antialias=False)`, TF's
  ResizeBicubic kernel, up to float rounding (~1e-4 on 0..255) for both up- and
  downsampling; `jax.image.resize(..., antialias=False)` differs from it by ~0.1-0.2
  where TF quantizes the sub-pixel offsets to 1/1024. 'tf1' equals
  `tf.compat.v1.image.resize_bicubic(x, size)` (no half-pixel centres, a = -0.75).

  Returns float32 values, not clipped (bicubic overshoots near edges).
  """
  if method not in RESIZE_METHODS:
    raise ValueError(f'method must be one of {RESIZE_METHODS}, got {method!r}')
  h, w = _size_2d(size)
  images = jnp.asarray(images, jnp.float32)
  if method == 'antialiased':
    return jax.image.resize(images, images.shape[:-3] + (h, w, images.shape[-1]), 'bicubic')
  weights_h = _tf_bicubic_weights(images.shape[-3], h, method == 'no_antialias')
  weights_w = _tf_bicubic_weights(images.shape[-2], w, method == 'no_antialias')
  highest = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bfloat16.
  images = jnp.einsum('Hh,...hwc->...Hwc', weights_h, images, precision=highest)
  return jnp.einsum('Ww,...hwc->...hWc', weights_w, images, precision=highest)


def quantize(x: jax.Array) -> jax.Array:
  """Floats in [0, 255] -> uint8, rounding half to even (as tf.round and jnp.round), clipped."""
  return jnp.clip(jnp.round(jnp.asarray(x, jnp.float32)), 0, 255).astype(jnp.uint8)


def downsample(highres: jax.Array | np.ndarray, size: int | Sequence[int], *, method: str = 'antialiased') -> jax.Array:
  """uint8 high-res -> uint8 low-res, the operator the data pipeline uses to make inputs (config.data.resize)."""
  return quantize(resize(highres, size, method=method))


def bicubic_upsample(
  lowres: jax.Array | np.ndarray, size: int | Sequence[int], *, method: str = 'antialiased'
) -> jax.Array:
  """uint8 low-res -> float32 in [0, 255]: the bicubic baseline, clipped to valid pixels. 'antialiased' and
  'no_antialias' are the same kernel when upsampling; 'tf1' is TF1's resize_bicubic, as a TF1-era baseline was."""
  return jnp.clip(resize(lowres, size, method=method), 0.0, 255.0)


def uint8_to_signed(x: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the range network inputs use."""
  return jnp.asarray(x, jnp.float32) / 127.5 - 1.0


def signed_to_uint8(x: jax.Array) -> jax.Array:
  """float [-1, 1] -> uint8, the inverse of `uint8_to_signed` up to quantization."""
  return quantize((jnp.asarray(x, jnp.float32) + 1.0) * 127.5)


def _nearest_resize(images: np.ndarray, h: int, w: int) -> np.ndarray:
  rows = np.arange(h) * images.shape[1] // h
  cols = np.arange(w) * images.shape[2] // w
  return images[:, rows][:, :, cols]


def make_grid(image_sets: Sequence[np.ndarray], padding: int = 2, pad_value: int = 255) -> np.ndarray:
  """Lays out N examples as rows and the image sets as columns, e.g. [lowres, sample, truth].

  Args:
    image_sets: uint8 arrays (N, H_k, W_k, C) with C in {1, 3} and the same N; sizes
      may differ. Smaller images are enlarged with nearest neighbour to the largest
      height and width, so that every cell has the same size.
    padding: pixels between cells and around the border.
    pad_value: grey level of the padding.

  Returns:
    uint8 (N * H + (N + 1) * padding, K * W + (K + 1) * padding, 3), ready for PNG.
  """
  sets = [np.asarray(s) for s in image_sets]
  if not sets or any(s.ndim != 4 or s.shape[-1] not in (1, 3) for s in sets):
    raise ValueError(f'make_grid wants (N, H, W, 1 or 3) arrays, got {[s.shape for s in sets]}')
  num = sets[0].shape[0]
  if any(s.shape[0] != num for s in sets):
    raise ValueError(f'make_grid wants the same N in every set, got {[s.shape for s in sets]}')
  h = max(s.shape[1] for s in sets)
  w = max(s.shape[2] for s in sets)
  grid = np.full((num * (h + padding) + padding, len(sets) * (w + padding) + padding, 3), pad_value, np.uint8)
  for k, images in enumerate(sets):
    cells = np.broadcast_to(_nearest_resize(images, h, w), (num, h, w, 3))
    left = padding + k * (w + padding)
    for n in range(num):
      top = padding + n * (h + padding)
      grid[top : top + h, left : left + w] = cells[n]
  return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 (H, W), (H, W, 1) or (H, W, 3) image as PNG, atomically.

  The file appears complete or not at all (temporary file in the same folder, then
  os.replace), so a viewer polling the folder never reads half a PNG.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'save_png wants uint8, got {image.dtype}')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Not tempfile: its files are private (0600); this one is created with the user's umask, as a plain open would.
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
  try:
    Image.fromarray(image).save(tmp, format='PNG')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode -> RGB; transparency is composited onto white."""
  if image.mode in ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N'):
    # 16-bit greyscale (PNG); PIL's own convert would clip at 255 instead of rescaling.
    values = np.asarray(image, np.float64) / 257.0
    image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), 'L')
  if image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert('RGB')
  return image.convert('RGB')


def _reduce_or_refuse(image: Image.Image, path, max_pixels: int) -> None:
  """Asks a JPEG decoder for the smallest power-of-two reduction that fits `max_pixels`; refuses anything else."""
  width, height = image.size
  for factor in (2, 4, 8):
    if image.format == 'JPEG' and -(-width // factor) * -(-height // factor) <= max_pixels:
      image.draft('RGB', (width // factor, height // factor))  # The decoder rounds each side up.
      logging.info('%s is %dx%d: decoded at 1/%d scale, %dx%d.', os.fspath(path), width, height, factor, *image.size)
      return
  raise ImageError(
    f'Image file {os.fspath(path)!r} is {width}x{height} ({width * height / 1e6:.3g} MP), over the '
    f'{max_pixels / 1e6:.3g} MP this library decodes. Downscale it first (e.g. `convert IN -resize '
    '4096x4096 OUT`); a JPEG up to 8x8 times that size is read at a reduced scale.'
  )


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Reads an image file as uint8 (H, W, 3) RGB.

  Every PIL mode becomes RGB: greyscale is replicated, palettes are expanded, 16-bit
  greyscale is rescaled (65535 -> 255), transparent pixels are composited onto white
  (not dropped: what is under a transparent pixel is arbitrary), the EXIF orientation
  is applied, and animations give their first frame.

  An image of more than `max_pixels` is never decoded at full size: a JPEG is decoded at
  1/2, 1/4 or 1/8 scale (its DCT allows it for free), whichever first fits; anything else
  is refused.

  Raises:
    FileNotFoundError: `path` does not exist.
    ImageError: the file is not an image PIL can decode, or is too large (message names the file).
  """
  try:
    with Image.open(path) as image:
      if image.width * image.height > max_pixels:
        _reduce_or_refuse(image, path, max_pixels)
      image = ImageOps.exif_transpose(image)
      return np.asarray(_to_rgb(image), np.uint8)
  except (FileNotFoundError, ImageError):
    raise
  except Image.DecompressionBombError as e:  # Over twice PIL's own limit: refused before reading the header's size.
    raise ImageError(
      f'Cannot read image file {os.fspath(path)!r}: {e}. Downscale it first (e.g. `convert IN -resize 4096x4096 OUT`).'
    ) from e
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f'Cannot read image file {os.fspath(path)!r}: {e}') from e
