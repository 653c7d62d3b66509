"""common.metrics against reference implementations: TensorFlow's tf.image and scikit-image."""

import jax
import numpy as np
import pytest
import skimage.color
import skimage.metrics
import tensorflow as tf

from common import images, metrics

# SSIM's windowed variances cancel in float32; TF does the same, skimage works in float64.
RTOL = 1e-4
SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


def image_pairs(shape=(5, 32, 32, 3), seed=0):
  """Pairs from identical to unrelated: truth, and truth plus growing noise (the last one independent)."""
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, 256, shape).astype(np.float32)
  noise = np.linspace(2, 80, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
  other = np.clip(np.round(truth + rng.normal(0, 1, shape) * noise), 0, 255).astype(np.float32)
  other[-1] = rng.integers(0, 256, shape[1:])
  return truth, other


def test_psnr_equals_tf_and_skimage():
  a, b = image_pairs()
  ours = np.asarray(metrics.psnr(a, b))
  np.testing.assert_allclose(ours, tf.image.psnr(a, b, 255.0).numpy(), rtol=RTOL)
  np.testing.assert_allclose(
    ours, [skimage.metrics.peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)], rtol=RTOL
  )
  # uint8 on 0..255 and floats on [0, 1] with max_val=1 are the same metric.
  np.testing.assert_allclose(metrics.psnr(a.astype(np.uint8), b.astype(np.uint8)), ours, rtol=RTOL)
  np.testing.assert_allclose(metrics.psnr(a / 255, b / 255, max_val=1.0), ours, rtol=RTOL)
  assert metrics.psnr(a[:1], a[:1])[0] == np.inf


def test_bounded_psnr_is_psnr_except_for_an_exact_match():
  a, b = image_pairs()
  np.testing.assert_allclose(metrics.bounded_psnr(a, b), metrics.psnr(a, b), rtol=1e-6)
  exact = float(metrics.bounded_psnr(a[:1], a[:1])[0])
  one_off = a[:1].copy()
  one_off[0, 5, 7, 1] += 1 if one_off[0, 5, 7, 1] < 255 else -1
  assert exact == pytest.approx(10 * np.log10(255.0**2 * 32 * 32 * 3), rel=1e-6)  # 83.0 dB
  assert exact == pytest.approx(float(metrics.psnr(a[:1], one_off)[0]), rel=1e-6)


def test_ssim_equals_tf_and_skimage():
  a, b = image_pairs()
  ours = np.asarray(metrics.ssim(a, b))
  assert ours[0] > 0.9 and abs(ours[-1]) < 0.05  # The pairs span the range.
  np.testing.assert_allclose(ours, tf.image.ssim(a, b, 255.0).numpy(), rtol=RTOL, atol=1e-6)
  reference = [skimage.metrics.structural_similarity(x, y, channel_axis=-1, **SKIMAGE_SSIM) for x, y in zip(a, b)]
  np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(a / 255, b / 255, max_val=1.0), ours, rtol=RTOL, atol=1e-6)
  assert metrics.ssim(a[:1], a[:1])[0] == pytest.approx(1.0, abs=1e-6)


def test_ssim_other_window_and_batch_shape_equal_tf():
  a, b = image_pairs((2, 3, 20, 27, 3), seed=1)
  ours = metrics.ssim(a, b, filter_size=5, filter_sigma=1.0, k1=0.02, k2=0.05)
  assert ours.shape == (2, 3)
  reference = tf.image.ssim(a, b, 255.0, filter_size=5, filter_sigma=1.0, k1=0.02, k2=0.05).numpy()
  np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=1e-6)


def test_ms_ssim_at_32x32_equals_tf_with_the_same_settings():
  a, b = image_pairs()
  ours = np.asarray(metrics.ms_ssim(a, b))
  assert pytest.approx((0.0448 / 0.6305, 0.2856 / 0.6305, 0.3001 / 0.6305)) == metrics.MS_SSIM_POWER_FACTORS
  reference = tf.image.ssim_multiscale(
    a, b, 255.0, power_factors=metrics.MS_SSIM_POWER_FACTORS, filter_size=metrics.MS_SSIM_FILTER_SIZE, filter_sigma=1.5
  ).numpy()
  np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=1e-6)
  assert ours[0] > 0.9 and np.all(np.diff(ours) < 0)


@pytest.mark.parametrize(
  'shape, kwargs',
  [
    ((2, 176, 176, 3), {'power_factors': (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 'filter_size': 11}),  # TF default
    ((2, 37, 45, 1), {'power_factors': (0.5, 0.5), 'filter_size': 5, 'filter_sigma': 1.0}),  # odd sides: padding
  ],
)
def test_ms_ssim_other_settings_equal_tf(shape, kwargs):
  a, b = image_pairs(shape, seed=2)
  reference = tf.image.ssim_multiscale(a, b, 255.0, **kwargs).numpy()
  np.testing.assert_allclose(metrics.ms_ssim(a, b, **kwargs), reference, rtol=RTOL, atol=1e-6)


def test_luminance_is_bt601_as_skimage_and_matlab():
  a, _ = image_pairs()
  reference = skimage.color.rgb2ycbcr(a / 255.0)[..., :1]
  np.testing.assert_allclose(metrics.luminance(a), reference, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(metrics.luminance(a / 255.0, max_val=1.0), reference / 255.0, rtol=1e-6, atol=1e-6)
  # MATLAB's rgb2ycbcr: white -> 235, black -> 16.
  np.testing.assert_allclose(
    metrics.luminance(np.array([[[[255.0, 255, 255], [0, 0, 0]]]]))[..., 0], [[[235, 16]]], atol=1e-3
  )


def test_psnr_y_and_ssim_y_equal_skimage_on_ycbcr():
  a, b = image_pairs()
  ya, yb = (skimage.color.rgb2ycbcr(x / 255.0)[..., 0] for x in (a, b))
  np.testing.assert_allclose(
    metrics.psnr_y(a, b),
    [skimage.metrics.peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(ya, yb)],
    rtol=RTOL,
  )
  np.testing.assert_allclose(
    metrics.ssim_y(a, b),
    [skimage.metrics.structural_similarity(x, y, **SKIMAGE_SSIM) for x, y in zip(ya, yb)],
    rtol=RTOL,
    atol=1e-6,
  )


def test_consistency():
  # Constant images resize to themselves exactly: the score is the squared difference of the levels on [0, 1].
  lowres = np.full((2, 8, 8, 3), 100, np.uint8)
  highres = np.stack([np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 151, np.uint8)])
  np.testing.assert_allclose(metrics.consistency(lowres, highres), [0.0, (51 / 255) ** 2], rtol=1e-6)
  # An output whose downsample is the input is perfectly consistent, under either operator.
  output = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  for method in images.RESIZE_METHODS:
    own_input = images.downsample(output, 8, method=method)
    np.testing.assert_array_equal(metrics.consistency(own_input, output, method=method), 0.0)
  # Against TF's resize (rounding may flip a few levels where TF and JAX differ by float noise at a .5).
  lowres = np.random.default_rng(4).integers(0, 256, (3, 8, 8, 3)).astype(np.float32)
  down = np.clip(np.round(tf.image.resize(output.astype(np.float32), (8, 8), 'bicubic', antialias=True)), 0, 255)
  reference = np.mean(((lowres - down) / 255) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.consistency(lowres, output), reference, rtol=1e-3)


def test_diversity_is_the_mean_std_across_samples():
  samples = np.random.default_rng(5).integers(0, 256, (2 * 4, 6, 5, 3)).astype(np.uint8)
  reference = samples.reshape(2, 4, 6, 5, 3).astype(np.float64).std(axis=1).mean(axis=(1, 2, 3)) / 255
  np.testing.assert_allclose(metrics.diversity(samples, 4), reference, rtol=1e-5)
  np.testing.assert_array_equal(metrics.diversity(np.repeat(samples[:2], 3, axis=0), 3), 0.0)


def test_metrics_jit_and_match_eager():
  a, b = image_pairs((3, 32, 32, 3))
  lowres = np.asarray(images.downsample(a, 8))

  def all_metrics(a, b, lowres):
    return [
      metrics.psnr(a, b),
      metrics.ssim(a, b),
      metrics.ms_ssim(a, b),
      metrics.psnr_y(a, b),
      metrics.ssim_y(a, b),
      metrics.consistency(lowres, b),
      metrics.diversity(b, 3),
    ]

  for jitted, eager in zip(jax.jit(all_metrics)(a, b, lowres), all_metrics(a, b, lowres)):
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
