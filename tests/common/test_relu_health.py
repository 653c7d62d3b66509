"""Dead ReLU channels (common/relu_health.py) on a conditioning network whose dead units are known by construction,
through the pixel recursive eval step, padding excluded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import relu_health, sharding, trainer
from pixelsr import models
from pixelsr import train as pixelsr_train

C = 4  # Conditioning channels.


def constructed_model():
  """A conditioning network with zero kernels but for the ones set here, so every ReLU's input is known:
  - stem channel 0 = the input's red value (on [-1, 1]), the other stem channels 0;
  - stage0_block0 inner = relu(stem + b1) with b1 = (-0.5, 1, -1, 1): channel 0 fires only where red > 0.5,
    channel 2 never;
  - stage0_block0 out = relu(stem + b2) with b2 = (0, 0, 0, -3): channel 0 fires where red > 0, channel 3 never
    (stem <= 1); channels 1 and 2 are 0 + 0 = 0, which is not positive: dead too;
  - every other site: kernels 0, biases 1 (all alive)."""
  cfg = models.PixelSRConfig(
    cond_blocks=1, cond_channels=C, prior_layers=1, prior_channels=6, prior_head_channels=6, upsample_factor=2
  )
  model = models.PixelRecursiveSR(cfg)
  lowres, highres = jnp.zeros((1, 4, 4, 3), jnp.uint8), jnp.zeros((1, 8, 8, 3), jnp.uint8)
  variables = model.init(jax.random.key(0), lowres, highres)
  assert list(variables) == ['params']  # init records no ReLU statistics.
  params = jax.tree.map(jnp.zeros_like, variables['params'])
  cond = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.ones_like(x) if path[-1].key == 'bias' else x, params['conditioning']
  )
  cond['stem']['kernel'] = cond['stem']['kernel'].at[1, 1, 0, 0].set(1.0)
  cond['stem']['bias'] = jnp.zeros(C)
  block = cond['stage0_block0']
  block['conv1']['kernel'] = block['conv1']['kernel'].at[1, 1].set(jnp.eye(C))
  block['conv1']['bias'] = jnp.array([-0.5, 1.0, -1.0, 1.0])
  block['conv2']['bias'] = jnp.array([0.0, 0.0, 0.0, -3.0])
  params['conditioning'] = cond
  return model, {'params': params}


def eval_sums(model, variables, lowres, mask):
  class State:
    params = variables['params']
    apply_fn = staticmethod(model.apply)

  batch = {'lowres': lowres, 'highres': np.zeros((len(lowres), 8, 8, 3), np.uint8), 'mask': mask}
  return jax.device_get(pixelsr_train.eval_step(State, batch, loss_kind='O2'))


def test_dead_channels_of_a_constructed_network_padding_excluded():
  model, variables = constructed_model()
  lowres = np.zeros((3, 4, 4, 3), np.uint8)
  lowres[0, :2, :, 0] = 255  # Example 0: red 1.0 on its top half, so inner channel 0 fires on part of it.
  lowres[2, :, :, 0] = 255  # Example 2, all red, is padding.
  sums = eval_sums(model, variables, lowres, np.array([True, True, False]))
  assert sums['count'] == 2
  inner = sums['relu_active/conditioning/stage0_block0/inner']
  # Channel 0's positive fraction: where red > 0.5, i.e. rows 0-1 of example 0 (8 of 16 positions); 0 in example 1.
  np.testing.assert_allclose(inner, [0.5, 2.0, 0.0, 2.0])
  figures = relu_health.summarise({k: v / sums['count'] for k, v in sums.items() if k != 'count'})
  assert figures['relu_dead/conditioning/stage0_block0/inner'] == 0.25
  assert figures['relu_dead/conditioning/stage0_block0/out'] == 0.75
  others = [k for k in figures if k.startswith('relu_dead/') and 'stage0_block0' not in k]
  assert len(others) == 3 and all(figures[k] == 0 for k in others)  # upsample0, stage1_block0 inner and out
  assert figures['relu_dead_worst'] == 0.75 and figures['relu_dead_mean'] == pytest.approx((0.25 + 0.75) / 5)
  # Positive fraction per channel, averaged over 5 sites x 4 channels: inner (0.25, 1, 0, 1), out (0.25, 0, 0, 0)
  # (out's channel 0 = relu(red): positive on example 0's top half), the 12 others 1.
  assert figures['relu_active'] == pytest.approx((2.25 + 0.25 + 12) / 20)
  assert relu_health.worst_site({f'eval/{k}': v for k, v in figures.items()}) == (
    'conditioning/stage0_block0/out',
    0.75,
  )
  assert relu_health.describe(figures) == (
    'worst site conditioning/stage0_block0/out: 75% of its channels dead (mean over sites 20%)'
  )

  # The padded all-red example would have kept inner channel 0 alive: without the mask it counts.
  sums = eval_sums(model, variables, lowres[1:], np.array([True, True]))
  assert sums['relu_active/conditioning/stage0_block0/inner'][0] == 1.0


def test_training_and_sampling_record_nothing():
  model, variables = constructed_model()
  lowres = np.zeros((2, 4, 4, 3), np.uint8)
  out = model.apply(variables, lowres, method='condition')
  assert isinstance(out, jax.Array)  # no (output, collections) pair: nothing sown
  _, stats = model.apply(variables, lowres, method='condition', mutable=[relu_health.COLLECTION])
  assert set(stats[relu_health.COLLECTION]['conditioning']) == {'stage0_block0', 'upsample0_relu', 'stage1_block0'}


def test_masked_means_keep_array_sums():
  mesh = sharding.data_mesh()
  batches = [{'x': np.ones(2), 'mask': np.array([True, True])}, {'x': np.ones(2), 'mask': np.array([True, False])}]
  eval_fn = lambda state, batch: {
    'count': batch['mask'].sum(),
    's': 2.0 * batch['mask'].sum(),
    'v': np.array([1.0, 0.0]) * batch['mask'].sum(),
  }
  means = trainer.masked_means(None, iter(batches), eval_fn, mesh)
  assert means['s'] == 2.0 and isinstance(means['s'], float)
  np.testing.assert_array_equal(means['v'], [1.0, 0.0])
