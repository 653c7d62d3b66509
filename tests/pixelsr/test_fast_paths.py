"""The formulations chosen for speed compute what the plain ones do (benchmarks/README.md, "CPU train step").

The train step differentiates each device's batch in parts (`trainer.value_and_grad_in_parts`; 4 at CelebA's batch on
a CPU), which XLA:CPU runs concurrently: the loss, metrics and gradients must be the whole batch's.
`layers.pointwise` computes every 1x1 convolution of the model as one (positions, C) x (C, D) matmul, because
XLA:CPU differentiates that 2-4x faster than a 1x1 convolution. Swapped back for the plain 1x1 convolution, the
loss and every gradient of a train step must be the same up to float rounding. `layers.conv_as_matmul` computes the
prior's row convolutions as one matmul with a written-out gradient (`config.model.prior_convs`; 'auto' uses it on a
CPU in bf16, and in float32 from 64 channels): the convolution and its gradients to float rounding, and in bf16 the
f32 convolution of the rounded operands. (The sampler's fast paths: tests/pixelsr/test_sampling.py, whose samples
equal the naive sampler's.)
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import sharding, trainer
from common.errors import UserError
from pixelsr import layers, losses, models

SMALL = models.PixelSRConfig(
  cond_blocks=1, cond_channels=8, prior_channels=12, prior_layers=3, prior_head_channels=48, init='lecun_normal'
)


def convolution_1x1(x, kernel, bias, dtype):
  y = jax.lax.conv_general_dilated(
    x.astype(dtype), kernel[None, None].astype(dtype), (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return y + bias.astype(dtype)


def loss_and_grads(params, lowres, highres):
  model = models.PixelRecursiveSR(SMALL)

  def loss(params):
    cond_logits, prior_logits = model.apply({'params': params}, lowres, highres)
    return losses.loss_and_metrics(cond_logits, prior_logits, highres, 'O2')[0]

  return jax.value_and_grad(loss)(params)


def test_matmul_1x1s_give_the_convolutions_loss_and_gradients(monkeypatch):
  rng = np.random.default_rng(0)
  lowres = rng.integers(0, 256, (2, 4, 4, 3), np.uint8)
  highres = rng.integers(0, 256, (2, 16, 16, 3), np.uint8)
  params = models.PixelRecursiveSR(SMALL).init(jax.random.key(0), lowres, highres)['params']
  fast_loss, fast_grads = loss_and_grads(params, lowres, highres)
  calls = []
  monkeypatch.setattr(layers, 'pointwise', lambda *a: calls.append(1) or convolution_1x1(*a))
  plain_loss, plain_grads = loss_and_grads(params, lowres, highres)
  assert len(calls) == 2 * SMALL.prior_layers + 2  # vertical_to_horizontal and horizontal_out per layer, head, logits
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
  flat_fast = jax.tree_util.tree_leaves_with_path(fast_grads)
  flat_plain = dict(jax.tree_util.tree_leaves_with_path(plain_grads))
  for path, grad in flat_fast:
    scale = float(jnp.abs(flat_plain[path]).max()) + 1e-12
    np.testing.assert_allclose(grad, flat_plain[path], rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def plain_row_conv(x, kernel, left, right):
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), ((kernel.shape[0] - 1, 0), (left, right)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


@pytest.mark.parametrize(
  'kernel_shape, left, right',
  [
    ((3, 5, 6, 10), 2, 2),  # a gated layer's vertical stack
    ((1, 3, 6, 10), 2, 0),  # its horizontal stack
    ((3, 7, 3, 5), 3, 3),
  ],
)  # the first layer's vertical part
def test_conv_as_matmul_is_the_convolution_and_its_gradients(kernel_shape, left, right):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 7, 9, kernel_shape[2])), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, 7, 9, kernel_shape[3])), jnp.float32)

  def value_and_grads(conv, x, kernel, g):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(g))

  plain = value_and_grads(lambda x, k: plain_row_conv(x, k, left, right), x, kernel, g)
  fast = value_and_grads(lambda x, k: layers.conv_as_matmul(x, k, left, right, jnp.dtype(jnp.float32)), x, kernel, g)
  for name, a, b in zip(('output', 'd input', 'd kernel'), plain, fast):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()), err_msg=name)

  # In bf16 the inputs, kernel and incoming gradient are rounded to bf16, every product summed in f32: the f32
  # convolution of the rounded values, the input's gradient then rounded to bf16 as the input was.
  round_ = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
  plain = value_and_grads(lambda x, k: plain_row_conv(x, k, left, right), round_(x), round_(kernel), round_(g))
  fast = value_and_grads(
    lambda x, k: layers.conv_as_matmul(x, k, left, right, jnp.dtype(jnp.bfloat16)), x.astype(jnp.bfloat16), kernel, g
  )
  assert [a.dtype for a in fast] == [jnp.float32, jnp.bfloat16, jnp.float32]
  for name, a, b, tol in zip(('output', 'd input', 'd kernel'), plain, fast, (1e-5, 2**-8, 1e-5)):
    np.testing.assert_allclose(b.astype(jnp.float32), a, rtol=tol, atol=1e-5 * float(jnp.abs(a).max()), err_msg=name)
  unrounded = value_and_grads(lambda x, k: plain_row_conv(x, k, left, right), x, kernel, g)
  assert float(jnp.abs(fast[2] - unrounded[2]).max()) > 1e-3 * float(jnp.abs(unrounded[2]).max())  # it did round


def test_low_precision_dot_is_the_float32_product_of_rounded_operands_in_bf16_kernels():
  # The bf16 1x1s (layers.pointwise) and conv_as_matmul's products: forward and both gradients are f32 products of
  # bf16-rounded operands, and XLA:CPU compiles all three to bf16 dots (autodiff's transposed operands were upcast
  # to f32 dots, 2x slower).
  rng = np.random.default_rng(4)
  x, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((2, 24, 16), (16, 8)))
  g = jnp.asarray(rng.standard_normal((2, 24, 8)), jnp.float32)
  bf16 = jnp.dtype(jnp.bfloat16)

  def value_and_grads(x, w):
    y, vjp = jax.vjp(lambda x, w: layers.low_precision_dot(x, w, bf16), x, w)
    return (y, *vjp(g))

  round_ = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
  want = (
    jnp.einsum('bmk,kn->bmn', round_(x), round_(w)),
    jnp.einsum('bmn,kn->bmk', round_(g), round_(w)),
    jnp.einsum('bmk,bmn->kn', round_(x), round_(g)),
  )
  for name, a, b in zip(('output', 'd x', 'd w'), want, value_and_grads(x, w)):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()), err_msg=name)
  hlo = jax.jit(value_and_grads).lower(x, w).compile().as_text()
  types = dict(re.findall(r'%(\S+) = (\w+)\[', hlo))  # instruction names are unique in a module
  dots = [re.search(r' dot\(%([^ ,)]+), %([^ ,)]+)\)', line).groups() for line in hlo.splitlines() if ' dot(' in line]
  assert [[types[name] for name in operands] for operands in dots] == [['bf16', 'bf16']] * 3


def test_prior_convs_as_matmuls_give_the_convolutions_loss_and_gradients():
  # config.model.prior_convs='matmul' (auto on a CPU in bf16, or in f32 from 64 channels): the same parameters, loss
  # and gradients as 'xla'.
  rng = np.random.default_rng(3)
  lowres = rng.integers(0, 256, (2, 4, 4, 3), np.uint8)
  highres = rng.integers(0, 256, (2, 16, 16, 3), np.uint8)
  configs = {convs: models.PixelSRConfig(**{**SMALL.__dict__, 'prior_convs': convs}) for convs in ('xla', 'matmul')}
  params = models.PixelRecursiveSR(configs['xla']).init(jax.random.key(0), lowres, highres)['params']
  matmul_params = models.PixelRecursiveSR(configs['matmul']).init(jax.random.key(0), lowres, highres)['params']
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, matmul_params))

  def loss(cfg, params):
    return losses.loss_and_metrics(
      *models.PixelRecursiveSR(cfg).apply({'params': params}, lowres, highres), highres, 'O2'
    )[0]

  plain_loss, plain_grads = jax.value_and_grad(functools.partial(loss, configs['xla']))(params)
  fast_loss, fast_grads = jax.value_and_grad(functools.partial(loss, configs['matmul']))(params)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
  for path, grad in jax.tree_util.tree_leaves_with_path(fast_grads):
    want = dict(jax.tree_util.tree_leaves_with_path(plain_grads))[path]
    np.testing.assert_allclose(
      grad, want, rtol=0, atol=1e-5 * (float(jnp.abs(want).max()) + 1e-12), err_msg=jax.tree_util.keystr(path)
    )


@pytest.mark.parametrize(
  'convs, dtype, channels, matmul',
  [
    ('auto', 'float32', 12, False),
    ('auto', 'float32', 64, True),
    ('auto', 'bfloat16', 12, True),
    ('xla', 'bfloat16', 12, False),
    ('matmul', 'float32', 12, True),
  ],
)
def test_prior_convs_auto_is_matmul_on_a_cpu_in_bf16_or_wide(convs, dtype, channels, matmul):
  cfg = models.PixelSRConfig(**{**SMALL.__dict__, 'prior_convs': convs, 'dtype': dtype, 'prior_channels': channels})
  model = models.PixelRecursiveSR(cfg)
  highres = np.zeros((1, 16, 16, 3), np.uint8)
  variables = model.init(jax.random.key(0), np.zeros((1, 4, 4, 3), np.uint8), highres)
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, highres, method=model.prior_logits))(variables))
  # Two row convolutions per gated layer and two in the first layer; the 1x1s are matmuls either way.
  assert jaxpr.count('conv_general_dilated') == (0 if matmul else 2 * SMALL.prior_layers + 2)
  with pytest.raises(UserError, match="config.model.prior_convs must be 'auto', 'xla' or 'matmul', got 'fft'"):
    models.PixelSRConfig(prior_convs='fft')


def test_bfloat16_mode_keeps_parameters_logits_and_loss_in_float32():
  # config.model.dtype='bfloat16': matmul and convolution inputs in bf16 (matmuls summed in f32), parameters, the
  # 256-way logits, the softmax and the loss in f32. Its loss and gradients stay those of f32 to bf16's precision.
  rng = np.random.default_rng(1)
  lowres = rng.integers(0, 256, (2, 4, 4, 3), np.uint8)
  highres = rng.integers(0, 256, (2, 16, 16, 3), np.uint8)
  bf16 = models.PixelRecursiveSR(models.PixelSRConfig(**{**SMALL.__dict__, 'dtype': 'bfloat16'}))
  params = bf16.init(jax.random.key(0), lowres, highres)['params']
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  cond_logits, prior_logits = bf16.apply({'params': params}, lowres, highres)
  assert cond_logits.dtype == prior_logits.dtype == jnp.float32

  def loss(model, params):
    return losses.loss_and_metrics(*model.apply({'params': params}, lowres, highres), highres, 'O2')[0]

  f32_loss, f32_grads = jax.value_and_grad(lambda p: loss(models.PixelRecursiveSR(SMALL), p))(params)
  bf16_loss, bf16_grads = jax.value_and_grad(lambda p: loss(bf16, p))(params)
  assert bf16_loss.dtype == jnp.float32
  np.testing.assert_allclose(bf16_loss, f32_loss, rtol=1e-2)
  a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (f32_grads, bf16_grads))
  assert {x.dtype for x in jax.tree.leaves(bf16_grads)} == {jnp.dtype(jnp.float32)}
  assert float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b)) > 0.99
  assert float(jnp.abs(a - b).max()) > 0  # it did compute in bf16


def test_bfloat16_mode_sums_the_residual_streams_in_float32():
  # A residual block's small contribution (1e-3) to a stream at 1 is below bf16's resolution there (2^-7): summed in
  # bf16 it vanished, and in the demo the conditioning network stopped learning (ce_cond stuck at 5.3 nats). The
  # stream arrives in bf16, as the stem's output does.
  x = jnp.ones((1, 4, 4, 4), jnp.bfloat16)
  block = layers.ResNetBlock(4, dtype=jnp.bfloat16, zero_init_last=True)
  params = block.init(jax.random.key(0), x)['params']
  params['conv2']['bias'] = jnp.full((4,), 1e-3)
  out = block.apply({'params': params}, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, 1.001, rtol=1e-5)
  # The prior's horizontal stream: h + horizontal_out(gate(...)), with the output conv's bias alone.
  gated = layers.GatedLayer(4, 3, 1, dtype=jnp.bfloat16)
  params = jax.tree.map(jnp.zeros_like, gated.init(jax.random.key(0), x, x)['params'])
  params['horizontal_out']['bias'] = jnp.full((4,), 1e-3)
  _, h = gated.apply({'params': params}, x, x)
  assert h.dtype == jnp.float32
  np.testing.assert_allclose(h, 1.001, rtol=1e-5)


def test_the_batch_in_parts_gives_the_whole_batch_loss_metrics_and_gradients():
  rng = np.random.default_rng(2)
  batch = {
    'lowres': rng.integers(0, 256, (8, 4, 4, 3), np.uint8),
    'highres': rng.integers(0, 256, (8, 16, 16, 3), np.uint8),
  }
  model = models.PixelRecursiveSR(SMALL)
  params = model.init(jax.random.key(0), batch['lowres'][:1], batch['highres'][:1])['params']

  def loss_fn(params, batch):
    return losses.loss_and_metrics(
      *model.apply({'params': params}, batch['lowres'], batch['highres']), batch['highres'], 'O2'
    )

  step = jax.jit(trainer.value_and_grad_in_parts, static_argnums=(0, 3))
  (whole_loss, whole_metrics), whole_grads = step(loss_fn, params, batch, 1)
  (loss, metrics), grads = step(loss_fn, params, batch, 4)
  # A part's examples: 0, 4 | 1, 5 | ... Its loss alone differs from the whole batch's.
  (part_loss, _), _ = step(loss_fn, params, jax.tree.map(lambda x: x[::4], batch), 1)
  assert abs(float(part_loss) - float(whole_loss)) > 1e-3
  np.testing.assert_allclose(loss, whole_loss, rtol=1e-6)
  for name, value in whole_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-6, err_msg=name)
  for (path, grad), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(whole_grads)):
    scale = float(jnp.abs(want).max()) + 1e-12
    np.testing.assert_allclose(grad, want, rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_batch_parts_auto_and_explicit():
  mesh = sharding.data_mesh(jax.devices()[:1])  # the tests' CPU
  # Parts of >= 8 examples, at most 4.
  assert [trainer.batch_parts(0, b, mesh) for b in (1, 8, 12, 16, 20, 24, 32, 64)] == [1, 1, 1, 2, 2, 3, 4, 4]
  assert trainer.batch_parts(8, 32, mesh) == 8
  with pytest.raises(UserError, match=r'config.train_batch_parts=3 does not divide the 32 examples'):
    trainer.batch_parts(3, 32, mesh)
