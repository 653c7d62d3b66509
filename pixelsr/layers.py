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
from typing import Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def masked_kernel(kernel: jax.Array, mask_type: Literal['A', 'B'], num_colours: int, in_chunks: int = 1,
                  out_chunks: int = 1) -> jax.Array:
  """A (1, width, C_in, C_out) row kernel with its colour mask applied (shared by the model and the sampler)."""
  _, width, cin, cout = kernel.shape
  return kernel * row_mask(width, channel_groups(cin, num_colours, in_chunks),
                           channel_groups(cout, num_colours, out_chunks), mask_type)


def pointwise(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x (..., C) @ kernel (C, D) + bias as one matmul over a (positions, C) matrix. XLA:CPU runs its gradients 2-4x
  faster than those of the same product over (B, H, W, C) (a 1x1 convolution or an einsum), whose weight gradient
  it computes with a transposed copy of the activations. bfloat16 inputs are summed in float32 (XLA:CPU's bf16
  matmul kernels run 2-3x faster when they accumulate in f32 than when they round every sum to bf16)."""
  y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  return (y + bias).astype(dtype).reshape(*x.shape[:-1], kernel.shape[-1])


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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1, self.width, x.shape[-1], self.features)
    kernel = masked_kernel(self.param('kernel', self.kernel_init, shape), self.mask_type, self.num_colours,
                           self.in_chunks, self.out_chunks)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if self.width == 1:
      return pointwise(x, kernel[0, 0], bias, self.dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((0, 0), (self.width - 1, 0)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(self.dtype)


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

  @nn.compact
  def __call__(self, v: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    k, p = self.kernel, self.channels
    conv = lambda *a, **kw: nn.Conv(*a, kernel_init=self.kernel_init, dtype=self.dtype, **kw)
    # Output row i covers input rows i-k//2 .. i: the vertical stack never looks down.
    v_pre = conv(2 * p, (k // 2 + 1, k), padding=((k // 2, 0), (k // 2, k // 2)), name='vertical')(v)
    h_pre = MaskedConv(2 * p, k // 2 + 1, 'B', self.num_colours, out_chunks=2, kernel_init=self.kernel_init,
                       dtype=self.dtype, name='horizontal')(h)
    # The vertical stack has seen all of row i; shifted, it tells row i only about rows above.
    h_pre = h_pre + Pointwise(2 * p, self.kernel_init, self.dtype, name='vertical_to_horizontal')(down_shift(v_pre))
    h_out = MaskedConv(p, 1, 'B', self.num_colours, kernel_init=self.kernel_init, dtype=self.dtype,
                       name='horizontal_out')(gate(h_pre))
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

  @nn.compact
  def __call__(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = self.kernel
    v = nn.Conv(self.channels, (k // 2, k), padding=((k // 2 - 1, 0), (k // 2, k // 2)), kernel_init=self.kernel_init,
                dtype=self.dtype, name='vertical')(y)
    h = MaskedConv(self.channels, k // 2 + 1, 'A', self.num_colours, kernel_init=self.kernel_init,
                   dtype=self.dtype, name='horizontal')(y)
    return v, h.astype(jnp.float32) + down_shift(v).astype(jnp.float32)  # The horizontal stream: float32.


class ResNetBlock(nn.Module):
  """conv3x3 - ReLU - conv3x3, added to the input, then ReLU (He et al. 2016). With `zero_init_last` the second conv
  starts at zero (Goyal et al. 2017), so the untrained block is the identity on its (non-negative) input.

  The sum is float32 whatever `dtype`: in bf16 (8 bits) a block's small contribution is rounded away against the
  stream it is added to, and the demo's conditioning network stopped learning (benchmarks/README.md)."""
  channels: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda name, init: nn.Conv(self.channels, (3, 3), kernel_init=init, dtype=self.dtype, name=name)
    last_init = nn.initializers.zeros if self.zero_init_last else self.kernel_init
    y = conv('conv2', last_init)(nn.relu(conv('conv1', self.kernel_init)(x)))
    return nn.relu(x.astype(jnp.float32) + y.astype(jnp.float32))
