"""Whole images through the pixel recursive model (pixelsr/whole_image.py, launch/sample.py --whole_image): the cached
sampler is exact on a non-square output of any size, and the command estimates the time, refuses what is too large
in one line, and writes the sampler's draws."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from pixelsr import models, sampling, train, whole_image
from tests.helpers import sample_cli as cli
from tests.helpers import tiny_config

TINY = dict(
  cond_blocks=1, cond_channels=8, prior_layers=2, prior_channels=12, prior_head_channels=24, init='lecun_normal'
)


def test_cached_sampler_equals_naive_on_a_non_square_image_of_another_size():
  """A model built for 8x8 -> 32x32 applied to a 3x5 input: a 12x20 output, each sub-pixel as the naive sampler."""
  cfg = models.PixelSRConfig(**TINY)
  model = models.PixelRecursiveSR(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  lowres = jax.random.randint(jax.random.key(1), (1, 3, 5, 3), 0, 256).astype(jnp.uint8)
  key = jax.random.key(2)
  fast = sampling.sample(model, variables, lowres, key, 1.0, num_samples=2)
  assert fast.shape == (2, 12, 20, 3)
  np.testing.assert_array_equal(fast, sampling.sample_naive(model, variables, lowres, key, 1.0, num_samples=2))
  assert (np.asarray(fast[0]) != np.asarray(fast[1])).mean() > 0.5  # two different samples, not a constant image


def test_the_estimate_scales_with_the_output_pixels():
  cfg = models.PixelSRConfig(**TINY)
  model = models.PixelRecursiveSR(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  timing = whole_image.time_per_pixel(model, variables, np.zeros((3, 5, 3), np.uint8), 1.0, 2, jax.random.key(0))
  assert timing.seconds_per_pixel > 0 and timing.compile_seconds >= 0
  small, large = (whole_image.estimate(cfg, timing, h, w) - timing.compile_seconds for h, w in ((3, 5), (30, 50)))
  assert large == pytest.approx(100 * small) and small == pytest.approx(240 * timing.seconds_per_pixel)
  assert whole_image.output_size(cfg, 3, 5) == (12, 20)
  assert [whole_image.duration(s) for s in (44.6, 600, 3 * 3600)] == ['45 s', '10 min', '3.0 h']


@pytest.mark.slow
def test_whole_image_draws_the_cached_samplers_output_at_the_inputs_own_size(run_dir, tmp_path):
  photo = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)  # 5 wide, 3 high
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  out = tmp_path / 'out'
  result = cli(
    f'--workdir={run_dir}',
    f'--input={tmp_path / "photo.png"}',
    f'--output={out}',
    '--whole_image',
    '--num_samples=2',
    '--temperature=1.0,inf',
    '--seed=3',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ms per output pixel (2 samples side by side)' in result.stdout
  assert (
    'photo.png: 5x3 -> 20x12: 720 sub-pixels drawn one after another (2 samples side by side, 2 '
    'temperature(s)), estimated '
  ) in result.stdout
  assert sorted(os.listdir(out)) == [f'photo_x4_tau{t}_{k}.png' for t in ('1', 'inf') for k in (0, 1)]
  model, variables = train.restore(tiny_config(), run_dir)
  for t, tau in enumerate((1.0, float('inf'))):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), t)
    expected = np.asarray(sampling.sample(model, variables, photo[None], key, tau, 2))
    for k in range(2):
      np.testing.assert_array_equal(np.asarray(Image.open(out / f'photo_x4_tau{tau:g}_{k}.png')), expected[k])


@pytest.mark.slow
def test_an_image_over_max_pixels_is_refused_in_one_line_with_the_figures(run_dir, tmp_path):
  Image.new('RGB', (5, 3), (10, 200, 30)).save(tmp_path / 'a_small.png')
  Image.new('RGB', (30, 20), (10, 200, 30)).save(tmp_path / 'b_large.png')  # the second input: checked before any draw
  out = tmp_path.parent / f'{tmp_path.name}_out'
  result = cli(f'--workdir={run_dir}', f'--input={tmp_path}', f'--output={out}', '--whole_image', '--max_pixels=9000')
  assert result.returncode == 1
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(
    f'error: {tmp_path / "b_large.png"}: 30x20 -> 120x80: 28,800 sub-pixels drawn one after '
    'another (4 samples side by side, 1 temperature(s)), estimated '
  )
  assert error.endswith(
    '; its 9,600 output pixels are over --max_pixels=9,000. Pass a smaller image, or a larger '
    '--max_pixels to draw it anyway.'
  )
  assert 'Traceback' not in result.stderr and not out.exists()  # nothing drawn, nothing written
