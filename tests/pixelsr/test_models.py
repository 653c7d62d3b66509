"""The prior is causal with no blind spot; shapes and parameters follow appendix A; the losses match hand values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.errors import UserError
from pixelsr import layers, losses, models

TINY = models.PixelSRConfig(
  cond_blocks=1,
  cond_channels=8,
  prior_channels=12,
  prior_layers=5,
  prior_kernel=5,
  prior_first_kernel=7,
  prior_head_channels=48,
  init='lecun_normal',
)


def prior_input_gradient(cfg: models.PixelSRConfig, size: int, i: int, j: int, c: int, seed: int = 0):
  """sum_b |d logits[b, i, j, c, :] . w / d y[b]| over 4 random images y and random weights w: (H, W, C).

  Summing over images keeps a ReLU that happens to be off for one image from hiding a real dependency.
  """
  prior = models.PixelCNNPrior(cfg)
  y = jax.random.uniform(jax.random.key(seed), (4, size, size, cfg.num_colours), minval=0, maxval=255)
  params = prior.init(jax.random.key(seed + 1), y)
  w = jax.random.normal(jax.random.key(seed + 2), (cfg.num_levels,))
  grad = jax.grad(lambda y: (prior.apply(params, y)[:, i, j, c] @ w).sum())(y)
  return np.abs(np.asarray(grad)).sum(axis=0)


def expected_dependencies(size: int, colours: int, i: int, j: int, c: int) -> np.ndarray:
  """True where sub-pixel (i, j, c) may depend: earlier pixels in raster order, and colours < c of its own pixel."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  earlier = (rows < i) | ((rows == i) & (cols < j))
  dep = np.repeat(earlier[..., None], colours, axis=-1)
  dep[i, j, :c] = True
  return dep


@pytest.mark.parametrize('i,j,c', [(0, 0, 0), (0, 0, 2), (3, 0, 1), (4, 5, 0), (7, 7, 2), (5, 7, 1), (2, 3, 2)])
def test_prior_receptive_field_is_causal_and_hole_free(i, j, c):
  # 5 gated layers of 5x5 after a 7x7 reach every earlier sub-pixel of an 8x8 image (the vertical stack widens by 2
  # columns a layer, so the row above is covered up to column j + 9): nothing earlier may be blind.
  grad = prior_input_gradient(TINY, 8, i, j, c)
  expected = expected_dependencies(8, 3, i, j, c)
  assert np.all(grad[~expected] == 0), f'sees the future at {np.argwhere(grad * ~expected > 0)[:5]}'
  assert np.all(grad[expected] > 0), f'blind to earlier sub-pixels at {np.argwhere((grad == 0) & expected)[:5]}'


def test_paper_size_prior_receptive_field():
  cfg = models.PixelSRConfig()  # appendix A: 7x7, 20 gated 5x5 layers of 64, 1x1 to 1024, 1x1 to 3x256.
  for i, j, c in [(16, 20, 1), (31, 0, 0)]:
    grad = prior_input_gradient(cfg, 32, i, j, c)
    expected = expected_dependencies(32, 3, i, j, c)
    assert np.all(grad[~expected] == 0)
    assert np.all(grad[expected] > 0)


def test_reach_is_limited_by_depth():
  # With one 3x3 gated layer after a 3x3 first layer, a pixel far to the left on the same row is out of reach.
  cfg = models.PixelSRConfig(
    prior_channels=6, prior_layers=1, prior_kernel=3, prior_first_kernel=3, prior_head_channels=6, init='lecun_normal'
  )
  grad = prior_input_gradient(cfg, 8, 4, 6, 0)
  assert grad[4, 5].sum() > 0 and grad[4, 4].sum() > 0  # 1 column from the 3x3 + 1 from the gated layer
  assert grad[4, 0:3].sum() == 0
  assert grad[3, 6:8].sum() > 0  # the row above, through the vertical stack


def test_channel_groups_split_uneven_widths():
  np.testing.assert_array_equal(layers.channel_groups(3, 3), [0, 1, 2])
  groups = layers.channel_groups(64, 3)
  assert list(np.bincount(groups)) == [22, 21, 21]
  np.testing.assert_array_equal(layers.channel_groups(768, 3), np.arange(768) // 256)
  gate_groups = layers.channel_groups(128, 3, num_chunks=2)
  np.testing.assert_array_equal(gate_groups[:64], gate_groups[64:])


def test_mask_a_and_b_of_the_current_pixel():
  groups = np.array([0, 1, 2])
  np.testing.assert_array_equal(layers.colour_mask(groups, groups, 'A'), [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(layers.colour_mask(groups, groups, 'B'), [[1, 1, 1], [0, 1, 1], [0, 0, 1]])


def test_paper_shapes_and_layers():
  for blocks in (6, 10):
    cfg = models.PixelSRConfig(cond_blocks=blocks)
    model = models.PixelRecursiveSR(cfg)
    lowres = jnp.zeros((2, 8, 8, 3), jnp.uint8)
    highres = jnp.zeros((2, 32, 32, 3), jnp.uint8)
    params = jax.eval_shape(model.init, jax.random.key(0), lowres, highres)
    cond, prior = jax.eval_shape(model.apply, params, lowres, highres)
    assert cond.shape == prior.shape == (2, 32, 32, 3, 256)
    cond_params, prior_params = params['params']['conditioning'], params['params']['prior']
    assert sum(k.startswith('stage') for k in cond_params) == 3 * blocks
    assert cond_params['upsample0']['kernel'].shape == (3, 3, 32, 32)
    assert cond_params['logits']['kernel'].shape == (32, 768)
    assert sum(k.startswith('gated') for k in prior_params) == 20
    assert prior_params['first']['vertical']['kernel'].shape == (3, 7, 3, 64)  # the 7x7's upper rows
    assert prior_params['first']['horizontal']['kernel'].shape == (1, 4, 3, 64)  # and its centre row
    assert prior_params['gated0']['vertical']['kernel'].shape == (3, 5, 64, 128)
    assert prior_params['gated0']['horizontal']['kernel'].shape == (1, 3, 64, 128)
    assert prior_params['head']['kernel'].shape == (1, 1, 64, 1024)
    assert prior_params['logits']['kernel'].shape == (1, 1, 1024, 768)


def test_truncated_normal_init_and_zero_bias():
  model = models.PixelRecursiveSR(models.PixelSRConfig(cond_blocks=1, prior_layers=1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  kernel = np.asarray(params['params']['prior']['head']['kernel'])
  assert abs(kernel.std() - 0.1 * 0.8796) < 0.003  # std of N(0, 0.1) truncated at 2 sigma
  assert np.abs(kernel).max() <= 0.2
  assert all(np.all(b == 0) for path, b in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == 'bias')


def test_per_pixel_model_has_no_prior():
  model = models.PixelRecursiveSR(models.PixelSRConfig(cond_blocks=1, use_prior=False))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  assert 'prior' not in params['params']
  _, prior = model.apply(params, jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  assert np.all(np.asarray(prior) == 0)


def lse(*xs):
  return math.log(sum(math.exp(x) for x in xs))


def test_losses_against_hand_computation():
  # Two examples of one sub-pixel each, K = 3; the second is eval padding (weight 0).
  cond = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 9.0]]).reshape(2, 1, 1, 1, 3)
  prior = jnp.array([[0.5, 0.0, -1.0], [0.0, 0.0, 0.0]]).reshape(2, 1, 1, 1, 3)
  labels = jnp.array([2, 0]).reshape(2, 1, 1, 1)
  weights = jnp.array([1.0, 0.0])
  ce_joint = lse(1.5, 2.0, 2.0) - 2.0
  ce_cond = lse(1.0, 2.0, 3.0) - 3.0
  o2, metrics = losses.loss_and_metrics(cond, prior, labels, 'O2', weights)
  # eq. 8 per sub-pixel: -(1[y]^T (2A + B) - lse(A + B) - lse(A))
  assert o2 == pytest.approx(-(2 * 3.0 - 1.0 - lse(1.5, 2.0, 2.0) - lse(1.0, 2.0, 3.0)), rel=1e-6)
  assert o2 == pytest.approx(ce_joint + ce_cond, rel=1e-6)
  assert metrics['ce_cond'] == pytest.approx(ce_cond, rel=1e-6)
  assert metrics['bits_per_dim'] == pytest.approx(ce_joint / math.log(2), rel=1e-6)
  o1, _ = losses.loss_and_metrics(cond, prior, labels, 'O1', weights)
  assert o1 == pytest.approx(ce_joint, rel=1e-6)
  # Unweighted: the second example (CE(A+B) = lse(0, 0, 9) - 0) counts half.
  o1_all, _ = losses.loss_and_metrics(cond, prior, labels, 'O1')
  assert o1_all == pytest.approx((ce_joint + lse(0.0, 0.0, 9.0)) / 2, rel=1e-6)


def test_loss_reduction_sum_is_eq_8_per_image():
  """reduction='sum': eq. 8 summed over each image's sub-pixels (here 2x1 pixels x 2 colours, K = 3), the images
  averaged; 'mean' divides it by the 4 sub-pixels. The per-sub-pixel metrics do not depend on it."""
  rng = np.random.default_rng(0)
  cond, prior = rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 2, 2, 3))  # (images, sub-pixels..., K) as numpy
  labels = rng.integers(0, 3, size=(2, 2, 2))
  eq8 = [
    -sum(
      2 * cond[b, i, c, labels[b, i, c]]
      + prior[b, i, c, labels[b, i, c]]
      - lse(*(cond[b, i, c] + prior[b, i, c]))
      - lse(*cond[b, i, c])
      for i in range(2)
      for c in range(2)
    )
    for b in range(2)
  ]
  shape = lambda x: jnp.asarray(x, jnp.float32).reshape(2, 2, 1, 2, *x.shape[3:])
  total, metrics = losses.loss_and_metrics(
    shape(cond), shape(prior), shape(labels).astype(jnp.int32), 'O2', reduction='sum'
  )
  assert total == pytest.approx(np.mean(eq8), rel=1e-5)
  mean, mean_metrics = losses.loss_and_metrics(shape(cond), shape(prior), shape(labels).astype(jnp.int32), 'O2')
  assert mean == pytest.approx(np.mean(eq8) / 4, rel=1e-5)
  assert float(metrics['O2']) == float(mean_metrics['O2']) == pytest.approx(float(mean), rel=1e-6)


def conv3x3(x, kernel, bias):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias


@pytest.mark.parametrize('preactivation', [False, True])
def test_resnet_block_by_hand(preactivation):
  """Post-activation: relu(x + conv2(relu(conv1(x)))); pre-activation: x + conv2(relu(conv1(relu(x)))), whose
  output keeps the stream's negative values."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  block = layers.ResNetBlock(4, preactivation=preactivation)
  p = block.init(jax.random.key(1), x)['params']
  p['conv2']['bias'] = jnp.full((4,), 0.3)
  first = jax.nn.relu(x) if preactivation else x
  y = conv3x3(
    jax.nn.relu(conv3x3(first, p['conv1']['kernel'], p['conv1']['bias'])), p['conv2']['kernel'], p['conv2']['bias']
  )
  want = x + y if preactivation else jax.nn.relu(x + y)
  got = block.apply({'params': p}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert (np.asarray(got) < 0).any() == preactivation


def test_pre_activation_trunk_ends_in_one_relu_and_no_relu_after_the_upsamplers():
  cfg = models.PixelSRConfig(
    cond_blocks=1,
    cond_channels=4,
    prior_layers=1,
    prior_channels=6,
    prior_head_channels=6,
    upsample_factor=2,
    cond_block='pre_activation',
  )
  model = models.PixelRecursiveSR(cfg)
  lowres = jax.random.randint(jax.random.key(0), (1, 4, 4, 3), 0, 256).astype(jnp.uint8)
  variables = model.init(jax.random.key(1), lowres, jnp.zeros((1, 8, 8, 3), jnp.uint8))
  _, stats = model.apply(variables, lowres, method='condition', mutable=['relu_stats'])
  sites = {f'{block}/{relu}' for block, relus in stats['relu_stats']['conditioning'].items() for relu in relus}
  assert sites == {
    'stage0_block0/pre',
    'stage0_block0/inner',
    'stage1_block0/pre',
    'stage1_block0/inner',
    'final_relu/active',
  }
  with pytest.raises(UserError, match="cond_block must be 'post_activation' or 'pre_activation'"):
    models.PixelSRConfig(cond_block='preact')
