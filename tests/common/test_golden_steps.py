"""Golden one-step tests (as nanodo's train_test.py): for each method, a tiny model at a fixed seed takes one
`train_step` on a fixed synthetic batch, and its loss, gradient norm and a checksum of the updated parameters must
match the numbers stored here. A test that only checks "the loss fell" misses a silent numeric change; these do not.

When they may legitimately change: a deliberate change of the model's init, its architecture, a loss, the optimiser,
the seed streams (common/train_loop.SEED_STREAMS) or the batch built below; or a JAX/XLA upgrade that reorders float
sums beyond the tolerance. Then check that the change is the intended one and paste the new numbers, which the
failure message prints. Anything else moving them is a bug.
"""

import functools

import jax
import numpy as np
import pytest

from common import optim, sharding, train_loop
from configs import demo, demo_regression, demo_srgan, demo_srim
from imle import imle, srgan
from imle import train as srim_train
from pixelsr import regression
from pixelsr import train as pixelsr_train

# Float32 on CPU: the same program on the same inputs repeats bit for bit; the tolerance covers CPUs and XLA builds
# that order a reduction differently, not a changed computation.
RTOL = 1e-5

# Method -> step -> (loss, grad_norm, sum of the updated parameters, sum of their squares).
GOLDEN = {
  'pixelcnn': {1: (34069.640625, 62.9039421081543, 8.471536545981825, 226.0336111444211)},
  'regression': {1: (1831.4073486328125, 155.89234924316406, 5.158003836871558, 24.43727509946492)},
  'srim': {1: (106.15281677246094, 144.13694763183594, 31.342824011680932, 51.784351066468766)},
  # SRGAN: one pretraining (pixel MSE) step, then one GAN step.
  'srgan': {
    1: (0.49083206057548523, 0.736250102519989, 98.0017459336932, 281.88595652711234),
    2: (23.087717056274414, 33.006343841552734, 98.17174561922766, 281.9050782025488),
  },
}


def synthetic_batch(batch_size: int, lowres: int, highres: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Fixed uint8 images, independent of the data pipeline, so that data changes do not move the numbers."""
  rng = np.random.default_rng(seed)
  return {
    'lowres': rng.integers(0, 256, (batch_size, lowres, lowres, 3), dtype=np.uint8),
    'highres': rng.integers(0, 256, (batch_size, highres, highres, 3), dtype=np.uint8),
  }


def checksums(params) -> tuple[float, float]:
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(params))]
  return sum(float(x.sum()) for x in leaves), sum(float(np.square(x).sum()) for x in leaves)


def check(method: str, step: int, metrics: dict, params, sum_atol: float = 0.0):
  """`sum_atol`: an absolute tolerance on the parameters' sum alone, for a step whose update is sign-like."""
  got = (float(metrics['loss']), float(metrics['grad_norm']), *checksums(params))
  want = GOLDEN[method][step]
  close = np.isclose(got, want, rtol=RTOL, atol=0)
  close[2] |= abs(got[2] - want[2]) <= sum_atol
  assert close.all(), (
    f'{method} step {step}: (loss, grad_norm, param sum, param sum of squares) = {got!r}, stored {want!r}. '
    'Legitimate only after a deliberate change of init, model, loss, optimiser, seed streams or this batch '
    '(module docstring); then store the new numbers.'
  )


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_pixelcnn_step(dtype):
  """config.model.dtype='bfloat16' (mixed precision): the same step to bf16's precision, parameters in float32."""
  config = demo.get_config('runlocal')
  config.model.update(
    cond_blocks=1, cond_channels=8, prior_layers=2, prior_channels=8, prior_head_channels=16, dtype=dtype
  )
  mesh = sharding.data_mesh()
  state = pixelsr_train.create_train_state(config, train_loop.seed_key(config.seed, 'init'), mesh)
  train_fn, _ = pixelsr_train.compile_steps(pixelsr_train.setup(config, mesh), state)
  batch = synthetic_batch(4, config.data.lowres_size, config.data.highres_size)
  state, metrics = train_fn(state, sharding.to_global(batch, mesh), train_loop.seed_key(config.seed, 'train'))
  if dtype == 'float32':
    check('pixelcnn', 1, metrics, state.params)
  else:
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
    # The loss is 2 ln 256 per sub-pixel for both (zero-initialised logits); the gradient norm shows bf16, to its
    # precision (8 bits: 0.4% per value). RMSProp's first update is ~lr * sign(g), so the parameters' sum moves with
    # the signs of tiny gradients; their sum of squares does not.
    loss, grad_norm, _, squares = GOLDEN['pixelcnn'][1]
    assert float(metrics['loss']) == pytest.approx(loss, rel=RTOL)
    assert grad_norm != float(metrics['grad_norm']) == pytest.approx(grad_norm, rel=2e-2)
    assert checksums(state.params)[1] == pytest.approx(squares, rel=1e-4)


def test_regression_step():
  config = demo_regression.get_config('runlocal')
  config.model.update(cond_blocks=1, cond_channels=8)
  mesh = sharding.data_mesh()
  _, schedule = optim.make_optimizer(config.optimizer)
  state = regression.create_train_state(config, train_loop.seed_key(config.seed, 'init'), mesh)
  batch = synthetic_batch(4, config.data.lowres_size, config.data.highres_size)
  step = jax.jit(functools.partial(regression.train_step, schedule=schedule, reduction=config.loss_reduction))
  state, metrics = step(state, sharding.to_global(batch, mesh), train_loop.seed_key(config.seed, 'train'))
  check('regression', 1, metrics, state.params)


@pytest.mark.parametrize('selection_dtype', ['float32', 'bfloat16'])
def test_srim_step(selection_dtype):
  """Pool selection (the step that brings a pool) and one training step on the chosen noises. With bfloat16
  candidates and features the pool search is compiled in bf16 (its choices: tests/imle/test_imle.py)."""
  config = demo_srim.get_config('runlocal')
  config.imle.candidate_dtype = config.features.selection_dtype = selection_dtype
  config.data.update(highres_size=24, lowres_size=6)
  config.model.update(num_convs=2, channels=8, kernel_size=3)
  # Fixed feature weights: estimating them would read the data pipeline.
  config.features.update(
    components=('pixels', 'conv2_2'), selection_components=('pixels', 'conv2_2'), projection_dim=16, weights=(1.0, 0.1)
  )
  config.imle.update(pool_size=8, num_candidates=4, candidates_per_chunk=4, rows_per_chunk=8)
  config.batch_size = 4
  sides = srim_train.stage_sides(config, srim_train.model_config(config))
  feature_cfg = srim_train.feature_config(config, sides)
  mesh = sharding.data_mesh()
  imle_cfg = srim_train.imle_config(config, mesh)
  state = srim_train.create_train_state(config, train_loop.seed_key(config.seed, 'init'), mesh)
  feature_map, frozen = srim_train.make_frozen(config, feature_cfg, sides, mesh)
  step, _ = srim_train.compile_steps(srim_train.setup(config, mesh, feature_map, frozen), state)
  pool = synthetic_batch(imle_cfg.pool_size, config.data.lowres_size, config.data.highres_size)
  rows = imle.pool_rows(config.seed, 0, 0, config.batch_size, imle_cfg.pool_size)
  batch = {
    'lowres': pool['lowres'][rows],
    'highres': pool['highres'][rows],
    'pool_index': rows,
    'pool_lowres': pool['lowres'],
    'pool_highres': pool['highres'],
    'pool_row': np.arange(imle_cfg.pool_size, dtype=np.int32),
  }
  search_hlo = step.search.lower(
    state,
    sharding.to_global(pool | {'row': batch['pool_row']}, mesh),
    jax.random.key(0),
    frozen,
    imle_cfg.num_candidates,
  ).as_text()
  assert ('bf16' in search_hlo) == (selection_dtype == 'bfloat16')
  if selection_dtype == 'bfloat16':
    return  # The step below is float32's unless a near-tie choice flips, which depends on the CPU's bf16 rounding.
  state, metrics = step(state, sharding.to_global(batch, mesh), train_loop.seed_key(config.seed, 'train'))
  # Adam's first update is lr * g / (|g| + eps): +-lr for any |g| above eps, so a zero-initialised bias whose gradient
  # is float noise moves by +-lr with the CPU's rounding (an Intel Xeon and an AMD EPYC differ by 2.5 lr here). Its
  # square, and so the sum of squares, does not change; the sum may move by up to 4 such flips.
  check('srim', 1, metrics, (state.params, state.batch_stats), sum_atol=8 * config.optimizer.learning_rate)


def test_srgan_pretrain_then_gan_step():
  config = demo_srgan.get_config('runlocal')
  config.model.update(
    generator_blocks=1, generator_channels=8, discriminator_channels=(4, 4, 8, 8, 8, 8, 16, 16), discriminator_dense=16
  )
  config.srgan.update(pretrain_steps=1, content_layer='conv2_2')
  cfg, train_cfg = srgan.model_config(config), srgan.train_config(config)
  mesh = sharding.data_mesh()
  tx = srgan.make_optimizer(train_cfg)
  state = srgan.create_train_state(config, train_loop.seed_key(config.seed, 'init'), mesh)
  weights = srgan.load_vgg(config, train_cfg)
  frozen = {'vgg': weights.up_to((train_cfg.content_layer,))}
  step = jax.jit(
    functools.partial(srgan.train_step, cfg=cfg, train_cfg=train_cfg, preprocessing=weights.preprocessing, tx=tx)
  )
  batch = sharding.to_global(synthetic_batch(4, config.data.lowres_size, config.data.highres_size), mesh)
  for n in (1, 2):
    state, metrics = step(state, batch, train_loop.seed_key(config.seed, 'train'), frozen)
    check('srgan', n, metrics, (state.generator.params, state.discriminator.params))


@pytest.mark.parametrize('stream', sorted(train_loop.SEED_STREAMS))
def test_seed_streams_are_distinct_keys(stream):
  """No stream's key equals another's, nor the raw seed's key (which nothing may use unfolded)."""

  def data(key):
    return tuple(np.asarray(jax.random.key_data(key)).tolist())

  others = {data(train_loop.seed_key(0, s)) for s in train_loop.SEED_STREAMS if s != stream}
  assert data(train_loop.seed_key(0, stream)) not in others | {data(jax.random.key(0))}
