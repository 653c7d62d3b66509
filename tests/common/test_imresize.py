"""MATLAB's bicubic imresize (common/imresize.py) against values worked out from its definition: Keys' kernel
(a = -0.5) widened by 1/scale when shrinking, centres u = x / s + (1 - 1 / s) / 2, half-sample symmetric
reflection, the smaller scale first, uint8 rounded after each dimension."""

import math

import numpy as np
import pytest

from common import imresize

# MATLAB's weights for a x2 downscale, worked out by hand: cubic(t / 2) / 2 at t = +-0.5, +-1.5, +-2.5, +-3.5
# (0.8671875, 0.2265625, -0.0703125, -0.0234375, halved), normalised by their sum, 1.
HALF = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])


def test_keys_kernel_values():
  np.testing.assert_allclose(
    imresize.cubic(np.array([0, 0.25, 0.5, 1, 1.25, 1.5, 1.75, 2, 2.5, -0.5])),
    [1, 0.8671875, 0.5625, 0, -0.0703125, -0.0625, -0.0234375, 0, 0, 0.5625],
  )


def test_halving_weights_inside_and_at_the_border():
  w = imresize.weights_matrix(16, 8, 0.5)
  # Output 4 (1-based) is centred at u = 7.5: inputs 4..11 get the eight weights.
  np.testing.assert_allclose(w[3, 3:11], HALF, atol=1e-15)
  assert np.all(w[3, :3] == 0) and np.all(w[3, 11:] == 0)
  # Output 1 at u = 1.5: taps -2..5 reflect to inputs 3, 2, 1, 1, 2, 3, 4, 5 (x_0 = x_1, x_-1 = x_2, ...).
  np.testing.assert_allclose(
    w[0, :5], [HALF[2] + HALF[3], HALF[1] + HALF[4], HALF[0] + HALF[5], HALF[6], HALF[7]], atol=1e-15
  )
  np.testing.assert_allclose(w[0, :5], [0.546875, 0.3984375, 0.1015625, -0.03515625, -0.01171875], atol=1e-15)
  np.testing.assert_allclose(w[-1, ::-1][:5], w[0, :5], atol=1e-15)  # The bottom mirrors the top.
  np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-14)


def naive(in_length: int, out_length: int, scale: float) -> np.ndarray:
  """The definition, one output pixel at a time, summing the kernel over every integer tap near u and folding a
  tap outside the image onto its mirror."""
  k = (lambda t: scale * imresize.cubic(scale * t)) if scale < 1 else imresize.cubic
  support = 2 / scale if scale < 1 else 2
  matrix = np.zeros((out_length, in_length))
  for x in range(1, out_length + 1):
    u = x / scale + 0.5 * (1 - 1 / scale)
    taps = range(math.floor(u - support) - 1, math.ceil(u + support) + 2)
    weights = {j: float(k(u - j)) for j in taps}
    total = sum(weights.values())
    for j, wj in weights.items():
      i = j
      while i < 1 or i > in_length:  # Half-sample symmetric: 0 -> 1, -1 -> 2, n + 1 -> n.
        i = 1 - i if i < 1 else 2 * in_length + 1 - i
      matrix[x - 1, i - 1] += wj / total
  return matrix


@pytest.mark.parametrize(
  'in_length,out_length', [(32, 8), (96, 24), (10, 4), (7, 3), (13, 5), (3, 7), (5, 11), (8, 32), (4, 4)]
)
def test_weights_match_the_definition_at_integer_and_fractional_scales(in_length, out_length):
  scale = out_length / in_length
  np.testing.assert_allclose(
    imresize.weights_matrix(in_length, out_length, scale), naive(in_length, out_length, scale), atol=1e-13
  )


def test_uint8_rounds_after_each_dimension_and_resizes_the_smaller_scale_first():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)
  rows, cols = naive(10, 4, 0.4), naive(7, 5, 5 / 7)  # Rows shrink more (0.4 < 5/7): they go first.
  round_ = lambda x: np.floor(np.clip(x, 0, 255) + 0.5)
  expected = round_(np.einsum('wj,ijc->iwc', cols, round_(np.einsum('hi,ijc->hjc', rows, image.astype(np.float64)))))
  out = imresize.imresize(image, output_shape=(4, 5))
  assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
  np.testing.assert_array_equal(out, expected)
  as_float = imresize.imresize(image.astype(np.float64), output_shape=(4, 5))
  np.testing.assert_allclose(as_float, np.einsum('wj,hjc->hwc', cols, np.einsum('hi,ijc->hjc', rows, image)), atol=1e-9)
  assert np.abs(as_float - out).max() > 0  # The intermediate rounding is visible.


def test_scale_gives_matlab_output_sizes_and_keeps_batch_axes():
  image = np.full((2, 30, 17, 3), 200, np.uint8)
  out = imresize.imresize(image, 1 / 4)
  assert out.shape == (2, 8, 5, 3)  # ceil(30 / 4), ceil(17 / 4)
  assert np.all(out == 200)  # Normalised weights keep a flat image flat.
  with pytest.raises(ValueError, match='exactly one'):
    imresize.imresize(image)
