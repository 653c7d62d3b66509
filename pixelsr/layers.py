"""Building blocks of the pixel recursive model: colour-masked convolutions, gated PixelCNN layers, ResNet blocks.

Colour groups. Sub-pixels are generated in raster order and, within a pixel, R then G then B. Every feature map of
the prior is split into `num_colours` contiguous groups (channel c of C belongs to group c * num_colours // C; 64
channels split 22/21/21); group g of a feature at pixel p may depend on colours < g of p under mask A (the first
layer, which sees the image) and on groups <= g of p under mask B (every later layer). Taps on earlier pixels are
unmasked. A tensor made of several concatenated chunks (the tanh and sigmoid halves of a gate) is grouped chunk by
chunk, so the gate multiplies features of the same colour.

Stacks (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"). The vertical stack at row
i sees image rows <= i (whole rows, as far as the kernels reach) and feeds the horizontal stack only after a one-row
down shift, so the horizontal stack at (i, j) sees rows < i through it and row i, columns <= j through its own 1 x
(k//2+1) convolutions. This removes the blind spot of a plain masked k x k stack.
"""

import functools
from collections.abc import Callable
from typing import Literal, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import relu_health

Initializer = Callable[..., jax.Array]


def channel_groups(num_channels: int, num_colours: int, num_chunks: int = 1) -> np.ndarray:
  """Colour group of each channel of a feature map made of `num_chunks` concatenated chunks."""
  chunk = num_channels // num_chunks
  if chunk * num_chunks != num_channels or chunk < num_colours:
    raise ValueError(f'{num_channels} channels cannot be split into {num_chunks} chunks of >= {num_colours}.')
  return (np.arange(num_channels) % chunk) * num_colours // chunk


def colour_mask(in_groups: np.ndarray, out_groups: np.ndarray, mask_type: Literal['A', 'B']) -> np.ndarray:
  """(C_in, C_out) mask of the current-pixel tap: which input groups each output group may see."""
  if mask_type == 'A':
    return in_groups[:, None] < out_groups[None, :]
  return in_groups[:, None] <= out_groups[None, :]


def row_mask(width: int, in_groups: np.ndarray, out_groups: np.ndarray, mask_type: Literal['A', 'B']) -> np.ndarray:
  """(1, width, C_in, C_out) mask of a kernel over columns j-width+1 .. j of the current row: earlier pixels in
  full, the current pixel (the last column) by colour group."""
  mask = np.ones((1, width, len(in_groups), len(out_groups)), dtype=np.float32)
  mask[0, -1] = colour_mask(in_groups, out_groups, mask_type)
  return mask


def masked_kernel(
  kernel: jax.Array, mask_type: Literal['A', 'B'], num_colours: int, in_chunks: int = 1, out_chunks: int = 1
) -> jax.Array:
  """A (1, width, C_in, C_out) row kernel with its colour mask applied (shared by the model and the sampler)."""
  _, width, cin, cout = kernel.shape
  return kernel * row_mask(
    width, channel_groups(cin, num_colours, in_chunks), channel_groups(cout, num_colours, out_chunks), mask_type
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def low_precision_dot(x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (B, M, K) @ w (K, N) in float32, computed with both rounded to `dtype` (bf16) and every product summed in
  float32: (B, M, N) float32. The gradients are float32 too, rounded once where they meet a bf16 tensor.

  The gradients are written out in the operand layouts that XLA:CPU multiplies in bf16. Autodiff's take w and x
  transposed (g @ w.T, x.T @ g), which XLA:CPU runs in float32 after converting both operands, more slowly.
  Contracting the batch and positions together for the weight gradient, and w's transpose behind an optimization
  barrier, keep its bf16 kernels (benchmarks/README.md)."""
  return _low_precision_dot_fwd(x, w, dtype)[0]


def _low_precision_dot_fwd(x, w, dtype):
  x, w = x.astype(dtype), w.astype(dtype)
  return jnp.einsum('bmk,kn->bmn', x, w, preferred_element_type=jnp.float32), (x, w)


def _low_precision_dot_bwd(dtype, residuals, g):
  x, w = residuals
  g = g.astype(dtype)
  dx = jnp.einsum('bmn,nk->bmk', g, jax.lax.optimization_barrier(w.T), preferred_element_type=jnp.float32)
  return dx, jnp.einsum('bmk,bmn->kn', x, g, preferred_element_type=jnp.float32)


low_precision_dot.defvjp(_low_precision_dot_fwd, _low_precision_dot_bwd)


def matmul(x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (B, M, K) @ w (K, N) with `dtype` operands, summed in float32 (XLA:CPU's bf16 matmul kernels run faster
  when they accumulate in f32 than when they round every sum to bf16): (B, M, N) float32."""
  if jnp.dtype(dtype) == jnp.float32:  # One 2-D matmul, as the 1x1s have always run in float32.
    return jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), w.astype(dtype)).reshape(*x.shape[:-1], w.shape[-1])
  # Through float32, so that the gradient reaching a bf16 x is rounded once, after it is summed (XLA drops the
  # round trip bf16 -> f32 -> bf16 of the forward).
  return low_precision_dot(x.astype(jnp.float32), w.astype(jnp.float32), jnp.dtype(dtype))


def pointwise(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (B, ..., C) @ kernel (C, D) + bias as one matmul over a (B, positions, C) array. XLA:CPU runs its gradients
  faster than those of the same product over (B, H, W, C) (a 1x1 convolution or an einsum), whose weight gradient it
  computes with a transposed copy of the activations (benchmarks/README.md)."""
  y = matmul(x.reshape(x.shape[0], -1, x.shape[-1]), kernel, dtype)
  return (y + bias).astype(dtype).reshape(*x.shape[:-1], kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_as_matmul(x: jax.Array, kernel: jax.Array, left: int, right: int, dtype: jnp.dtype) -> jax.Array:
  """The convolution of x (B, H, W, C) with kernel (kh, kw, C, O), rows padded (kh - 1, 0) and columns (left,
  right), as one matmul of `dtype` operands summed in float32, returned in float32 (B, H, W, O).

  The kw column taps are gathered into the channels (`_column_windows`), the kh row taps into the matmul's outputs,
  which are summed shifted by their row: (B, (H + kh - 1) W, kw C) @ (kw C, kh O), the convolution's FLOPs plus kh - 1
  rows per image. The gradient is two more such matmuls (as `low_precision_dot`'s), the input's summed over the
  taps in float32 and rounded once to x's dtype. Why: on a CPU in bf16, XLA's convolutions run at their float32
  speed, forward and backward, while bf16 matmuls run faster; in float32 at the papers' width, XLA:CPU's convolution
  gradients take longer than these matmuls. Either way the gated layers' 3x5 convolution takes less time this way
  (benchmarks/README.md)."""
  return _conv_as_matmul_fwd(x, kernel, left, right, dtype)[0]


def _column_windows(x: jax.Array, kh: int, kw: int, left: int, right: int) -> jax.Array:
  """(B, H, W, C) -> (B, H + kh - 1, W, kw C): row r holds input row r - kh + 1 (zeros above the image), and column
  j the input columns j - left .. j + right, tap d's channels at d C."""
  width = x.shape[2]
  padded = jnp.pad(_as_bits(x), ((0, 0), (kh - 1, 0), (left, right), (0, 0)))
  return _from_bits(jnp.concatenate([padded[:, :, d : d + width] for d in range(kw)], -1), x.dtype)


def _as_bits(x: jax.Array) -> jax.Array:
  """A bf16 array's bits (uint16; zeros stay zeros), to be moved by pads and concatenations, which XLA:CPU computes
  in float32 for bf16 (a converted copy each way)."""
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _from_bits(bits: jax.Array, dtype: jnp.dtype) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, dtype) if dtype == jnp.bfloat16 else bits


def _conv_as_matmul_fwd(x, kernel, left, right, dtype):
  kh, kw, c, o = kernel.shape
  b, h, w, _ = x.shape
  windows = _column_windows(x.astype(dtype), kh, kw, left, right).reshape(b, -1, kw * c)
  taps = kernel.astype(dtype).transpose(1, 2, 0, 3).reshape(kw * c, kh * o)
  z = jnp.einsum('bmk,kn->bmn', windows, taps, preferred_element_type=jnp.float32).reshape(b, h + kh - 1, w, kh, o)
  out = cast(jax.Array, sum(z[:, d : d + h, :, d] for d in range(kh)))
  return out, (windows, kernel, jnp.zeros((0,), x.dtype))


def _conv_as_matmul_bwd(left, right, dtype, residuals, g):
  windows, kernel, x_dtype = residuals
  kh, kw, c, o = kernel.shape
  b, h, w = g.shape[:3]
  # Output row i took row tap d from window row i + d.
  g = _as_bits(g.astype(dtype))
  dz = jnp.stack([jnp.pad(g, ((0, 0), (d, kh - 1 - d), (0, 0), (0, 0))) for d in range(kh)], -2)
  dz = _from_bits(dz.reshape(b, -1, kh * o), jnp.dtype(dtype))
  # Transposed from the 4-D kernel: `taps.T` folded into the dot sent it through float32 on XLA:CPU.
  taps_t = kernel.astype(dtype).transpose(0, 3, 1, 2).reshape(kh * o, kw * c)
  d_windows = jnp.einsum('bmn,nk->bmk', dz, taps_t, preferred_element_type=jnp.float32)
  d_windows = d_windows.reshape(b, h + kh - 1, w, kw, c)[:, kh - 1 :]
  # Input column j - left + d fed output column j through tap d.
  dx = cast(jax.Array, sum(jnp.pad(d_windows[..., d, :], ((0, 0), (0, 0), (d, kw - 1 - d), (0, 0))) for d in range(kw)))
  dk = jnp.einsum('bmk,bmn->kn', windows, dz, preferred_element_type=jnp.float32)
  return dx[:, :, left : left + w].astype(x_dtype.dtype), dk.reshape(kw, c, kh, o).transpose(2, 0, 1, 3)


conv_as_matmul.defvjp(_conv_as_matmul_fwd, _conv_as_matmul_bwd)


def row_conv(
  x: jax.Array, kernel: jax.Array, bias: jax.Array, left: int, right: int, dtype: jnp.dtype, as_matmul: bool
) -> jax.Array:
  """A stack's convolution: output row i sees input rows i - kh + 1 .. i and columns j - left .. j + right. As
  `nn.Conv` computes it (`lax.conv_general_dilated` in `dtype`), or with `as_matmul` by `conv_as_matmul`."""
  if as_matmul:
    return (cast(jax.Array, conv_as_matmul(x, kernel, left, right, dtype)) + bias).astype(dtype)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  y = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), ((kernel.shape[0] - 1, 0), (left, right)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return y + bias.astype(dtype)


class RowConv(nn.Module):
  """A stack's unmasked convolution (`row_conv`), with `nn.Conv`'s parameters: 'kernel' (kh, kw, C_in, C_out),
  'bias'."""

  features: int
  kernel_size: tuple[int, int]
  left: int
  right: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  as_matmul: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return row_conv(x, kernel, bias, self.left, self.right, self.dtype, self.as_matmul)


def down_shift(x: jax.Array) -> jax.Array:
  """Moves rows down by one (row 0 becomes zeros): row i then holds what row i-1 held."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


class MaskedConv(nn.Module):
  """A convolution over columns j-width+1 .. j of the current row, masked by colour group at the current pixel:
  the horizontal stack's kernel, and with width 1 the masked 1x1 convolutions."""

  features: int
  width: int
  mask_type: Literal['A', 'B']
  num_colours: int
  in_chunks: int = 1
  out_chunks: int = 1
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  as_matmul: bool = False  # width > 1: `row_conv`'s matmul form.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1, self.width, x.shape[-1], self.features)
    kernel = masked_kernel(
      self.param('kernel', self.kernel_init, shape), self.mask_type, self.num_colours, self.in_chunks, self.out_chunks
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if self.width == 1:
      return pointwise(x, kernel[0, 0], bias, self.dtype)
    return row_conv(x, kernel, bias, self.width - 1, 0, self.dtype, self.as_matmul)


class Pointwise(nn.Module):
  """A 1x1 convolution (kernel (1, 1, C_in, C_out), as `nn.Conv`'s) computed by `pointwise`."""

  features: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features))
    return pointwise(x, kernel[0, 0], self.param('bias', nn.initializers.zeros, (self.features,)), self.dtype)


def gate(x: jax.Array) -> jax.Array:
  """tanh(first half) * sigmoid(second half): the gated activation unit."""
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


class GatedLayer(nn.Module):
  """One gated PixelCNN layer: vertical stack, horizontal stack fed by the shifted vertical stack, and a residual
  connection on the horizontal stack, summed in float32 whatever `dtype` (see `ResNetBlock`)."""

  channels: int
  kernel: int
  num_colours: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  as_matmul: bool = False  # The stacks' convolutions in `row_conv`'s matmul form.

  @nn.compact
  def __call__(self, v: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    k, p = self.kernel, self.channels
    # Output row i covers input rows i-k//2 .. i: the vertical stack never looks down.
    v_pre = RowConv(
      2 * p, (k // 2 + 1, k), k // 2, k // 2, self.kernel_init, self.dtype, self.as_matmul, name='vertical'
    )(v)
    h_pre = MaskedConv(
      2 * p,
      k // 2 + 1,
      'B',
      self.num_colours,
      out_chunks=2,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      as_matmul=self.as_matmul,
      name='horizontal',
    )(h)
    # The vertical stack has seen all of row i; shifted, it tells row i only about rows above.
    h_pre = h_pre + Pointwise(2 * p, self.kernel_init, self.dtype, name='vertical_to_horizontal')(down_shift(v_pre))
    h_out = MaskedConv(
      p, 1, 'B', self.num_colours, kernel_init=self.kernel_init, dtype=self.dtype, name='horizontal_out'
    )(gate(h_pre))
    return gate(v_pre), h.astype(jnp.float32) + h_out.astype(jnp.float32)


class FirstLayer(nn.Module):
  """The prior's masked k x k convolution (type A), split into its two stacks.

  The vertical part, a (k//2) x k kernel over rows i-k//2+1 .. i, starts the vertical stack; shifted down one row it
  is the upper half of the k x k kernel. The horizontal part is the centre row's left half plus the current pixel
  under mask A. Their sum is exactly a masked k x k convolution, but the vertical stack also carries the current
  row's later sub-pixels (the last pixel's B included) to the rows below, which a stack started from the masked
  output would never see: v_0 = h_0 leaves a blind spot at the end of each row.
  """

  channels: int
  kernel: int
  num_colours: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  as_matmul: bool = False  # Both convolutions in `row_conv`'s matmul form.

  @nn.compact
  def __call__(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = self.kernel
    v = RowConv(
      self.channels, (k // 2, k), k // 2, k // 2, self.kernel_init, self.dtype, self.as_matmul, name='vertical'
    )(y)
    h = MaskedConv(
      self.channels,
      k // 2 + 1,
      'A',
      self.num_colours,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      as_matmul=self.as_matmul,
      name='horizontal',
    )(y)
    return v, h.astype(jnp.float32) + down_shift(v).astype(jnp.float32)  # The horizontal stream: float32.


class ResNetBlock(nn.Module):
  """conv3x3 - ReLU - conv3x3, added to the input, then ReLU (He et al. 2016, 'post_activation'); or, with
  `preactivation`, the input plus conv3x3(ReLU(conv3x3(ReLU(x)))) (He et al. 2016b's full pre-activation block,
  without batch norm), whose stream is never rectified, so its channels cannot die. With `zero_init_last` the second
  conv starts at zero (Goyal et al. 2017), so the untrained block is the identity on its (non-negative) input.

  The sum is float32 whatever `dtype`: in bf16 (8 bits) a block's small contribution is rounded away against the
  stream it is added to, and the demo's conditioning network stopped learning (benchmarks/README.md)."""

  channels: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  zero_init_last: bool = False
  preactivation: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, init: nn.Conv(self.channels, (3, 3), kernel_init=init, dtype=self.dtype, name=name)
    last_init = nn.initializers.zeros if self.zero_init_last else self.kernel_init
    first = relu_health.ReLU(name='pre')(x) if self.preactivation else x
    y = conv('conv2', last_init)(relu_health.ReLU(name='inner')(conv('conv1', self.kernel_init)(first)))
    total = x.astype(jnp.float32) + y.astype(jnp.float32)
    return total if self.preactivation else relu_health.ReLU(name='out')(total)
