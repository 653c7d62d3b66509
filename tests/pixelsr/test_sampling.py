"""The cached sampler draws exactly what the naive one draws; temperature, greedy decoding and log p(y | x)."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from common.errors import UserError
from pixelsr import cached_prior, fused_pixel, losses, models, sampling
from tests.helpers import REPO
from tests.helpers import make_sampler_model as make_model


def redrawn(model, variables, lowres, y, key, temperature):
  """What the naive sampler draws at every sub-pixel when the sub-pixels before it are those of y.

  The naive sampler's draw i is a function of y_<i and the key only, so y equals this everywhere exactly when y is
  the naive sampler's output for `key` (induction over i): one forward pass checks a whole image."""
  cond, prior = model.apply(variables, lowres, y)
  rows, height, width, colours, levels = cond.shape
  keys = jax.random.split(key, rows)
  tau, greedy = sampling._check_temperature(temperature)
  draw = lambda logits, i: sampling._draw(keys, logits, i, jnp.float32(tau), greedy)
  flat = (cond + prior).reshape(rows, -1, levels)
  return jax.vmap(draw, in_axes=(1, 0), out_axes=1)(flat, jnp.arange(flat.shape[1])).reshape(y.shape)


@pytest.mark.parametrize('temperature', [1.0, 1.3, float('inf')])
def test_cached_equals_naive_on_a_small_model(temperature):
  model, variables, lowres = make_model()  # 8 x 12 outputs: rows and columns differ
  key = jax.random.key(7)
  fast = sampling.sample(model, variables, lowres, key, temperature, num_samples=2)
  naive = sampling.sample_naive(model, variables, lowres, key, temperature, num_samples=2)
  assert fast.shape == (4, 8, 12, 3) and fast.dtype == jnp.uint8
  np.testing.assert_array_equal(fast, naive)
  assert len(np.unique(fast)) > (20 if temperature < 10 else 1)  # not a constant image
  if temperature < 10:  # different samples of one input
    assert (fast[0] != fast[1]).mean() > 0.5


def test_cached_sampler_in_bfloat16_draws_what_the_bfloat16_network_draws():
  """config.model.dtype='bfloat16': the cached sampler mirrors the mixed precision (bf16 matmuls and convolutions,
  the horizontal stream summed in float32), so its draws are the full bf16 network's up to bf16 rounding in the
  order of the sums (on the CPU that wrote this, all 1152 sub-pixels; another CPU may round some near-ties apart)."""
  model, variables, lowres = make_model(batch=4, dtype='bfloat16')
  key = jax.random.key(7)
  y = sampling.sample(model, variables, lowres, key, 1.0)
  assert (np.asarray(redrawn(model, variables, lowres, y, key, 1.0)) == np.asarray(y)).mean() > 0.95
  assert len(np.unique(y)) > 20


def test_cached_equals_naive_with_one_colour_and_other_kernels():
  model, variables, lowres = make_model(
    lowres_hw=(3, 2), num_colours=1, prior_kernel=3, prior_first_kernel=3, upsample_factor=2
  )
  key = jax.random.key(3)
  np.testing.assert_array_equal(
    sampling.sample(model, variables, lowres, key, 1.0), sampling.sample_naive(model, variables, lowres, key, 1.0)
  )


def test_per_pixel_model_samples_equal_naive():
  model, variables, lowres = make_model(use_prior=False)
  key = jax.random.key(5)
  np.testing.assert_array_equal(
    sampling.sample(model, variables, lowres, key, 1.1, num_samples=3),
    sampling.sample_naive(model, variables, lowres, key, 1.1, num_samples=3),
  )


def paper_size_model(**fields):
  """Appendix A's model (20 gated layers of 64, head 1024, 3 x 256 logits), its init and one 8x8 input."""
  model = models.PixelRecursiveSR(models.PixelSRConfig(**fields))
  lowres = jax.random.randint(jax.random.key(1), (1, 8, 8, 3), 0, 256).astype(jnp.uint8)
  return model, model.init(jax.random.key(0), lowres, jnp.zeros((1, 32, 32, 3), jnp.uint8)), lowres


@pytest.mark.parametrize('temperature', [1.0, float('inf')])
def test_paper_size_model_samples_are_the_naive_samples(temperature):
  model, variables, lowres = paper_size_model()
  key = jax.random.key(2)
  y = sampling.sample(model, variables, lowres, key, temperature)
  np.testing.assert_array_equal(y, redrawn(model, variables, lowres, y, key, temperature))
  # And directly against the naive sampler over the first pixels of row 0.
  prefix = 24
  naive = sampling.sample_naive(model, variables, lowres, key, temperature, num_subpixels=prefix)
  np.testing.assert_array_equal(np.asarray(y).reshape(-1)[:prefix], np.asarray(naive).reshape(-1)[:prefix])
  assert len(np.unique(y)) > 5


def test_pallas_colour_passes_sample_what_the_naive_sampler_samples():
  """config.model.pixel_kernel='pallas' (interpreted here): 18 rows, so two programs of the kernel's row blocks,
  and channel counts (12, head 24) that the kernel pads to powers of two."""
  model, variables, lowres = make_model(batch=9, pixel_kernel='pallas')
  key = jax.random.key(7)
  fast = sampling.sample(model, variables, lowres, key, 1.0, num_samples=2)
  np.testing.assert_array_equal(fast, sampling.sample_naive(model, variables, lowres, key, 1.0, num_samples=2))
  model, variables, lowres = make_model(
    lowres_hw=(3, 2), num_colours=1, prior_kernel=3, prior_first_kernel=3, upsample_factor=2, pixel_kernel='pallas'
  )
  np.testing.assert_array_equal(
    sampling.sample(model, variables, lowres, key, 1.0), sampling.sample_naive(model, variables, lowres, key, 1.0)
  )


def test_pallas_colour_passes_at_the_paper_size():
  model, variables, lowres = paper_size_model(pixel_kernel='pallas')
  key = jax.random.key(2)
  y = sampling.sample(model, variables, lowres, key, 1.0)
  np.testing.assert_array_equal(y, redrawn(model, variables, lowres, y, key, 1.0))
  assert len(np.unique(y)) > 5


def test_pallas_colour_pass_lowers_to_one_triton_kernel_for_cuda(monkeypatch):
  """What a CPU can check of the GPU path: the kernel lowers through Pallas' Triton backend (powers of two, the ops
  it supports) into one custom call per colour pass, at the paper's sizes (64 channels, head 1024 -> 3 x 256)."""
  model, variables, _ = paper_size_model()
  cached = cached_prior.CachedPrior(variables['params']['prior'], model.cfg)
  weights = fused_pixel.prepare(**cached.by_colour[2])
  f = jax.jit(lambda h, start: fused_pixel.colour_pass(h, start, weights, interpret=False))
  exported = export.export(
    f, platforms=['cuda'], disabled_checks=[export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')]
  )(jnp.zeros((1, 64)), jnp.zeros((20, 1, 128)))
  module = exported.mlir_module()
  assert module.count('stablehlo.custom_call @__gpu$xla.gpu.triton') == 1
  assert '(tensor<16x64xf32>, tensor<32x16x64xf32>, tensor<32x16x64xf32>, tensor<32x64x64xf32>' in module
  assert '-> (tensor<16x256xf32>, tensor<32x16x64xf32>)' in module
  with pytest.raises(UserError, match='float32 only'):
    models.PixelSRConfig(pixel_kernel='pallas', dtype='bfloat16')
  with monkeypatch.context() as m:
    m.setattr(jax, 'default_backend', lambda: 'tpu')
    with pytest.raises(ValueError, match="Triton kernel for GPUs .* not for tpu: use pixel_kernel='xla'"):
      fused_pixel.colour_pass(jnp.zeros((1, 64)), jnp.zeros((20, 1, 128)), weights)


def test_temperature_multiplies_the_logits():
  # A per-pixel model with 4 levels: every sub-pixel is an independent draw from softmax(tau * A).
  model, variables, lowres = make_model(
    lowres_hw=(1, 1),
    batch=1,
    use_prior=False,
    num_levels=4,
    upsample_factor=2,
    init='truncated_normal',
    init_stddev=0.5,
  )
  logits = np.asarray(model.apply(variables, lowres, method='condition'))[0]  # (2, 2, 3, 4)
  n = 4000
  for tau in (0.5, 2.0):
    y = np.asarray(sampling.sample(model, variables, lowres, jax.random.key(11), tau, num_samples=n))
    freq = (y[..., None] == np.arange(4)).mean(axis=0)
    p = np.exp(tau * logits - (tau * logits).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / n))
  greedy = sampling.sample(model, variables, lowres, jax.random.key(0), float('inf'))
  np.testing.assert_array_equal(greedy[0], logits.argmax(-1))


def test_bad_temperature_is_refused():
  model, variables, lowres = make_model()
  for tau in (0.0, -1.0, float('nan')):
    with pytest.raises(ValueError, match='temperature must be > 0'):
      sampling.sample(model, variables, lowres, jax.random.key(0), tau)


def test_log_prob_is_the_sum_of_log_softmax():
  model, variables, lowres = make_model()
  y = jax.random.randint(jax.random.key(9), (2, 8, 12, 3), 0, 256).astype(jnp.uint8)
  lp = np.asarray(sampling.log_prob(model, variables, lowres, y))
  cond, prior = (np.asarray(a, np.float64) for a in model.apply(variables, lowres, y))
  z = cond + prior
  log_softmax = z - z.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  by_hand = np.take_along_axis(log_softmax, np.asarray(y)[..., None].astype(int), -1).sum(axis=(1, 2, 3, 4))
  np.testing.assert_allclose(lp, by_hand, rtol=1e-5)
  # The training loss is its negative mean per sub-pixel; bits/dim converts it.
  ce = np.asarray(losses.per_example_losses(*model.apply(variables, lowres, y), y)['ce_joint'])
  np.testing.assert_allclose(-lp / (8 * 12 * 3), ce, rtol=1e-5)
  np.testing.assert_allclose(sampling.bits_per_dim(lp, (8, 12, 3)), ce / np.log(2), rtol=1e-5)


def test_greedy_sample_is_the_argmax_of_every_conditional():
  model, variables, lowres = make_model()
  y = sampling.sample(model, variables, lowres, jax.random.key(0), float('inf'))
  cond, prior = model.apply(variables, lowres, y)
  np.testing.assert_array_equal(y, jnp.argmax(cond + prior, -1))


@pytest.mark.slow
def test_sharded_batch_samples_per_device_and_match_one_device():
  script = textwrap.dedent("""
      import os, re
      os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
      import jax, jax.numpy as jnp, numpy as np
      from common import sharding
      from pixelsr import sampling
      from tests.helpers import make_sampler_model as make_model
      model, variables, lowres = make_model(batch=4)
      mesh = sharding.data_mesh()
      sharded = jax.device_put(lowres, sharding.batch_sharding(mesh))
      one = sampling.sample(model, variables, lowres, jax.random.key(4), 1.0, num_samples=2)
      many = sampling.sample(model, variables, sharded, jax.random.key(4), 1.0, num_samples=2)
      np.testing.assert_array_equal(one, many)
      assert many.sharding.spec == jax.sharding.PartitionSpec('data'), many.sharding
      hlo = sampling._sample_cached.lower(model, variables, sharded, jax.random.key(4), jnp.float32(1.0),
                                          greedy=False, num_samples=2).compile().as_text()
      assert not re.search('all-gather|all-reduce|all-to-all|collective-permute', hlo)  # no device waits
      print('OK')
      """)
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.stdout.strip().endswith('OK'), out.stderr[-3000:]
