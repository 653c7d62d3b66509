"""Image metrics of the papers' tables: pSNR, SSIM, MS-SSIM, consistency, luminance pSNR/SSIM and sample diversity.

Conventions. Images are (..., H, W, C) arrays, uint8 or floats, on the scale [0, max_val] (max_val = 255 for uint8
images and for floats on the 0..255 scale; 1.0 for floats in [0, 1]). Every metric is batched over the leading axes
and returns one float32 value per image, shaped (...); compute in float32, jit-able, pure jnp.

They equal reference implementations (tests/test_metrics.py): `psnr` = tf.image.psnr and
skimage.metrics.peak_signal_noise_ratio; `ssim` = tf.image.ssim (11x11 Gaussian window, sigma 1.5, k1 = 0.01,
k2 = 0.03, 'valid' filtering, SSIM averaged over pixels then channels) and skimage.metrics.structural_similarity
with gaussian_weights=True, sigma=1.5, use_sample_covariance=False; `ms_ssim` = tf.image.ssim_multiscale with the
same arguments.

MS-SSIM at 32x32. The standard 5 scales with an 11x11 window need >= 176 pixels a side. We use 3 scales (32, 16, 8
pixels), a 7x7 window with sigma 1.5 (it fits the 8x8 last scale) and the first three of Wang et al.'s power
factors (0.0448, 0.2856, 0.3001) renormalised to sum to 1. The same call on TF:
tf.image.ssim_multiscale(a, b, max_val, power_factors=MS_SSIM_POWER_FACTORS, filter_size=7).

Luminance (Y). ITU-R BT.601 studio swing as MATLAB's rgb2ycbcr and skimage.color.rgb2ycbcr, the convention of the
super-resolution literature: Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], so Y is in [16, 235]
on the 0..255 scale. Y is not rounded, and borders are not shaved; `psnr_y` / `ssim_y` then score Y with max_val.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import images

_MS_SSIM_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001)  # The finest three of Wang et al.'s five scales.
MS_SSIM_POWER_FACTORS = tuple(w / sum(_MS_SSIM_WANG_WEIGHTS) for w in _MS_SSIM_WANG_WEIGHTS)
MS_SSIM_FILTER_SIZE = 7
_BT601_Y = np.array([65.481, 128.553, 24.966]) / 255.0  # Y weights on the 0..255 scale (offset 16 added after).
_HIGHEST = jax.lax.Precision.HIGHEST  # GPUs/TPUs would otherwise filter in reduced precision.


def _float(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared difference per image, on the scale of the inputs."""
  return jnp.mean(jnp.square(_float(a) - _float(b)), axis=(-3, -2, -1))


def psnr(a: jax.Array, b: jax.Array, max_val: float = 255.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image over all pixels and channels; +inf where a == b."""
  return 20.0 * jnp.log10(jnp.float32(max_val)) - 10.0 * jnp.log10(mse(a, b))


def bounded_psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """pSNR of images with integer values on the 0..255 scale, where an exact match scores as one sub-pixel off by one
  level: 10 log10(255^2 H W C), 83.0 dB at 32x32x3, the highest pSNR two different uint8 images can have. Means
  over a data set then stay finite (a flat crop, a duplicate found by nearest neighbour); `psnr` elsewhere."""
  min_mse = 1.0 / np.prod(a.shape[-3:])
  return 20.0 * jnp.log10(jnp.float32(255.0)) - 10.0 * jnp.log10(jnp.maximum(mse(a, b), min_mse))


@functools.cache
def _gaussian_filter_matrix(size: int, filter_size: int, sigma: float) -> np.ndarray:
  """(size - filter_size + 1, size) matrix applying a normalised 1-D Gaussian with 'valid' borders.

  The 2-D window of TF and skimage is the outer product of this 1-D one, so filtering is two matrix products.
  """
  if size < filter_size:
    raise ValueError(f'SSIM needs images of at least {filter_size} pixels a side (the window), got {size}.')
  coords = np.arange(filter_size) - (filter_size - 1) / 2.0
  window = np.exp(-0.5 * np.square(coords / sigma))
  window /= window.sum()
  matrix = np.zeros((size - filter_size + 1, size), np.float32)
  for row in range(matrix.shape[0]):
    matrix[row, row:row + filter_size] = window
  return matrix


def _ssim_per_channel(a: jax.Array, b: jax.Array, max_val: float, filter_size: int, sigma: float, k1: float,
                      k2: float) -> tuple[jax.Array, jax.Array]:
  """(SSIM, contrast-structure term) per image and channel, shaped (..., C): the maps averaged over H and W."""
  rows = _gaussian_filter_matrix(a.shape[-3], filter_size, sigma)
  cols = _gaussian_filter_matrix(a.shape[-2], filter_size, sigma)
  local_mean = lambda x: jnp.einsum('ph,...hwc,qw->...pqc', rows, x, cols, precision=_HIGHEST)
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  mean_a, mean_b = local_mean(a), local_mean(b)
  mean_ab = mean_a * mean_b
  luminance = (2.0 * mean_ab + c1) / (jnp.square(mean_a) + jnp.square(mean_b) + c1)
  # Biased (co)variances, E[ab] - E[a] E[b], as TF and skimage with use_sample_covariance=False.
  covariance = local_mean(a * b) - mean_ab
  variances = local_mean(jnp.square(a) + jnp.square(b)) - jnp.square(mean_a) - jnp.square(mean_b)
  contrast_structure = (2.0 * covariance + c2) / (variances + c2)
  return jnp.mean(luminance * contrast_structure, axis=(-3, -2)), jnp.mean(contrast_structure, axis=(-3, -2))


def ssim(a: jax.Array, b: jax.Array, max_val: float = 255.0, filter_size: int = 11, filter_sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Structural similarity per image (Wang et al. 2004), averaged over channels; images >= filter_size a side."""
  return jnp.mean(_ssim_per_channel(_float(a), _float(b), max_val, filter_size, filter_sigma, k1, k2)[0], axis=-1)


def _halve(x: jax.Array) -> jax.Array:
  """2x2 average pooling; an odd side is first padded by repeating its last row/column, as TF."""
  pad = [(0, 0)] * (x.ndim - 3) + [(0, x.shape[-3] % 2), (0, x.shape[-2] % 2), (0, 0)]
  x = jnp.pad(x, pad, mode='symmetric')
  h, w = x.shape[-3] // 2, x.shape[-2] // 2
  return x.reshape(*x.shape[:-3], h, 2, w, 2, x.shape[-1]).mean(axis=(-4, -2))


def ms_ssim(a: jax.Array, b: jax.Array, max_val: float = 255.0,
            power_factors: Sequence[float] = MS_SSIM_POWER_FACTORS, filter_size: int = MS_SSIM_FILTER_SIZE,
            filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Multi-scale SSIM per image (Wang et al. 2003), as tf.image.ssim_multiscale with the same arguments.

  One scale per power factor, each half the size of the last; the contrast-structure terms of all but the coarsest
  scale and the SSIM of the coarsest, clipped at 0, are raised to the power factors and multiplied, per channel,
  then averaged over channels. The defaults fit 32x32 images (see the module docstring).
  """
  a, b = _float(a), _float(b)
  terms = []
  for scale in range(len(power_factors)):
    if scale:
      a, b = _halve(a), _halve(b)
    ssim_c, cs_c = _ssim_per_channel(a, b, max_val, filter_size, filter_sigma, k1, k2)
    terms.append(cs_c if scale < len(power_factors) - 1 else ssim_c)
  terms = jax.nn.relu(jnp.stack(terms, axis=-1))
  return jnp.mean(jnp.prod(terms ** jnp.asarray(power_factors, jnp.float32), axis=-1), axis=-1)


def luminance(rgb: jax.Array, max_val: float = 255.0) -> jax.Array:
  """BT.601 Y of RGB images on [0, max_val] -> (..., H, W, 1) on the same scale (16/255 .. 235/255 of max_val)."""
  weights = jnp.asarray(_BT601_Y, jnp.float32)
  y = jnp.einsum('...c,c->...', _float(rgb), weights, precision=_HIGHEST) + 16.0 / 255.0 * max_val
  return y[..., None]


def psnr_y(a: jax.Array, b: jax.Array, max_val: float = 255.0) -> jax.Array:
  """pSNR of the BT.601 luminance of RGB images, as the super-resolution literature reports it."""
  return psnr(luminance(a, max_val), luminance(b, max_val), max_val)


def ssim_y(a: jax.Array, b: jax.Array, max_val: float = 255.0) -> jax.Array:
  """SSIM (11x11 Gaussian window, sigma 1.5) of the BT.601 luminance of RGB images."""
  return ssim(luminance(a, max_val), luminance(b, max_val), max_val)


def consistency(lowres: jax.Array, highres: jax.Array, *, method: str = 'antialiased') -> jax.Array:
  """Section 5.2's consistency: MSE on a [0, 1] scale between the low-res input and the downsampled output.

  lowres (..., h, w, C) and highres (..., H, W, C) on the 0..255 scale (uint8, or floats that are quantized like
  the data). The output goes through the data pipeline's operator, `common.images.downsample` (bicubic by `method`,
  config.data.resize; rounded to uint8), so an output whose downsample is exactly the input scores 0.
  """
  down = images.downsample(highres, lowres.shape[-3:-1], method=method)
  return mse(lowres, down) / 255.0 ** 2


def diversity(samples: jax.Array, num_samples: int, max_val: float = 255.0) -> jax.Array:
  """Mean over pixels and channels of the standard deviation across samples of one input, on a [0, 1] scale.

  samples: (B * num_samples, H, W, C) with the samples of input b in rows b * num_samples ... (b + 1) *
  num_samples - 1, the order of pixelsr.sampling. Returns (B,); 0 when all samples of an input are equal.
  """
  grouped = _float(samples).reshape(-1, num_samples, *samples.shape[1:])
  return jnp.mean(jnp.std(grouped, axis=1), axis=(-3, -2, -1)) / max_val
