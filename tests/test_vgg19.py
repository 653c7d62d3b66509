"""The Flax VGG19 equals Keras' own (random weights, three file formats); bad weight files end in one clear error."""
import os
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from common.errors import UserError
from imle import vgg19

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  files = {'keras3': str(folder / 'vgg19.weights.h5'), 'legacy': str(folder / 'notop.h5'),
           'npz': str(folder / 'vgg19.npz')}
  model.save_weights(files['keras3'])
  params = {layer: dict(zip(('kernel', 'bias'), model.get_layer(vgg19.keras_name(layer)).get_weights()))
            for layer in vgg19.LAYERS}
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
  out = subprocess.run([sys.executable, '-m', 'imle.vgg19', 'convert', '--pth', str(tmp_path / 'vgg19.pth'), '--out',
                        str(tmp_path / 'vgg19.npz')], capture_output=True, text=True, cwd=REPO, timeout=300)
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
  return {layer: {'kernel': np.full(vgg19.kernel_shape(layer), i, np.float32),
                  'bias': np.full((vgg19.CHANNELS[layer],), -i, np.float32)} for i, layer in enumerate(vgg19.LAYERS)}


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
    f.write(data[:len(data) // 2])
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


@pytest.mark.parametrize('case', ['missing', 'h5_truncated', 'npz_truncated', 'h5_wrong_name', 'npz_wrong_name',
                                  'h5_wrong_shape', 'npz_wrong_shape', 'npz_no_preprocessing', 'pth'])
def test_bad_weight_files_end_in_one_clear_error(good_files, tmp_path, case):
  params, files = good_files
  path, message = {
      'missing': (str(tmp_path / 'nope.h5'), 'does not exist'),
      'h5_truncated': (lambda: _truncate(files['h5'], str(tmp_path / 't.h5')), 'cannot be read as HDF5'),
      'npz_truncated': (lambda: _truncate(files['npz'], str(tmp_path / 't.npz')), 'cannot be read as .npz'),
      'h5_wrong_name': (lambda: write_legacy_h5(str(tmp_path / 'n.h5'), params, {'block3_conv4': 'block3_convX'})
                        or str(tmp_path / 'n.h5'), r'no weights for layer\(s\) block3_conv4 .*block3_convX'),
      'npz_wrong_name': (lambda: _npz_with(str(tmp_path / 'n.npz'), params, conv3_4__kernel=None, conv3_4__bias=None,
                                           block3_conv4__kernel=params['conv3_4']['kernel']),
                         r'no weights for layer\(s\) conv3_4'),
      'h5_wrong_shape': (lambda: write_legacy_h5(str(tmp_path / 's.h5'), {
          **params, 'conv2_2': {'kernel': params['conv2_2']['kernel'][:, :, :64], 'bias': params['conv2_2']['bias']}})
                         or str(tmp_path / 's.h5'), r'block2_conv2 kernel has shape \(3, 3, 64, 128\), VGG19 needs '
                                                    r'\(3, 3, 128, 128\)'),
      'npz_wrong_shape': (lambda: _npz_with(str(tmp_path / 's.npz'), params, conv5_4__bias=np.zeros(7, np.float32)),
                          r'conv5_4 bias has shape \(7,\)'),
      'npz_no_preprocessing': (lambda: _npz_with(str(tmp_path / 'p.npz'), params, preprocessing=None),
                               "must say how its inputs are prepared"),
      'pth': (lambda: _truncate(files['npz'], str(tmp_path / 'vgg19.pth')), 'python -m imle.vgg19 convert'),
  }[case]
  path = path() if callable(path) else path
  with pytest.raises(UserError, match=message) as error:
    vgg19.load_weights(path)
  assert '\n' not in str(error.value)
  assert 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5' in str(error.value) or case in (
      'npz_no_preprocessing', 'pth')
