"""VGG19's 16 convolutions in Flax, returning pre-activation features, and loaders for its published weights.

The layers keep their usual names, conv1_1 ... conv5_4 (Keras: block1_conv1 ... block5_conv4; torchvision:
features.0 ... features.34). Each source of weights was trained on differently prepared images, and a file carries
its preparation with it (`VGGWeights.preprocessing`):

  'caffe'  Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (and the paper's): BGR, 0-255, minus the
           ImageNet mean pixel (103.939, 116.779, 123.68).
  'torch'  torchvision's vgg19-dcbb9e9d.pth: RGB, 0-1, minus mean (0.485, 0.456, 0.406), divided by std
           (0.229, 0.224, 0.225).

Weights cannot be downloaded by this library; `load_weights` reads a file the user supplies (.h5 or .npz), and

  python -m imle.vgg19 convert --pth vgg19-dcbb9e9d.pth --out vgg19_torchvision.npz

converts torchvision's file once (only this command needs torch).
"""
import argparse
import dataclasses
import os
import sys
import zipfile
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.errors import UserError

BLOCK_SIZES = (2, 2, 4, 4, 4)
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
LAYERS = tuple(f'conv{b + 1}_{i + 1}' for b, n in enumerate(BLOCK_SIZES) for i in range(n))
CHANNELS = {f'conv{b + 1}_{i + 1}': c for b, (n, c) in enumerate(zip(BLOCK_SIZES, BLOCK_CHANNELS)) for i in range(n)}
# torchvision's vgg19().features: convolutions at these indices, each followed by a ReLU, blocks by a max pool.
TORCHVISION_INDEX = dict(zip(LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB, TORCH_STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Preprocessing = Literal['caffe', 'torch']
_HOW_TO_GET = ('Pass the Keras file vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5, or torchvision\'s '
               'vgg19-dcbb9e9d.pth converted with `python -m imle.vgg19 convert --pth FILE --out FILE.npz`.')


def keras_name(layer: str) -> str:
  block, conv = layer[len('conv'):].split('_')
  return f'block{block}_conv{conv}'


def kernel_shape(layer: str) -> tuple[int, int, int, int]:
  """HWIO, as Keras and Flax store it."""
  index = LAYERS.index(layer)
  fan_in = 3 if index == 0 else CHANNELS[LAYERS[index - 1]]
  return (3, 3, fan_in, CHANNELS[layer])


def output_side(side: int, layer: str) -> int:
  """Side of `layer`'s feature map for a square input of `side` pixels (each 2x2 pool floors)."""
  return side // 2 ** (int(layer[len('conv')]) - 1)


def preprocess(images01: jax.Array, preprocessing: Preprocessing) -> jax.Array:
  """RGB in [0, 1] -> the input the weights were trained on."""
  if preprocessing == 'caffe':
    return images01[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, images01.dtype)
  return (images01 - jnp.asarray(TORCH_MEAN_RGB, images01.dtype)) / jnp.asarray(TORCH_STD_RGB, images01.dtype)


class VGG19(nn.Module):
  """Pre-activation features {layer: (N, h, w, C)} of `outputs`; layers past the deepest output are never built.

  Input: RGB images (N, H, W, 3) in [0, 1]; `preprocessing` turns them into what the weights expect. 3x3 convs with
  'SAME' padding, ReLU after each, 2x2 max pool (stride 2, floor) between blocks, as Keras and torchvision.
  """
  outputs: tuple[str, ...] = ('conv2_2', 'conv4_4')
  preprocessing: Preprocessing = 'caffe'
  dtype: jnp.dtype = jnp.float32  # Compute dtype of the convolutions; parameters stay float32.

  @nn.compact
  def __call__(self, images01: jax.Array) -> dict[str, jax.Array]:
    unknown = [name for name in self.outputs if name not in LAYERS]
    if unknown:
      raise ValueError(f'VGG19 has no layer {unknown[0]!r}; layers: {", ".join(LAYERS)}.')
    x = preprocess(images01, self.preprocessing)
    deepest = max(LAYERS.index(name) for name in self.outputs)
    features = {}
    for index, name in enumerate(LAYERS[:deepest + 1]):
      if index and name.endswith('_1'):  # First conv of a block: pool the previous block's output.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      # He init keeps an untrained network's features from vanishing through 16 ReLU layers.
      pre_activation = nn.Conv(CHANNELS[name], (3, 3), padding='SAME', kernel_init=nn.initializers.he_normal(),
                               dtype=self.dtype, name=name)(x)
      if name in self.outputs:
        features[name] = pre_activation
      x = nn.relu(pre_activation)
    return features


@dataclasses.dataclass(frozen=True)
class VGGConfig:
  """Built from config.vgg."""
  weights_path: str = ''  # A Keras .h5 or an .npz (see the module doc); '' = untrained weights, with a warning.
  random_seed: int = 0  # Seed of the untrained weights.


@dataclasses.dataclass(frozen=True)
class VGGWeights:
  """Parameters {layer: {'kernel': HWIO, 'bias': (C,)}} of all 16 convs, and the input they expect."""
  params: dict
  preprocessing: Preprocessing
  source: str  # The file, or 'random (seed N)'.

  def up_to(self, outputs: tuple[str, ...]) -> dict:
    """The parameters that VGG19(outputs) uses (nothing past the deepest output)."""
    deepest = max(LAYERS.index(name) for name in outputs)
    return {name: self.params[name] for name in LAYERS[:deepest + 1]}


def random_weights(seed: int) -> VGGWeights:
  """Untrained weights (He normal, zero bias): the distance then measures random, not perceptual, features."""
  variables = jax.jit(VGG19(outputs=(LAYERS[-1],)).init)(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
  return VGGWeights(jax.tree.map(np.asarray, variables['params']), 'caffe', f'random (seed {seed})')


def _checked(arrays: dict[str, dict[str, np.ndarray]], path: str, names: dict[str, str],
             others: tuple[str, ...] = ()) -> dict:
  """All 16 layers present with VGG19's shapes, as float32; `names[layer]` is the layer's name in the file, `others`
  names the file's other weight groups (for the message)."""
  missing = [names[layer] for layer in LAYERS if layer not in arrays]
  if missing:
    held = ', '.join(sorted([names.get(k, k) for k in arrays] + list(others))) or 'none'
    raise UserError(f'VGG19 weights file {path} has no weights for layer(s) {", ".join(missing)} (it holds: '
                    f'{held}); it is not a VGG19 file. {_HOW_TO_GET}')
  params = {}
  for layer in LAYERS:
    expected = {'kernel': kernel_shape(layer), 'bias': (CHANNELS[layer],)}
    for part, shape in expected.items():
      got = arrays[layer].get(part)
      if got is None or tuple(got.shape) != shape:
        raise UserError(f'VGG19 weights file {path}: layer {names[layer]} {part} has shape '
                        f'{None if got is None else tuple(got.shape)}, VGG19 needs {shape}; it is not a VGG19 file '
                        f'(VGG16? a model with a different input?). {_HOW_TO_GET}')
    params[layer] = {part: np.asarray(arrays[layer][part], np.float32) for part in expected}
  return params


def _load_h5(path: str) -> dict:
  """Keras files: the legacy layout (group per layer name: `block1_conv1/[block1_conv1/]kernel:0` or
  `block1_conv1_W_1:0`, as the downloadable notop file), full-model saves (`model_weights/...`), and Keras 3's
  `.weights.h5` (`layers/conv2d_N/vars/{0,1}` with the layer name in the `vars` group's `name` attribute)."""
  import h5py  # Only .h5 files need it (it comes with Keras / TensorFlow).
  wanted = {keras_name(layer): layer for layer in LAYERS}
  arrays = {}
  try:
    with h5py.File(path, 'r') as f:
      groups = []
      f.visititems(lambda name, obj: groups.append((name, obj)) if isinstance(obj, h5py.Group) else None)
      claimed, others = [], []  # Groups taken for a layer (their subgroups belong to them); other weights.
      for name, group in groups:
        attr = group.attrs.get('name', b'')
        attr = attr.decode() if isinstance(attr, bytes) else str(attr)
        layer = wanted.get(attr) or wanted.get(name.rsplit('/', 1)[-1])
        if any(name.startswith(c + '/') for c in claimed):
          continue
        if layer is None:
          if any(isinstance(child, h5py.Dataset) for child in group.values()):
            others.append(attr or name)
          continue
        claimed.append(name)
        datasets = []
        group.visititems(lambda _, obj: datasets.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        by_rank = {a.ndim: a for a in datasets}
        if layer in arrays or len(datasets) != 2 or set(by_rank) != {4, 1}:
          raise UserError(f'VGG19 weights file {path}: layer {keras_name(layer)} should hold one 4-D kernel and '
                          f'one bias, found {[a.shape for a in datasets]}{" twice" if layer in arrays else ""}. '
                          f'{_HOW_TO_GET}')
        arrays[layer] = {'kernel': by_rank[4], 'bias': by_rank[1]}
  except OSError as e:  # h5py: not HDF5, truncated, unreadable.
    raise UserError(f'VGG19 weights file {path} cannot be read as HDF5 ({e}); it is truncated or not a Keras .h5 '
                    f'file: download it again. {_HOW_TO_GET}') from e
  return _checked(arrays, path, {layer: keras_name(layer) for layer in LAYERS}, tuple(others))


def _load_npz(path: str) -> tuple[dict, Preprocessing]:
  """Our .npz: `conv1_1/kernel` (HWIO), `conv1_1/bias`, ... and `preprocessing` ('caffe' or 'torch')."""
  try:
    with np.load(path, allow_pickle=False) as f:
      contents = {key: f[key] for key in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f'VGG19 weights file {path} cannot be read as .npz ({e}); it is truncated or not an .npz '
                    f'file: convert or copy it again. {_HOW_TO_GET}') from e
  preprocessing = str(contents.pop('preprocessing', ''))
  if preprocessing not in ('caffe', 'torch'):
    raise UserError(f"VGG19 weights file {path} must say how its inputs are prepared: an entry 'preprocessing' "
                    f"of 'caffe' (Keras/Caffe weights) or 'torch' (torchvision), got {preprocessing or 'none'!r}. "
                    'Files written by `python -m imle.vgg19 convert` have it.')
  arrays = {}
  for key, value in contents.items():
    layer, _, part = key.partition('/')
    arrays.setdefault(layer, {})[part] = value
  return _checked(arrays, path, {layer: layer for layer in LAYERS}), preprocessing


def load_weights(path: str) -> VGGWeights:
  """VGG19 weights from a Keras .h5 ('caffe' preprocessing) or our .npz (preprocessing stored in it)."""
  if not os.path.isfile(path):
    raise UserError(f'VGG19 weights file {path} does not exist (config.vgg.weights_path). {_HOW_TO_GET}')
  extension = os.path.splitext(path)[1].lower()
  if extension in ('.h5', '.hdf5', '.keras'):
    return VGGWeights(_load_h5(path), 'caffe', path)
  if extension == '.npz':
    params, preprocessing = _load_npz(path)
    return VGGWeights(params, preprocessing, path)
  if extension in ('.pth', '.pt'):
    raise UserError(f'{path} is a PyTorch file; convert it once with `python -m imle.vgg19 convert --pth {path} '
                    f'--out {os.path.splitext(path)[0]}.npz` (needs torch) and pass the .npz.')
  raise UserError(f'VGG19 weights file {path}: unknown extension {extension!r}; pass a Keras .h5 or an .npz. '
                  f'{_HOW_TO_GET}')


def from_torchvision(state_dict: dict[str, np.ndarray], path: str = 'the state dict') -> dict:
  """torchvision vgg19 tensors (features.N.weight OIHW, features.N.bias) -> our HWIO parameters, checked."""
  arrays = {}
  for layer, index in TORCHVISION_INDEX.items():
    weight, bias = state_dict.get(f'features.{index}.weight'), state_dict.get(f'features.{index}.bias')
    if weight is not None and bias is not None:
      arrays[layer] = {'kernel': np.transpose(np.asarray(weight), (2, 3, 1, 0)) if weight.ndim == 4 else weight,
                       'bias': np.asarray(bias)}
  return _checked(arrays, path, {layer: f'features.{i}' for layer, i in TORCHVISION_INDEX.items()})


def save_npz(path: str, weights: VGGWeights) -> None:
  flat = {f'{layer}/{part}': value for layer, parts in weights.params.items() for part, value in parts.items()}
  np.savez(path, preprocessing=np.asarray(weights.preprocessing), **flat)


def convert_pth(pth_path: str, out_path: str) -> None:
  """torchvision's vgg19-dcbb9e9d.pth -> .npz with 'torch' preprocessing. Needs torch (imported here only)."""
  try:
    import torch
  except ImportError:
    raise UserError('Converting a .pth file needs PyTorch: `pip install torch` (CPU is enough), then run this '
                    'command again. Training itself never needs torch.') from None
  if not os.path.isfile(pth_path):
    raise UserError(f'{pth_path} does not exist; pass torchvision\'s vgg19-dcbb9e9d.pth with --pth.')
  try:
    state = torch.load(pth_path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for a bad file.
    raise UserError(f'{pth_path} cannot be read by torch.load ({type(e).__name__}: {e}); download it again.') from e
  state = {k: v.numpy() for k, v in state.items() if hasattr(v, 'numpy')}
  save_npz(out_path, VGGWeights(from_torchvision(state, pth_path), 'torch', pth_path))


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m imle.vgg19', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', help="torchvision .pth -> .npz (with 'torch' preprocessing)")
  convert.add_argument('--pth', required=True, help='torchvision vgg19-dcbb9e9d.pth')
  convert.add_argument('--out', required=True, help='the .npz to write; pass it as config.vgg.weights_path')
  args = parser.parse_args(argv)
  try:
    convert_pth(args.pth, args.out)
    load_weights(args.out)  # Read back: what training will load.
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.out} (16 conv layers, torchvision preprocessing); train with '
        f'--config.vgg.weights_path={args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
