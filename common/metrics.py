"""Image metrics of the papers' tables: pSNR, SSIM, MS-SSIM, consistency, luminance pSNR/SSIM and sample diversity.

Conventions. Images are (..., H, W, C) arrays, uint8 or floats, on the scale [0, max_val] (max_val = 255 for uint8
images and for floats on the 0..255 scale; 1.0 for floats in [0, 1]). Every metric is batched over the leading axes
and returns one float32 value per image, shaped (...); compute in float32, jit-able, pure jnp.

They equal reference implementations (tests/common/test_metrics.py): `psnr` = tf.image.psnr and
skimage.metrics.peak_signal_noise_ratio; `ssim` = tf.image.ssim (11x11 Gaussian window, sigma 1.5, k1 = 0.01,
k2 = 0.03, 'valid' filtering, SSIM averaged over pixels then channels) and skimage.metrics.structural_similarity
with gaussian_weights=True, sigma=1.5, use_sample_covariance=False; `ms_ssim` = tf.image.ssim_multiscale with the
same arguments.

MS-SSIM at 32x32. The standard 5 scales with an 11x11 window need >= 176 pixels a side. We use 3 scales (32, 16, 8
pixels), a 7x7 window with sigma 1.5 (it fits the 8x8 last scale) and the first three of Wang et al.'s power
factors (0.0448, 0.2856, 0.3001) renormalised to sum to 1. The same call on TF:
tf.image.ssim_multiscale(a, b, max_val, power_factors=MS_SSIM_POWER_FACTORS, filter_size=7).

Luminance (Y): two conventions, the `convention` argument of `luma`, `psnr_y` and `ssim_y`.
- 'bt601' (the default): ITU-R BT.601 studio swing as MATLAB's rgb2ycbcr and skimage.color.rgb2ycbcr, the
  super-resolution literature's: Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], so Y is in
  [16, 235] on the 0..255 scale. Y is not rounded, and borders are not shaved; `psnr_y` / `ssim_y` then score Y with
  `psnr` and `ssim` (11x11 window, sigma 1.5, 'valid') and max_val.
- 'daala': SRIM's table 1 ("computed on the luminance channel ... using the daala package"): xiph/daala's tools,
  read at commit 694d4ced7e97 (2020; as in 2018, when SRIM was written, but for dump_ssim's pixel aspect ratio, which
  png2y4m's output does not set). Y' is tools/png2y4m.c's with its defaults
  (dither on, 4:2:0): 8-bit RGB (floats are rounded to 255 x / max_val first) widened to 16 bits (x 257); a
  deterministic triangular dither of +-1 quantiser step in Y', Cb and Cr (KISS99 with a fixed seed, so two images of
  one size get the same), mapped back to RGB; Cb and Cr of each 2x2 block from the sum of its pixels (BT.709, studio
  swing, rounded, clamped to a byte); then each pixel's Y' is, of the two integers around its BT.709 luma (in steps
  of 65535/219 above 16), the one whose RGB reconstruction with the block's Cb, Cr is nearer in squared error (ties
  to even), 0..255 (16..235 in gamut). PNG gamma and sRGB chunks play no part (the tool ignores them). It is exact:
  equal to the tool's on every pixel tested (tests/common/test_daala_metrics.py), its 32-bit overflow of the squared
  error for far out-of-gamut reconstructions included. pSNR is tools/dump_psnr.c -y: 10 log10(255^2 N / SSE) on the
  Y' plane (+inf for equal planes). SSIM is tools/dump_ssim.c -y -r (-r: raw SSIM, not its default
  10 log10(1 / (1 - SSIM))): a Gaussian window at every pixel of the whole image with sigma = 1.5 H / 256 in both
  directions (H the height), integer taps summing to 256 (4 56 136 56 4 at H = 128; a single tap below H = 47, so
  there SSIM compares pixel by pixel), truncated at the borders and renormalised; K1 = 0.01, K2 = 0.03, L = 255; the
  SSIM map averaged with each pixel's window weight, lower near the borders.
"""

import functools
import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import images

_MS_SSIM_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001)  # The finest three of Wang et al.'s five scales.
MS_SSIM_POWER_FACTORS = tuple(w / sum(_MS_SSIM_WANG_WEIGHTS) for w in _MS_SSIM_WANG_WEIGHTS)
MS_SSIM_FILTER_SIZE = 7
CONVENTIONS = ('bt601', 'daala')  # Luma conventions of psnr_y and ssim_y (module docstring).
_BT601_Y = np.array([65.481, 128.553, 24.966]) / 255.0  # Y weights on the 0..255 scale (offset 16 added after).
_HIGHEST = jax.lax.Precision.HIGHEST  # GPUs/TPUs would otherwise filter in reduced precision.


def _float(x: jax.Array | np.ndarray) -> jax.Array:
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
    matrix[row, row : row + filter_size] = window
  return matrix


def _ssim_per_channel(
  a: jax.Array, b: jax.Array, max_val: float, filter_size: int, sigma: float, k1: float, k2: float
) -> tuple[jax.Array, jax.Array]:
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


def ssim(
  a: jax.Array,
  b: jax.Array,
  max_val: float = 255.0,
  filter_size: int = 11,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
) -> jax.Array:
  """Structural similarity per image (Wang et al. 2004), averaged over channels; images >= filter_size a side."""
  return jnp.mean(_ssim_per_channel(_float(a), _float(b), max_val, filter_size, filter_sigma, k1, k2)[0], axis=-1)


def _halve(x: jax.Array) -> jax.Array:
  """2x2 average pooling; an odd side is first padded by repeating its last row/column, as TF."""
  pad = [(0, 0)] * (x.ndim - 3) + [(0, x.shape[-3] % 2), (0, x.shape[-2] % 2), (0, 0)]
  x = jnp.pad(x, pad, mode='symmetric')
  h, w = x.shape[-3] // 2, x.shape[-2] // 2
  return x.reshape(*x.shape[:-3], h, 2, w, 2, x.shape[-1]).mean(axis=(-4, -2))


def ms_ssim(
  a: jax.Array,
  b: jax.Array,
  max_val: float = 255.0,
  power_factors: Sequence[float] = MS_SSIM_POWER_FACTORS,
  filter_size: int = MS_SSIM_FILTER_SIZE,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
) -> jax.Array:
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


def luminance(rgb: jax.Array | np.ndarray, max_val: float = 255.0) -> jax.Array:
  """BT.601 Y of RGB images on [0, max_val] -> (..., H, W, 1) on the same scale (16/255 .. 235/255 of max_val)."""
  weights = jnp.asarray(_BT601_Y, jnp.float32)
  y = jnp.einsum('...c,c->...', _float(rgb), weights, precision=_HIGHEST) + 16.0 / 255.0 * max_val
  return y[..., None]


def luma(rgb: jax.Array | np.ndarray, max_val: float = 255.0, convention: str = 'bt601') -> jax.Array:
  """Y of RGB images under `convention` (module docstring) -> (..., H, W, 1) on the scale of max_val."""
  if convention == 'daala':
    return daala_luma(rgb, max_val)
  _check_convention(convention)
  return luminance(rgb, max_val)


def psnr_y(
  a: jax.Array | np.ndarray, b: jax.Array | np.ndarray, max_val: float = 255.0, convention: str = 'bt601'
) -> jax.Array:
  """pSNR of the luminance of RGB images: BT.601 as the super-resolution literature reports it, or daala's."""
  return psnr(luma(a, max_val, convention), luma(b, max_val, convention), max_val)


def ssim_y(
  a: jax.Array | np.ndarray, b: jax.Array | np.ndarray, max_val: float = 255.0, convention: str = 'bt601'
) -> jax.Array:
  """SSIM of the luminance of RGB images: BT.601 with `ssim`'s window (11x11, sigma 1.5), or daala's dump_ssim."""
  if convention == 'daala':
    return _daala_ssim_plane(_daala_y8(a, max_val), _daala_y8(b, max_val))
  _check_convention(convention)
  return ssim(luminance(a, max_val), luminance(b, max_val), max_val)


def _check_convention(convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f'Unknown luma convention {convention!r}; one of {list(CONVENTIONS)}.')


def consistency(lowres: jax.Array, highres: jax.Array, *, method: str = 'antialiased') -> jax.Array:
  """Section 5.2's consistency: MSE on a [0, 1] scale between the low-res input and the downsampled output.

  lowres (..., h, w, C) and highres (..., H, W, C) on the 0..255 scale (uint8, or floats that are quantized like
  the data). The output goes through the data pipeline's operator, `common.images.downsample` (bicubic by `method`,
  config.data.resize; rounded to uint8), so an output whose downsample is exactly the input scores 0.
  """
  down = images.downsample(highres, lowres.shape[-3:-1], method=method)
  return mse(lowres, down) / 255.0**2


def diversity(samples: jax.Array | np.ndarray, num_samples: int, max_val: float = 255.0) -> jax.Array:
  """Mean over pixels and channels of the standard deviation across samples of one input, on a [0, 1] scale.

  samples: (B * num_samples, H, W, C) with the samples of input b in rows b * num_samples ... (b + 1) *
  num_samples - 1, the order of pixelsr.sampling. Returns (B,); 0 when all samples of an input are equal.
  """
  grouped = _float(samples).reshape(-1, num_samples, *samples.shape[1:])
  return jnp.mean(jnp.std(grouped, axis=1), axis=(-3, -2, -1)) / max_val


# The `daala` convention: xiph/daala's tools/png2y4m.c (luma), tools/dump_ssim.c and tools/dump_psnr.c, SRIM's
# footnote. png2y4m's arithmetic needs 64-bit integers, which JAX lacks by default: the helpers below evaluate sums of
# integer products exactly from two 32-bit views of them, the sum modulo 2^32 (wrapping uint32 arithmetic) and a
# float32 estimate, which tells which of the values with that residue it is while its error stays below 2^31.
# Every product here stays below 2^48 (dump_ssim's w times a window's sum of squares), where the estimate is off by
# less than 2^27.

# A term is a product of factors: int32 or uint32 arrays and Python ints of any size.
Term = tuple[jax.Array | np.ndarray | int, ...]
# png2y4m's triangular dither spans +-1 quantiser step of Y', Cb and Cr, in the units of its fixed-point BT.709.
_DITHER_HALF_WIDTHS = (1223320000, 1479548743, 1255654969)


def _residue(terms: Sequence[Term]) -> jax.Array:
  """The sum of the terms modulo 2^32, as int32 (two's complement)."""
  total = jnp.uint32(0)
  for factors in terms:
    product = jnp.uint32(1)
    for f in factors:
      product = product * (
        jnp.uint32(f % 2**32) if isinstance(f, int) else jax.lax.bitcast_convert_type(jnp.asarray(f), jnp.uint32)
      )
    total = total + product
  return jax.lax.bitcast_convert_type(total, jnp.int32)


def _estimate(terms: Sequence[Term]) -> jax.Array:
  total = jnp.float32(0)
  for factors in terms:
    product = jnp.float32(1)
    for f in factors:
      product = product * (jnp.float32(f) if isinstance(f, int) else jnp.asarray(f).astype(jnp.float32))
    total = total + product
  return total


def _wide(terms: Sequence[Term]) -> tuple[jax.Array, jax.Array]:
  """The sum of the terms as int32 (high, low) with sum = high * 2^32 + low, low in [-2^31, 2^31)."""
  low = _residue(terms)
  high = jnp.round((_estimate(terms) - low.astype(jnp.float32)) / 2.0**32).astype(jnp.int32)
  return high, low


def _is_non_negative(*terms: Term) -> jax.Array:
  high, low = _wide(terms)
  return (high > 0) | ((high == 0) & (low >= 0))


def _wide_float(*terms: Term) -> jax.Array:
  """The sum of the terms, exact before its one rounding to float32 (a difference of large products, unlike the
  float32 sum, keeps its relative precision)."""
  high, low = _wide(terms)
  return high.astype(jnp.float32) * 2.0**32 + low.astype(jnp.float32)


def _divmod(divisor: int, *terms: Term) -> tuple[jax.Array, jax.Array]:
  """Floor quotient and remainder of the sum of the terms by 0 < divisor < 2^30, both int32.

  The float32 quotient is within one of the true one, so the remainder it leaves is within (-divisor, 2 divisor):
  small enough for its residue to be its value.
  """
  quotient = jnp.floor(_estimate(terms) / divisor).astype(jnp.int32)
  remainder = _residue((*terms, (-divisor, quotient)))
  over, under = remainder >= divisor, remainder < 0
  return quotient + over - under, remainder - divisor * over + divisor * under


def _dither_draws(count: int) -> np.ndarray:
  """png2y4m's dither draws, (count, 3) triangular integers for Y', Cb, Cr in turn, each the difference of two
  uniform draws of Marsaglia's KISS99 (its published seed, which png2y4m sets for every image) made uniform on
  [0, half width] by rejection."""
  z, w, jsr, jcong = 362436069, 521288629, 123456789, 380116160
  mask = 0xFFFFFFFF
  spans = [half_width + 1 for half_width in _DITHER_HALF_WIDTHS]
  limits = [mask // span * span for span in spans]
  out = []
  for _ in range(count):
    for span, limit in zip(spans, limits):
      pair = []
      while len(pair) < 2:
        z = 36969 * (z & 0xFFFF) + (z >> 16)
        w = 18000 * (w & 0xFFFF) + (w >> 16)
        jsr ^= (jsr << 17) & mask
        jsr ^= jsr >> 13
        jsr ^= (jsr << 5) & mask
        jcong = (69069 * jcong + 1234567) & mask
        draw = ((((z << 16) + w) & mask ^ jcong) + jsr) & mask
        if draw < limit:
          pair.append(draw % span)
      out.append(pair[0] - pair[1])
  return np.array(out, np.int64).reshape(count, 3)


def _div_round(numerator: np.ndarray, divisor: int) -> np.ndarray:
  """Integer division rounding half away from zero (png2y4m's OD_DIV_ROUND)."""
  quotient = (np.abs(numerator) + divisor // 2) // divisor
  return np.where(numerator >= 0, quotient, -quotient)


@functools.cache
def _daala_dither(height: int, width: int) -> np.ndarray:
  """png2y4m's dither as (height, width, 3) int32 offsets of the 16-bit R, G, B; it depends on the size alone.

  Each 2x2 block (raster order) draws four (Y', Cb, Cr) triples; its four pixels take their own Y' noise and the
  first triple's Cb and Cr (4:2:0), mapped to RGB by the BT.709 inverse. Draws for pixels outside an odd-sized image
  are made and dropped. Pure Python: ~0.2 s at 128x128, ~15 s per megapixel, once per size.
  """
  rows, cols = (height + 1) // 2, (width + 1) // 2
  noise = _dither_draws(rows * cols * 4).reshape(rows, cols, 4, 3)
  luma_noise = noise[..., 0].reshape(rows, cols, 2, 2).transpose(0, 2, 1, 3).reshape(2 * rows, 2 * cols)
  per_pixel = lambda x: np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)
  cb_noise, cr_noise = per_pixel(noise[:, :, 0, 1]), per_pixel(noise[:, :, 0, 2])
  offsets = np.stack(
    [
      _div_round(2 * luma_noise + 3 * cr_noise, 8176000),
      _div_round(2384 * luma_noise + 361 * cb_noise + 1063 * cr_noise, 9745792000),
      _div_round(2 * luma_noise + 3 * cb_noise, 8176000),
    ],
    axis=-1,
  )
  return offsets[:height, :width].astype(np.int32)


def _to_levels(rgb: jax.Array, max_val: float) -> jax.Array:
  """RGB as int32 levels 0..255, what an 8-bit PNG stores: uint8 as is, floats scaled by 255 / max_val, rounded."""
  rgb = jnp.asarray(rgb)
  if rgb.dtype == jnp.uint8:
    return rgb.astype(jnp.int32)
  return jnp.clip(jnp.round(rgb.astype(jnp.float32) * (255.0 / max_val)), 0, 255).astype(jnp.int32)


def _daala_chroma(block_sums: jax.Array, weights: tuple[int, int, int], divisor: int) -> jax.Array:
  """png2y4m's 4:2:0 Cb or Cr less 128: the nearest integer to 28 (w . rgb_sum) / divisor, clamped to a byte.
  divisor is odd, so there is no tie."""
  terms = [(block_sums[..., c], 56 * w) for c, w in enumerate(weights)]
  chroma, _ = _divmod(2 * divisor, *terms, (divisor,))
  return jnp.clip(chroma + 128, 0, 255) - 128


def _daala_reconstruct(y: jax.Array, cb: jax.Array, cr: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """16-bit R, G, B of Y' = y + 16 (y in Y' steps of 65535/219) with chroma cb, cr less 128, rounded to the
  nearest (ties up) and clamped to 0..65535: png2y4m's BT.709 inverse, as exact fractions."""
  # R and B: 21845 y / 73 + (51602259 cr or 60803373 cb) / 112000, over the common denominator 8176000.
  red, _ = _divmod(16352000, (y, 4893280000), (cr, 7533929814), (8176000,))
  blue, _ = _divmod(16352000, (y, 4893280000), (cb, 8877292458), (8176000,))
  # G: 21845 y / 73 - (7316672551 cb + 18284400439 cr) / 133504000; the common denominator is above 2^32, so the
  # two fractions are split into integer parts and remainders, and the rounding of their sum is decided apart.
  luma_part, luma_rem = jnp.divmod(21845 * y, 73)
  chroma_part, chroma_rem = _divmod(133504000, (cb, 7316672551), (cr, 18284400439))
  # floor(luma_rem / 73 + 1/2 - chroma_rem / 133504000), which is -1, 0 or 1.
  carry = (
    _is_non_negative((2 * luma_rem + 73, 133504000), (chroma_rem, -146)).astype(jnp.int32)
    + _is_non_negative((2 * luma_rem - 73, 133504000), (chroma_rem, -146))
    - 1
  )
  green = luma_part - chroma_part + carry
  return jnp.clip(red, 0, 65535), jnp.clip(green, 0, 65535), jnp.clip(blue, 0, 65535)


def _daala_luma_steps(rgb16: jax.Array, cb: jax.Array, cr: jax.Array) -> jax.Array:
  """png2y4m's Y' less 16 of dithered 16-bit RGB (int32 (..., 3)) given its pixel's chroma: of the two Y' around
  the BT.709 luma, the one whose RGB reconstruction is nearer in squared error (ties to even)."""
  r, g, b = (rgb16[..., c] for c in range(3))
  # png2y4m floors (Y' - 16) = (1063 R' + 3576 G' + 361 B') / 5000 / (65535/219), where R' = R minus R's chroma part
  # in fixed point, rounded down. The chroma parts cancel in that sum, leaving floor(73 L / 109225000) for
  # L = 1063 R + 3576 G + 361 B, less one where that division is exact and the fixed-point roundings sum past
  # png2y4m's +4096 offsets (20480000 in all).
  luma = 1063 * r + 3576 * g + 361 * b
  steps, remainder = _divmod(109225000, (luma, 73))
  fixed_point_rounding = [
    _residue([(r, 9745792000), (cr, -4490222169144), (4096,)]) & 8191,
    _residue([(g, 9745792000), (cb, 534117096223), (cr, 1334761232047), (4096,)]) & 8191,
    _residue([(b, 9745792000), (cb, -5290866304968), (4096,)]) & 8191,
  ]
  rounding = 1063 * fixed_point_rounding[0] + 3576 * fixed_point_rounding[1] + 361 * fixed_point_rounding[2]
  low = jnp.clip(steps - ((remainder == 0) & (rounding > 20480000)), -16, 238)
  error_low, error_high = (_squared_error_int32(rgb16, _daala_reconstruct(y, cb, cr)) for y in (low, low + 1))
  return low + (error_high < error_low) + ((error_high == error_low) & ((low & 1) == 1))


def _squared_error_int32(rgb16: jax.Array, reconstruction: tuple[jax.Array, ...]) -> jax.Array:
  """Sum of squared differences over R, G, B in 32-bit int arithmetic, wrapping as png2y4m's compiled C does (a
  channel off by more than 46340, a far out-of-gamut reconstruction, overflows): the tool's Y' there follows it."""
  total = jnp.uint32(0)
  for c, rec in enumerate(reconstruction):
    diff = jax.lax.bitcast_convert_type(rgb16[..., c] - rec, jnp.uint32)
    total = total + diff * diff
  return jax.lax.bitcast_convert_type(total, jnp.int32)


@functools.partial(jax.jit, static_argnames=('max_val', 'dither'))  # Eager, its hundreds of small ops are slow.
def _daala_y8(rgb: jax.Array, max_val: float, dither: bool = True) -> jax.Array:
  """png2y4m's Y' (int32 0..255, shaped (..., H, W)) of RGB images, 4:2:0 chroma; dither=False is --no-dither."""
  levels = _to_levels(rgb, max_val)
  height, width = levels.shape[-3:-1]
  rgb16 = levels * 257  # 8 -> 16 bits by repeating the byte.
  if dither:
    rgb16 = rgb16 + jnp.asarray(_daala_dither(height, width))
  # Chroma of each 2x2 block from the sums of its dithered pixels; an odd last row or column counts twice.
  pad = [(0, 0)] * (rgb16.ndim - 3) + [(0, height % 2), (0, width % 2), (0, 0)]
  padded = jnp.pad(rgb16, pad, mode='edge')
  blocks = padded.reshape(*padded.shape[:-3], padded.shape[-3] // 2, 2, padded.shape[-2] // 2, 2, 3)
  block_sums = blocks.sum(axis=(-4, -2))
  per_pixel = lambda c: jnp.repeat(jnp.repeat(c, 2, axis=-2), 2, axis=-1)[..., :height, :width]
  cb = per_pixel(_daala_chroma(block_sums, (-1063, -3576, 4639), 304016865))
  cr = per_pixel(_daala_chroma(block_sums, (3937, -3576, -361), 258011295))
  return _daala_luma_steps(rgb16, cb, cr) + 16


def daala_luma(rgb: jax.Array | np.ndarray, max_val: float = 255.0) -> jax.Array:
  """xiph/daala png2y4m's Y' of RGB images (module docstring) -> (..., H, W, 1) float32 on the scale of max_val."""
  return (_daala_y8(rgb, max_val).astype(jnp.float32) * (max_val / 255.0))[..., None]


@functools.cache
def _daala_ssim_kernel(sigma: float, max_len: int) -> tuple[int, ...]:
  """dump_ssim's Gaussian: integer taps summing to 256, cut where the Gaussian falls below half a unit (and to fewer
  than max_len taps a side); the centre tap takes what rounding leaves."""
  scale = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
  cut = math.sqrt(0.5 * math.pi) * sigma / 256.0
  half = 0 if cut >= 1 else int(math.floor(sigma * math.sqrt(-2.0 * math.log(cut))))
  half = min(half, max_len - 1)
  side = [int(256.0 * scale * math.exp(-0.5 * k * k / (sigma * sigma)) + 0.5) for k in range(half, 0, -1)]
  return (*side, 256 - 2 * sum(side), *side[::-1])


def _filter_truncated(x: jax.Array, kernel: tuple[int, ...], axis: int) -> jax.Array:
  """Integer correlation with `kernel` along `axis` over the taps inside the image (no padding values)."""
  half, size = len(kernel) // 2, x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (half, half)
  padded = jnp.pad(x, pad)
  taps = [jnp.uint32(k) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i, k in enumerate(kernel)]
  return functools.reduce(operator.add, taps)


@jax.jit
def _daala_ssim_plane(a: jax.Array, b: jax.Array) -> jax.Array:
  """dump_ssim's raw SSIM of 8-bit planes (..., H, W) (integer-valued), per plane.

  A Gaussian window of sigma 1.5 H / 256 (both directions: pixels are square) at every pixel, truncated at the
  borders and renormalised (its weights' sum w); the SSIM map's mean weighted by w. Moments are exact integers as in
  dump_ssim; their differences are formed exactly (see `_wide_float`) before the float32 ratio.
  """
  height, width = a.shape[-2:]
  kernel = _daala_ssim_kernel(1.5 * height / 256.0, min(height, width))
  window = lambda x: _filter_truncated(_filter_truncated(x, kernel, -1), kernel, -2)
  a, b = jnp.asarray(a).astype(jnp.uint32), jnp.asarray(b).astype(jnp.uint32)
  w = window(jnp.ones((height, width), jnp.uint32))
  sum_a, sum_b, sum_aa, sum_bb, sum_ab = window(a), window(b), window(a * a), window(b * b), window(a * b)
  var_a = _wide_float((w, sum_aa), (-1, sum_a, sum_a))  # w^2 times the variance under the window.
  var_b = _wide_float((w, sum_bb), (-1, sum_b, sum_b))
  cov = _wide_float((w, sum_ab), (-1, sum_a, sum_b))
  w2 = jnp.square(w.astype(jnp.float32))
  c1, c2 = 255.0**2 * 0.01**2 * w2, 255.0**2 * 0.03**2 * w2
  fa, fb = sum_a.astype(jnp.float32), sum_b.astype(jnp.float32)
  ssim_map = (2 * fa * fb + c1) * (2 * cov + c2) / ((fa * fa + fb * fb + c1) * (var_a + var_b + c2))
  weighted = (ssim_map * w.astype(jnp.float32)).reshape(*ssim_map.shape[:-2], height * width)
  window_sums = lambda size: np.convolve(np.ones(size, np.int64), kernel)[len(kernel) // 2 :][:size]
  total_weight = int(window_sums(height).sum()) * int(window_sums(width).sum())  # Exact: the sum of w.
  return _pairwise_sum(weighted) / np.float32(total_weight)


def _pairwise_sum(x: jax.Array) -> jax.Array:
  """Sum over the last axis by halves: float32 error ~log2(n) roundings, where XLA's running sum of 16k terms loses
  ~1e-6 of a mean SSIM."""
  while x.shape[-1] > 1:
    if x.shape[-1] % 2:
      x = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
    x = x[..., 0::2] + x[..., 1::2]
  return x[..., 0]
