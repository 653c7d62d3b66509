"""Whole images in tiles (imle/whole_image.py): with the receptive radius as overlap, the stitched output of an
odd-sized image equals the untiled network's, bit for bit; with less, it does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imle import models, srgan_models, whole_image

LOWRES = np.random.default_rng(0).integers(0, 256, (23, 17, 3), dtype=np.uint8)  # odd, non-square, not tile-sized


def srim_setup():
  cfg = models.SRIMConfig(num_convs=3, channels=8, kernel_size=3)
  model = models.SRIM(cfg)
  shapes = [(1, 23 * 2 ** (s + 1), 17 * 2 ** (s + 1), cfg.noise_channels) for s in range(cfg.num_stages)]
  variables = model.init(jax.random.key(0), jnp.zeros((1, 23, 17, 3)), [jnp.zeros(s) for s in shapes])
  return cfg, whole_image.srim_tile_fn(model, variables), whole_image.srim_noises(cfg, jax.random.key(1))


def srgan_setup():
  cfg = srgan_models.SRGANConfig(generator_blocks=2, generator_channels=8)
  model = srgan_models.Generator(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 23, 17, 3)))
  return cfg, whole_image.srgan_tile_fn(model, variables), lambda *window: ()


def test_receptive_radii_by_hand():
  # SRIM, paper sizes: stage 1 reaches 9 convs x 2 px at x2 = 9 low-res px + 1 (bilinear); stage 2 4.5 + 0.5.
  assert whole_image.srim_receptive_radius(models.SRIMConfig()) == 15
  # SRResNet: 4 (9x9) + 16 x 2 + 1 (trunk) + 1 + 0.5 (upsamplers' 3x3 at x1, x2) + 1 (9x9 at x4) = 39.5.
  assert whole_image.srgan_receptive_radius(srgan_models.SRGANConfig()) == 40


@pytest.mark.parametrize('setup, tile', [(srim_setup, 6), (srgan_setup, 7)])
def test_tiles_with_the_receptive_radius_equal_the_untiled_output(setup, tile):
  cfg, fn, noises = setup()
  radius = (whole_image.srim_receptive_radius if setup is srim_setup else whole_image.srgan_receptive_radius)(cfg)
  untiled = np.asarray(fn(jnp.asarray(LOWRES[None]), [jnp.asarray(n[None]) for n in noises(0, 23, 0, 17)]))[0]
  assert untiled.shape == (92, 68, 3)
  tiled = whole_image.super_resolve(fn, LOWRES, 4, tile=tile, overlap=radius, noises=noises)
  np.testing.assert_array_equal(tiled, untiled)
  # Too little context changes the pixels near the tiles' seams: the overlap is what makes it exact.
  assert np.any(whole_image.super_resolve(fn, LOWRES, 4, tile=tile, overlap=radius - 3, noises=noises) != untiled)


def test_noise_is_one_field_whatever_the_window():
  """A pixel's noise depends on its position alone: any window of the field is the same slice of one big draw, across
  the blocks it is drawn in, and stage 2's field is not stage 1's."""
  cfg, _, noises = srim_setup()
  whole = noises(0, 23, 0, 17)
  assert [n.shape for n in whole] == [(46, 34, 5), (92, 68, 5)]
  window = noises(5, 19, 3, 11)  # low-res rows 5..18, columns 3..10: crosses block edges at both stages
  np.testing.assert_array_equal(window[0], whole[0][10:38, 6:22])
  np.testing.assert_array_equal(window[1], whole[1][20:76, 12:44])
  assert abs(float(whole[1].std()) - 1.0) < 0.05 and not np.array_equal(whole[0], whole[1][:46, :34])
  block = whole_image.NOISE_BLOCK
  first = np.asarray(
    jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 1), 0), 1), (block, block, 5)
    )
  )
  np.testing.assert_array_equal(whole[1][:block, block : 2 * block], first)  # stage 2, block (0, 1)
