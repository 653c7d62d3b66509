"""The SRIM network (section 2.5): stages that each double the side, and sampling from it.

Stage s (s = 0, 1, ...) takes the previous image (the low-res input for s = 0), upsamples it bilinearly x2 and
concatenates its own noise (`noise_channels` of N(0, 1) at its output resolution, the authors' port); then
`num_convs` convolutions, norm + activation between them, the last to 3 channels with a sigmoid. Every conv but the
first also sees the skip image: the low-res input upsampled bilinearly to the stage's resolution (x2 in stage 0, x4
in stage 1: the paper's "input image upsampled by a factor of 4"; the port upsamples twice by 2). Images are RGB in
[0, 1] throughout.

Weight norm (`norm='weight'`, the port) is torch.nn.utils.weight_norm's: kernel = g v / ||v|| per output channel
with g initialised to ||v||, so the initial kernel is the one `init` drew (`WeightNormConv`).

Batch norm: training steps normalise with the batch's statistics and update the running averages; sample selection,
evaluation and sampling use the running averages (`train=False`), as the port's `netG.eval()` does. A candidate's
output is then a function of its input and noise alone, whatever else shares its batch: the nearest-sample search is
exact and independent of how it is chunked or sharded, and it searches the samples the model actually draws.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Literal, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from common import images
from common.errors import UserError


@dataclasses.dataclass(frozen=True)
class SRIMConfig:
  """Built from config.model; the defaults are the paper's, with the port's values where the paper is silent."""

  num_stages: int = 2  # Each doubles the side: 2 = x4 (32 -> 64 -> 128).
  num_convs: int = 9  # Convolutions per stage.
  channels: int = 64  # Output channels of every conv but the last (3).
  kernel_size: int = 5
  noise_channels: int = 5  # Channels of N(0, 1) noise per stage, at the stage's output resolution.
  norm: Literal['batch', 'weight', 'none'] = 'batch'  # 'batch' between convs (paper); 'weight' on every conv (port).
  activation: Literal['relu', 'leaky_relu'] = 'relu'  # Between convs; the port: 'leaky_relu'.
  leaky_relu_slope: float = 0.2  # The port's slope.
  batch_norm_momentum: float = 0.9  # Running-average decay; = torch's default momentum 0.1 (the port is PyTorch).
  batch_norm_epsilon: float = 1e-5  # torch's default.
  # Conv kernels: 'default' = Flax's (LeCun normal; the paper does not say) or 'normal' = N(0, init_stddev) (the
  # port). Biases start at 0 either way.
  init: Literal['default', 'normal'] = 'default'
  init_stddev: float = 0.02

  def __post_init__(self):
    if min(self.num_stages, self.num_convs, self.channels, self.kernel_size, self.noise_channels) < 1:
      raise UserError(f'config.model sizes must be positive, got {self}.')
    if self.init_stddev <= 0:
      raise UserError(f'config.model.init_stddev must be positive, got {self.init_stddev}.')

  def kernel_init(self) -> Callable:
    return nn.initializers.normal(self.init_stddev) if self.init == 'normal' else nn.linear.default_kernel_init


def upsample(images01: jax.Array, size: int | Sequence[int]) -> jax.Array:
  """Bilinear to `size` (a side, or (height, width)), half-pixel centres (torch's Upsample(mode='bilinear'),
  align_corners=False)."""
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  return jax.image.resize(images01, images01.shape[:-3] + (height, width, images01.shape[-1]), 'bilinear')


def noise_shape(cfg: SRIMConfig, lowres_side: int, stage: int) -> tuple[int, int, int]:
  side = lowres_side * 2 ** (stage + 1)
  return side, side, cfg.noise_channels


class WeightNormConv(nn.Module):
  """A stride-1 'SAME' convolution under torch.nn.utils.weight_norm: kernel = scale * v / ||v||, the norm per output
  channel, and `scale` initialised to ||v||. Flax's nn.WeightNorm starts the scale at 1, which makes the initial
  kernel's size independent of the init: the port's N(0, small std) would have no effect."""

  features: int
  kernel_size: int
  kernel_init: Callable
  dtype: jnp.dtype = jnp.float32  # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def norm(kernel):
      return jnp.sqrt(jnp.sum(jnp.square(kernel), axis=(0, 1, 2)))

    v = self.param('kernel', self.kernel_init, (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    scale = self.param('scale', lambda _: norm(v))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    kernel = (v * (scale / norm(v))).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype), kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return y + bias.astype(self.dtype)


class Stage(nn.Module):
  """One x2 stage: (previous image, skip image, noise) -> float32 image at the noise's resolution."""

  cfg: SRIMConfig
  dtype: jnp.dtype = jnp.float32  # Compute dtype (config.imle.candidate_dtype in selection); parameters float32.

  @nn.compact
  def __call__(self, image01: jax.Array, skip01: jax.Array, noise: jax.Array, train: bool) -> jax.Array:
    cfg = self.cfg
    h = jnp.concatenate([upsample(image01, noise.shape[-3:-1]), noise], axis=-1)
    for i in range(1, cfg.num_convs + 1):
      if i > 1:
        h = jnp.concatenate([h, skip01], axis=-1)
      last = i == cfg.num_convs
      features = 3 if last else cfg.channels
      if cfg.norm == 'weight':
        h = WeightNormConv(features, cfg.kernel_size, cfg.kernel_init(), self.dtype, name=f'conv{i}')(h)
      else:
        h = nn.Conv(
          features,
          (cfg.kernel_size, cfg.kernel_size),
          padding='SAME',
          kernel_init=cfg.kernel_init(),
          dtype=self.dtype,
          name=f'conv{i}',
        )(h)
      if last:
        return nn.sigmoid(h.astype(jnp.float32))
      if cfg.norm == 'batch':
        h = nn.BatchNorm(
          use_running_average=not train,
          momentum=cfg.batch_norm_momentum,
          epsilon=cfg.batch_norm_epsilon,
          dtype=self.dtype,
          name=f'batch_norm{i}',
        )(h)
      h = nn.relu(h) if cfg.activation == 'relu' else nn.leaky_relu(h, cfg.leaky_relu_slope)
    raise ValueError(f'num_convs={cfg.num_convs}: SRIMConfig requires at least one convolution.')


class SRIM(nn.Module):
  """low-res image (B, h, w, 3) in [0, 1] + one noise per stage -> the output of every stage, [0, 1]."""

  cfg: SRIMConfig

  @nn.compact
  def __call__(self, lowres01: jax.Array, noises: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
    outputs, image = [], lowres01
    for s, noise in enumerate(noises):
      image = Stage(self.cfg, name=f'stage{s + 1}')(image, upsample(lowres01, noise.shape[-3:-1]), noise, train)
      outputs.append(image)
    return outputs


def apply_stage(
  cfg: SRIMConfig,
  variables: dict,
  stage: int,
  image01: jax.Array,
  lowres01: jax.Array,
  noise: jax.Array,
  dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """Stage `stage` alone, in inference mode (batch norm with running averages): what sample selection runs."""
  name = f'stage{stage + 1}'
  stage_variables = {collection: tree[name] for collection, tree in variables.items() if name in tree}
  stage_module = Stage(cfg, dtype)
  return cast(
    jax.Array, stage_module.apply(stage_variables, image01, upsample(lowres01, noise.shape[-3:-1]), noise, train=False)
  )


@functools.partial(jax.jit, static_argnames=('model', 'num_samples'))
def sample(model: SRIM, variables: dict, lowres: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
  """`num_samples` super-resolutions of each low-res uint8 image (B, h, w, 3) -> uint8 (B, num_samples, H, W, 3).

  The stage-s noise of sample n of input b is drawn with fold_in(fold_in(split(key, B)[b], n), s), so a sample does
  not depend on the other inputs of the batch. Batch norm uses its running averages.
  """
  cfg, (b, side) = model.cfg, lowres.shape[:2]
  keys = jax.random.split(key, b)
  noises = []
  for s in range(cfg.num_stages):
    shape = noise_shape(cfg, side, s)
    draw = lambda k, n, s=s, shape=shape: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, n), s), shape)
    noise = jax.vmap(jax.vmap(draw, in_axes=(None, 0)), in_axes=(0, None))(keys, jnp.arange(num_samples))
    noises.append(noise.reshape(b * num_samples, *shape))
  lowres01 = jnp.repeat(jnp.asarray(lowres, jnp.float32) / 255.0, num_samples, axis=0)
  highres01 = cast(list[jax.Array], model.apply(variables, lowres01, noises, train=False))[-1]
  return images.quantize(highres01 * 255.0).reshape(b, num_samples, *highres01.shape[1:])
