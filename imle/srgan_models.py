"""SRGAN's networks (Ledig et al. 2017): the SRResNet generator (residual blocks, pixel-shuffle upsampling) and the
discriminator, with the fields of config.model that build them. Their losses, updates and training are imle/srgan.py.

The defaults are the paper's; the fields where SRIM's own SRGAN (tensorlayer/srgan) departs from it are named in
their comments: the generator's input range, kernels and activation, the discriminator's layout and the
initialisation (configs/imagenet_srgan.py:tensorlayer).
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.errors import UserError

_DISCRIMINATOR_PAPER = (64, 64, 128, 128, 256, 256, 512, 512)


@dataclasses.dataclass(frozen=True)
class SRGANConfig:
  """Built from config.model; the defaults are the paper's (figure 4 of Ledig et al.)."""

  upsample_factor: int = 4  # A power of 2: one sub-pixel convolution x2 per factor of 2.
  generator_blocks: int = 16  # Residual blocks (B).
  generator_channels: int = 64  # Feature maps of every generator conv but the upsamplers' (4x) and the last (3).
  discriminator_channels: tuple[int, ...] = _DISCRIMINATOR_PAPER  # 3x3 convs; stride 2 at every second one.
  discriminator_dense: int = 1024  # Units of the dense layer before the logit.
  leaky_relu_slope: float = 0.2  # Discriminator activations.
  batch_norm_momentum: float = 0.9  # Running-average decay (torch's momentum 0.1, as SRIM).
  batch_norm_epsilon: float = 1e-5
  # Where SRIM's SRGAN implementations differ from the paper (configs/imagenet_srgan.py:tensorlayer):
  lowres_range: Literal['unit', 'signed'] = 'unit'  # The generator's input: [0, 1] (paper) or [-1, 1] (tensorlayer).
  generator_input_kernel: int = 9  # Side of the first conv (tensorlayer: 3).
  generator_output_kernel: int = 9  # Side of the last conv, to 3 channels (tensorlayer: 1).
  generator_activation: Literal['prelu', 'relu'] = 'prelu'  # After the first conv, in the blocks, after upsamplers.
  # 'paper': the 3x3 convs of discriminator_channels, dense discriminator_dense, dense 1. 'tensorlayer': 4x4 stride-2
  # convs of discriminator_channels, a residual tail, dense 1 (`_tensorlayer_discriminator`; no discriminator_dense).
  discriminator_layout: Literal['paper', 'tensorlayer'] = 'paper'
  # 0: Flax's initialisers (LeCun normal kernels, batch norm scale 1). > 0: kernels N(0, this^2), batch norm scales
  # N(1, this^2), biases 0, as tensorlayer's (DCGAN's 0.02).
  init_normal_stddev: float = 0.0

  def __post_init__(self):
    f = self.upsample_factor
    if f < 2 or f & (f - 1):
      raise UserError(f'config.model.upsample_factor must be a power of 2 >= 2, got {f}.')
    if (
      min(
        self.generator_blocks,
        self.generator_channels,
        self.discriminator_dense,
        *self.discriminator_channels,
        self.generator_input_kernel,
        self.generator_output_kernel,
        1,
      )
      < 1
      or not self.discriminator_channels
    ):
      raise UserError(f'config.model sizes must be positive, got {self}.')
    if self.discriminator_layout == 'tensorlayer' and len(self.discriminator_channels) < 3:
      raise UserError(
        "config.model.discriminator_layout='tensorlayer' reuses config.model.discriminator_channels[1], "
        f'[-2] and [-3] in its tail: give at least 3 widths, got {self.discriminator_channels}.'
      )
    if self.init_normal_stddev < 0:
      raise UserError(
        f"config.model.init_normal_stddev must be >= 0 (0 = Flax's initialisers), got {self.init_normal_stddev}."
      )


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """(B, H, W, r*r*C) -> (B, rH, rW, C) with out[b, r*h + i, r*w + j, c] = x[b, h, w, (r*i + j)*C + c]: the
  sub-pixel convolution's rearrangement, in tf.nn.depth_to_space's channel order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, factor, factor, c // factor**2)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * factor, w * factor, c // factor**2)


class PReLU(nn.Module):
  """One learnt negative slope per channel, starting at 0.25 (He et al. 2015, Caffe's PReLU)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param('negative_slope', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope * x)


def _kernel_init(cfg: SRGANConfig) -> nn.initializers.Initializer:
  # Flax's own default when init_normal_stddev is 0, so that the paper's networks initialise as they always have.
  return nn.initializers.normal(cfg.init_normal_stddev) if cfg.init_normal_stddev else nn.initializers.lecun_normal()


def _conv(cfg: SRGANConfig, features: int, kernel: int, name: str, **kwargs) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), kernel_init=_kernel_init(cfg), name=name, **kwargs)


def _batch_norm(cfg: SRGANConfig, train: bool, name: str) -> nn.BatchNorm:
  # The convs it follows have no bias, which its own bias would make redundant (as the reference implementations).
  stddev = cfg.init_normal_stddev
  scale_init = (
    (lambda key, shape, dtype=jnp.float32: 1 + stddev * jax.random.normal(key, shape, dtype))
    if stddev
    else nn.initializers.ones
  )
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=cfg.batch_norm_momentum,
    epsilon=cfg.batch_norm_epsilon,
    scale_init=scale_init,
    name=name,
  )


def _activate(cfg: SRGANConfig, x: jax.Array, name: str) -> jax.Array:
  """The generator's activation: a PReLU named `name` (paper), or a ReLU, which has no parameters (tensorlayer)."""
  return PReLU(name=name)(x) if cfg.generator_activation == 'prelu' else nn.relu(x)


class ResidualBlock(nn.Module):
  cfg: SRGANConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg, c = self.cfg, self.cfg.generator_channels
    h = _batch_norm(cfg, train, 'batch_norm1')(_conv(cfg, c, 3, 'conv1', use_bias=False)(x))
    h = _activate(cfg, h, 'prelu')
    return x + _batch_norm(cfg, train, 'batch_norm2')(_conv(cfg, c, 3, 'conv2', use_bias=False)(h))


class Generator(nn.Module):
  """SRResNet: low-res RGB (B, h, w, 3) in [0, 1] -> (B, f*h, f*w, 3) in [-1, 1]. With config.model.lowres_range
  'signed' its first conv sees the input on [-1, 1], as tensorlayer's (the API stays [0, 1])."""

  cfg: SRGANConfig

  @nn.compact
  def __call__(self, lowres01: jax.Array, train: bool = False) -> jax.Array:
    cfg, c = self.cfg, self.cfg.generator_channels
    x = lowres01 * 2.0 - 1.0 if cfg.lowres_range == 'signed' else lowres01
    h = _activate(cfg, _conv(cfg, c, cfg.generator_input_kernel, 'conv_in')(x), 'prelu_in')
    trunk = h
    for i in range(cfg.generator_blocks):
      trunk = ResidualBlock(cfg, name=f'block{i + 1}')(trunk, train)
    h = h + _batch_norm(cfg, train, 'batch_norm_trunk')(_conv(cfg, c, 3, 'conv_trunk', use_bias=False)(trunk))
    for u in range(cfg.upsample_factor.bit_length() - 1):
      h = pixel_shuffle(_conv(cfg, 4 * c, 3, f'upsample{u + 1}_conv')(h), 2)
      h = _activate(cfg, h, f'upsample{u + 1}_prelu')
    return jnp.tanh(_conv(cfg, 3, cfg.generator_output_kernel, 'conv_out')(h))


class Discriminator(nn.Module):
  """High-res RGB (B, H, W, 3) in [-1, 1] -> the logit of 'real' (B,); D = sigmoid(logit). The paper's layout, or
  tensorlayer's with config.model.discriminator_layout='tensorlayer' (`_tensorlayer_discriminator`)."""

  cfg: SRGANConfig

  @nn.compact
  def __call__(self, highres_signed: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.cfg
    if cfg.discriminator_layout == 'tensorlayer':
      return _tensorlayer_discriminator(cfg, highres_signed, train)
    h = highres_signed
    for i, c in enumerate(cfg.discriminator_channels):
      h = _conv(cfg, c, 3, f'conv{i + 1}', strides=1 + i % 2, use_bias=not i)(h)
      if i:
        h = _batch_norm(cfg, train, f'batch_norm{i + 1}')(h)
      h = nn.leaky_relu(h, cfg.leaky_relu_slope)
    h = nn.leaky_relu(
      nn.Dense(cfg.discriminator_dense, kernel_init=_kernel_init(cfg), name='dense1')(h.reshape(h.shape[0], -1)),
      cfg.leaky_relu_slope,
    )
    return nn.Dense(1, kernel_init=_kernel_init(cfg), name='dense2')(h)[:, 0]


def _tensorlayer_discriminator(cfg: SRGANConfig, x: jax.Array, train: bool) -> jax.Array:
  """tensorlayer/srgan's SRGAN_d (a DCGAN-style network, not the paper's), built inside `Discriminator`: 4x4 convs of
  stride 2 with discriminator_channels c (64 ... 2048), batch norm after all but the first; 1x1 convs to c[-2] and
  c[-3]; a residual branch of a 1x1 conv to c[1], 3x3 to c[1] and 3x3 to c[-3], added to that; dense 1. Every conv
  but the first has batch norm and no bias. Leaky ReLU follows every conv but the two whose outputs are summed, and
  follows the sum."""
  c = cfg.discriminator_channels

  def layer(h, width, kernel, name, strides=1, activate=True):
    h = _batch_norm(cfg, train, f'{name}_batch_norm')(
      _conv(cfg, width, kernel, name, strides=strides, use_bias=False)(h)
    )
    return nn.leaky_relu(h, cfg.leaky_relu_slope) if activate else h

  h = nn.leaky_relu(_conv(cfg, c[0], 4, 'conv1', strides=2)(x), cfg.leaky_relu_slope)
  for i, width in enumerate(c[1:]):
    h = layer(h, width, 4, f'conv{i + 2}', strides=2)
  h = layer(layer(h, c[-2], 1, 'tail1'), c[-3], 1, 'tail2', activate=False)
  branch = layer(layer(layer(h, c[1], 1, 'residual1'), c[1], 3, 'residual2'), c[-3], 3, 'residual3', activate=False)
  h = nn.leaky_relu(h + branch, cfg.leaky_relu_slope)
  return nn.Dense(1, kernel_init=_kernel_init(cfg), name='dense')(h.reshape(h.shape[0], -1))[:, 0]
