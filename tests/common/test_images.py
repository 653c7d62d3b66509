"""Tests for common.images: TF-equal resizes, quantization, grids and image files."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common import images


def _random_images(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@pytest.mark.parametrize(
  'shape, size',
  [((2, 32, 32, 3), (8, 8)), ((2, 37, 53, 3), (32, 32)), ((1, 8, 8, 3), (32, 32)), ((1, 13, 20, 3), (30, 7))],
)
@pytest.mark.parametrize('antialias', [True, False])
def test_resize_equals_tf_bicubic(shape, size, antialias):
  x = _random_images(shape)
  expected = tf.image.resize(x, size, 'bicubic', antialias=antialias).numpy()
  method = 'antialiased' if antialias else 'no_antialias'
  np.testing.assert_allclose(images.resize(x, size, method=method), expected, atol=1e-3)


@pytest.mark.parametrize(
  'shape, size',
  [
    ((2, 32, 32, 3), (8, 8)),
    ((2, 8, 8, 3), (32, 32)),
    ((1, 17, 23, 3), (8, 5)),
    ((1, 5, 7, 3), (13, 11)),
    ((2, 30, 40, 3), (7, 9)),
    ((1, 9, 9, 3), (10, 29)),
  ],
)
def test_tf1_resize_equals_tf_compat_v1_resize_bicubic(shape, size):
  x = _random_images(shape, seed=sum(shape))
  expected = tf.compat.v1.image.resize_bicubic(x, size, align_corners=False, half_pixel_centers=False).numpy()
  np.testing.assert_allclose(images.resize(x, size, method='tf1'), expected, rtol=0, atol=1e-4)  # On 0..255.
  # A different operator from TF2's: no half-pixel centres and a = -0.75 move every value.
  assert np.abs(np.asarray(images.resize(x, size, method='no_antialias')) - expected).mean() > 1.0


def test_tf1_downsampling_by_an_integer_factor_takes_every_fth_pixel():
  x = _random_images((32, 32, 3))
  np.testing.assert_array_equal(images.resize(x, 8, method='tf1'), x[::4, ::4])
  with pytest.raises(ValueError, match='method must be one of'):
    images.resize(x, 8, method='bilinear')


def test_resize_single_image_and_antialias_matters():
  x = _random_images((32, 32, 3))
  smooth = np.asarray(images.resize(x, 8))
  assert smooth.shape == (8, 8, 3)
  np.testing.assert_allclose(smooth, images.resize(x[None], (8, 8))[0], atol=1e-4)
  # On noise, the antialiased kernel averages 4x4 blocks; the plain one samples 2 of 4 pixels.
  assert np.std(smooth) < 0.7 * np.std(np.asarray(images.resize(x, 8, method='no_antialias')))


def test_quantize_rounds_half_to_even_and_clips():
  x = np.array([254.6, -3.0, 300.0, 0.4, 2.5, 3.5, 127.5, 0.5])
  np.testing.assert_array_equal(images.quantize(x), [255, 0, 255, 0, 2, 4, 128, 0])
  assert images.quantize(x).dtype == np.uint8


def test_signed_range_round_trips():
  levels = np.arange(256, dtype=np.uint8)
  signed = np.asarray(images.uint8_to_signed(levels))
  assert signed[0] == -1.0 and signed[-1] == 1.0
  np.testing.assert_array_equal(images.signed_to_uint8(signed), levels)


def test_downsample_and_bicubic_upsample():
  highres = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  lowres = np.asarray(images.downsample(highres, 8))
  expected = np.clip(np.round(tf.image.resize(highres.astype(np.float32), (8, 8), 'bicubic', antialias=True)), 0, 255)
  assert lowres.dtype == np.uint8
  # Rounding may flip where TF and JAX differ by float noise around a .5.
  assert np.abs(lowres.astype(int) - expected).max() <= 1
  assert np.mean(lowres == expected) > 0.99
  checkerboard = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
  up = np.asarray(images.bicubic_upsample(checkerboard, (32, 32)))
  assert up.shape == (32, 32, 3) and up.min() == 0.0 and up.max() == 255.0  # Overshoot clipped.
  np.testing.assert_allclose(images.bicubic_upsample(np.full((8, 8, 3), 77, np.uint8), 32), 77.0, atol=1e-3)


def test_make_grid_layout():
  lowres = np.zeros((2, 8, 8, 3), np.uint8)
  lowres[1, 3, 5] = (10, 20, 30)
  sample = np.zeros((2, 32, 32, 3), np.uint8)
  sample[0, 10, 20] = (40, 50, 60)
  grid = images.make_grid([lowres, sample], padding=2)
  assert grid.shape == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2, 3) and grid.dtype == np.uint8
  # Row 1, column 0: the low-res pixel (3, 5) is enlarged 4x by nearest neighbour.
  top, left = 2 + 34 + 3 * 4, 2 + 5 * 4
  np.testing.assert_array_equal(grid[top : top + 4, left : left + 4], np.broadcast_to([10, 20, 30], (4, 4, 3)))
  assert grid[top - 1, left].tolist() == [0, 0, 0] and grid[top + 4, left].tolist() == [0, 0, 0]
  np.testing.assert_array_equal(grid[2 + 10, 2 + 34 + 20], [40, 50, 60])  # Row 0, column 1.
  assert (grid[:2] == 255).all() and (grid[:, 34:36] == 255).all()  # Padding.


def test_make_grid_rejects_mismatched_counts():
  with pytest.raises(ValueError, match='same N'):
    images.make_grid([np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8)])


def test_save_png_round_trips_and_leaves_no_temporary(tmp_path):
  image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = tmp_path / 'sub' / 'grid.png'
  images.save_png(path, image)
  np.testing.assert_array_equal(images.load_image(path), image)
  assert os.listdir(tmp_path / 'sub') == ['grid.png']


def test_load_image_modes(tmp_path):
  rgb = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
  Image.fromarray(rgb, 'RGB').save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'rgb.png'), rgb)

  rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  # Opaque keeps its colour, transparent becomes white, half-transparent black is grey.
  loaded = images.load_image(tmp_path / 'rgba.png').astype(int)
  np.testing.assert_array_equal(loaded[0, :2], [[10, 20, 30], [255, 255, 255]])
  assert np.abs(loaded[0, 2] - 127).max() <= 1

  grey = np.array([[0, 90, 255]], np.uint8)
  Image.fromarray(grey, 'L').save(tmp_path / 'l.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'l.png'), np.repeat(grey[..., None], 3, -1))

  palette = Image.new('P', (2, 1))
  palette.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (768 - 9))
  palette.putdata([2, 1])
  palette.save(tmp_path / 'p.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'p.png'), [[[0, 128, 255], [255, 0, 0]]])

  deep = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
  assert deep.mode == 'I;16'
  deep.save(tmp_path / 'i16.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'i16.png'), [[[0] * 3, [100] * 3, [255] * 3]])


def test_load_image_errors_name_the_file(tmp_path):
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  with pytest.raises(images.ImageError, match='notes.png'):
    images.load_image(text)
  Image.new('RGB', (64, 64), 'red').save(tmp_path / 'whole.png')
  (tmp_path / 'cut.png').write_bytes((tmp_path / 'whole.png').read_bytes()[:60])
  with pytest.raises(images.ImageError, match='cut.png'):
    images.load_image(tmp_path / 'cut.png')
  with pytest.raises(FileNotFoundError):
    images.load_image(tmp_path / 'missing.png')


def test_a_huge_image_is_read_reduced_or_refused_never_at_full_size(tmp_path):
  image = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / 'big.jpg', quality=95)
  Image.fromarray(image).save(tmp_path / 'big.png')
  np.testing.assert_array_equal(images.load_image(tmp_path / 'big.jpg'), np.asarray(Image.open(tmp_path / 'big.jpg')))
  # Over the limit, a JPEG is decoded by its DCT at the first of 1/2, 1/4, 1/8 that fits: PIL's draft mode.
  for limit, factor in ((40_000, 2), (10_000, 4), (2_000, 8)):
    with Image.open(tmp_path / 'big.jpg') as reference:
      reference.draft('RGB', (400 // factor, 300 // factor))
      expected = np.asarray(reference.convert('RGB'))
    reduced = images.load_image(tmp_path / 'big.jpg', max_pixels=limit)
    assert reduced.shape == (-(-300 // factor), 400 // factor, 3)
    np.testing.assert_array_equal(reduced, expected)
  with pytest.raises(images.ImageError, match=r"big.jpg' is 400x300 \(0.12 MP\), over the 0.001 MP .* Downscale"):
    images.load_image(tmp_path / 'big.jpg', max_pixels=1_000)  # Not even 1/8 fits.
  with pytest.raises(images.ImageError, match=r"big.png' is 400x300 \(0.12 MP\), over the 0.1 MP"):
    images.load_image(tmp_path / 'big.png', max_pixels=100_000)  # Other formats cannot be decoded reduced.
