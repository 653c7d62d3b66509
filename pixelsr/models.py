"""The pixel recursive super-resolution model (Dahl et al. 2017): conditioning network A(x) + PixelCNN prior B(y).

p(y_i | x, y_<i) = softmax(A_i(x) + B_i(y_<i))  (eq. 6). Both networks return logits shaped (B, H, W, C, K): C colour
channels, K = 256 levels. Sizes and depths come from `PixelSRConfig`, built from `config.model`. The regression
baseline of table 1 (`RegressionSR`, `ConditioningConfig`) shares the conditioning network's trunk.
"""

import dataclasses
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from common import images, relu_health
from common.errors import UserError
from pixelsr import layers


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
  """The conditioning network's hyper-parameters, shared by the pixel recursive model and the regression baseline;
  the defaults are appendix A's (table 2) for CelebA."""

  num_colours: int = 3  # Colour channels of x and y (3 = RGB, 1 = grey).
  upsample_factor: int = 4  # Output side / input side, a power of two (one transposed conv per factor 2).
  cond_channels: int = 32  # Width of the conditioning ResNet.
  cond_blocks: int = 6  # B: ResNet blocks before, between and after the transposed convs (6 CelebA, 10 LSUN).
  # The ResNet block, which appendix A does not specify: 'post_activation' (He et al. 2016: ReLU after the residual
  # sum, and after each transposed conv) or 'pre_activation' (He et al. 2016b: ReLU before each conv, the stream
  # itself never rectified, one ReLU after the last block). layers.ResNetBlock.
  cond_block: Literal['post_activation', 'pre_activation'] = 'post_activation'
  init: Literal['truncated_normal', 'lecun_normal'] = 'truncated_normal'  # Weight init; biases are zero.
  init_stddev: float = 0.1  # Standard deviation of 'truncated_normal' (table 2).
  # Start the second conv of every ResNet block and the output 1x1 conv at zero, so the untrained network is its stem
  # and upsamplers (blocks are identities) and outputs zeros: uniform logits (A), the bicubic image (regression).
  # False = table 2's init everywhere: it saturates the regression's tanh, stalling both (docs/pixel_recursive.md).
  zero_init_last: bool = False
  # The regression baseline's output (RegressionSR; the pixel recursive model ignores it). True: the bicubic upsample
  # of x + tanh(residual) (Kim et al. 2016; table 1's baseline). False: the 1x1 conv's output itself, the image on the
  # [-1, 1] scale whatever the input's pixel (clipped only when rounded to uint8): figure 2's L2 model, whose output
  # must erase the input digit, which a white input pixel + tanh(residual) cannot (it never goes below mid-grey). No
  # tanh there: where most target pixels are black (MNIST corners), tanh(output) saturates at -1 everywhere within a
  # few steps and its gradient is then exactly 0.
  residual: bool = True
  dtype: Literal['float32', 'bfloat16'] = 'float32'  # Compute dtype; parameters and outputs stay float32.

  def __post_init__(self):
    if self.upsample_factor < 1 or self.upsample_factor & (self.upsample_factor - 1):
      raise UserError(f'config.model.upsample_factor must be a power of two, got {self.upsample_factor}.')
    if self.cond_block not in ('post_activation', 'pre_activation'):
      raise UserError(
        f"config.model.cond_block must be 'post_activation' or 'pre_activation', got {self.cond_block!r}."
      )


@dataclasses.dataclass(frozen=True)
class PixelSRConfig(ConditioningConfig):
  """The pixel recursive model: the conditioning network's fields and the prior's."""

  num_levels: int = 256  # K: values a sub-pixel takes.
  use_prior: bool = True  # False: the conditioning network alone (the per-pixel cross-entropy model, eq. 4).
  prior_channels: int = 64  # Width of the gated layers (appendix A: 64; section 4.1's text says 32).
  prior_layers: int = 20  # Gated layers.
  prior_kernel: int = 5  # k of the gated layers' k x k receptive field per layer.
  prior_first_kernel: int = 7  # The first masked (type A) convolution.
  prior_head_channels: int = 1024  # Masked 1x1 layer before the 3 x 256 logits.
  # The cached sampler's colour pass: 'xla' (XLA's own kernels, ~60-90 per sub-pixel) or 'pallas' (one kernel per
  # colour pass, pixelsr/fused_pixel.py; float32 only; GPU, or interpreted on a CPU). Sampling only: training and
  # the network itself are the same either way.
  pixel_kernel: Literal['xla', 'pallas'] = 'xla'
  # The prior's row convolutions (the stacks' k x k halves): 'xla' (XLA's convolution), 'matmul' (column taps
  # gathered into one matmul with a written-out gradient, layers.conv_as_matmul: the same function and parameters,
  # summed in another order) or 'auto' = 'matmul' on a CPU in bfloat16 (XLA:CPU runs bf16 convolutions at the f32
  # speed) and in float32 from MATMUL_MIN_CHANNELS_F32 channels (there XLA:CPU's convolution gradients are the
  # slower; at 32 channels the two are level), 'xla' otherwise and on GPUs, where XLA's
  # convolutions are the tested path (benchmarks/README.md, "The prior's convolutions as matmuls in float32 too").
  prior_convs: Literal['auto', 'xla', 'matmul'] = 'auto'

  def __post_init__(self):
    super().__post_init__()
    if self.prior_convs not in ('auto', 'xla', 'matmul'):
      raise UserError(f"config.model.prior_convs must be 'auto', 'xla' or 'matmul', got {self.prior_convs!r}.")
    if self.pixel_kernel not in ('xla', 'pallas'):
      raise UserError(f"config.model.pixel_kernel must be 'xla' or 'pallas', got {self.pixel_kernel!r}.")
    if self.pixel_kernel == 'pallas' and self.dtype != 'float32':
      raise UserError(
        "config.model.pixel_kernel='pallas' runs in float32 only: set config.model.dtype='float32' "
        "for sampling (a bf16-trained model's parameters are float32 too), or pixel_kernel='xla'."
      )


# Below this width the float32 matmul form gains nothing on a CPU (benchmarks/README.md).
MATMUL_MIN_CHANNELS_F32 = 64


def prior_convs_as_matmul(cfg: PixelSRConfig) -> bool:
  """Whether the prior's row convolutions run as matmuls (`PixelSRConfig.prior_convs`), on this process's backend."""
  if cfg.prior_convs == 'auto':
    wide = cfg.dtype == 'bfloat16' or cfg.prior_channels >= MATMUL_MIN_CHANNELS_F32
    return jax.default_backend() == 'cpu' and wide
  return cfg.prior_convs == 'matmul'


def kernel_init(cfg: ConditioningConfig) -> layers.Initializer:
  if cfg.init == 'truncated_normal':
    return nn.initializers.truncated_normal(stddev=cfg.init_stddev)
  return nn.initializers.lecun_normal()


def output_init(cfg: ConditioningConfig) -> layers.Initializer:
  """The conditioning network's output 1x1 conv (A's logits, the regression's residual)."""
  return nn.initializers.zeros if cfg.zero_init_last else kernel_init(cfg)


def conditioning_features(cfg: ConditioningConfig, lowres: jax.Array) -> jax.Array:
  """The conditioning network up to its last ResNet block: uint8 (B, h, w, C) -> (B, H, W, cond_channels).

  A 3x3 stem convolution lifts the colour channels to the blocks' width (the table starts at the blocks, whose
  residual sum needs equal widths); then B blocks, a stride-2 transposed conv, B blocks, ... Called inside a compact
  module's __call__, so the layers belong to that module: the pixel recursive model and the regression baseline
  share this trunk and its parameter names.
  """
  init, dtype = kernel_init(cfg), jnp.dtype(cfg.dtype)
  pre = cfg.cond_block == 'pre_activation'
  h = nn.Conv(cfg.cond_channels, (3, 3), kernel_init=init, dtype=dtype, name='stem')(images.uint8_to_signed(lowres))
  num_upsamples = int(math.log2(cfg.upsample_factor))
  for stage in range(num_upsamples + 1):
    for b in range(cfg.cond_blocks):
      h = layers.ResNetBlock(cfg.cond_channels, init, dtype, cfg.zero_init_last, pre, name=f'stage{stage}_block{b}')(h)
    if stage < num_upsamples:
      h = nn.ConvTranspose(
        cfg.cond_channels,
        (3, 3),
        strides=(2, 2),
        padding='SAME',
        kernel_init=init,
        dtype=dtype,
        name=f'upsample{stage}',
      )(h)
      # Appendix A's table lists no activation after the transposed convs; with post-activation blocks this ReLU is
      # ours, so that every layer of the trunk ends in one, as each block does (docs/pixel_recursive.md:
      # "Model details the paper leaves open"). Pre-activation blocks rectify their own input.
      h = h if pre else relu_health.ReLU(name=f'upsample{stage}_relu')(h)
  return relu_health.ReLU(name='final_relu')(h) if pre else h
  return h


class ConditioningNet(nn.Module):
  """A(x): low-res image -> per-sub-pixel logits of the high-res image (appendix A, "conditional network"): the
  trunk (`conditioning_features`) and a 1x1 conv to C*K."""

  cfg: PixelSRConfig

  @nn.compact
  def __call__(self, lowres: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = conditioning_features(cfg, lowres)
    # A 1x1 conv, applied to the (positions, channels) matrix: see `layers.pointwise`.
    logits = nn.Dense(
      cfg.num_colours * cfg.num_levels, kernel_init=output_init(cfg), dtype=jnp.dtype(cfg.dtype), name='logits'
    )(h.reshape(-1, h.shape[-1]))
    return logits.astype(jnp.float32).reshape(*h.shape[:-1], cfg.num_colours, cfg.num_levels)


class RegressionSR(nn.Module):
  """The regression baseline (section 5): the conditioning trunk, a 1x1 conv to C outputs and tanh, predicting the
  residual over the bicubic upsample of x (Kim et al. 2016), trained with L2; with `cfg.residual=False` the 1x1 conv
  predicts the output itself (no tanh, no input added). Fully convolutional: any input height and width.

  `__call__(lowres)` returns the prediction on the [-1, 1] scale of `images.uint8_to_signed`, (B, H, W, C) float32:
  bicubic + tanh(residual), or the output, not clipped (the L2 loss keeps its gradient at the range's edges);
  `images.signed_to_uint8` clips and rounds it to an image.
  """

  cfg: ConditioningConfig

  @nn.compact
  def __call__(self, lowres: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = conditioning_features(cfg, lowres)
    out = nn.Dense(
      cfg.num_colours,
      kernel_init=output_init(cfg),
      dtype=jnp.dtype(cfg.dtype),
      name='residual' if cfg.residual else 'output',
    )(h).astype(jnp.float32)
    if not cfg.residual:
      return out
    upsampled = images.bicubic_upsample(
      lowres, (lowres.shape[-3] * cfg.upsample_factor, lowres.shape[-2] * cfg.upsample_factor)
    )
    return images.uint8_to_signed(upsampled) + jnp.tanh(out)


class PixelCNNPrior(nn.Module):
  """B(y_<i): gated PixelCNN over the high-res image (appendix A, "PixelCNN network")."""

  cfg: PixelSRConfig

  @nn.compact
  def __call__(self, highres: jax.Array) -> jax.Array:
    cfg, init = self.cfg, kernel_init(self.cfg)
    dtype, as_matmul = jnp.dtype(cfg.dtype), prior_convs_as_matmul(cfg)
    masked = lambda features, name: layers.MaskedConv(
      features, 1, 'B', cfg.num_colours, kernel_init=init, dtype=dtype, name=name
    )
    v, h = layers.FirstLayer(
      cfg.prior_channels, cfg.prior_first_kernel, cfg.num_colours, init, dtype, as_matmul, name='first'
    )(images.uint8_to_signed(highres))
    for i in range(cfg.prior_layers):
      v, h = layers.GatedLayer(
        cfg.prior_channels, cfg.prior_kernel, cfg.num_colours, init, dtype, as_matmul, name=f'gated{i}'
      )(v, h)
    h = nn.relu(masked(cfg.prior_head_channels, 'head')(nn.relu(h)))
    # Output channel o belongs to colour o // K, so the reshape below puts each colour's K logits together.
    logits = masked(cfg.num_colours * cfg.num_levels, 'logits')(h)
    return logits.astype(jnp.float32).reshape(*logits.shape[:-1], cfg.num_colours, cfg.num_levels)


class PixelRecursiveSR(nn.Module):
  """The combined model. `__call__(lowres, highres) -> (cond_logits A, prior_logits B)`, each (B, H, W, C, K);
  highres is the teacher-forced target (uint8). With `use_prior=False` B is zeros (the per-pixel model)."""

  cfg: PixelSRConfig

  def setup(self):
    self.conditioning = ConditioningNet(self.cfg)
    if self.cfg.use_prior:
      self.prior = PixelCNNPrior(self.cfg)

  def __call__(self, lowres: jax.Array, highres: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.condition(lowres), self.prior_logits(highres)

  def condition(self, lowres: jax.Array) -> jax.Array:
    return self.conditioning(lowres)

  def prior_logits(self, highres: jax.Array) -> jax.Array:
    if not self.cfg.use_prior:
      return jnp.zeros((*highres.shape, self.cfg.num_levels), jnp.float32)
    return self.prior(highres)
