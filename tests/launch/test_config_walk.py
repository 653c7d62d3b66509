"""Every field of every experiment config, given a well-typed but invalid value, through every launcher that takes
the config (launch/train.py, launch/sample.py --config, launch/evaluate.py): one `error:` line naming the field, a
non-zero exit, no traceback, nothing written (docs/troubleshooting.md, "What happens when ...").

The walk runs in-process, through each launcher's `run` (what its `main` calls with the parsed flags), so that it
takes seconds; a few subprocess runs at the end check the same through the command line (`slow`). Whatever the walk
misses would start real work: the data pipeline and the state's initialisation are replaced by a failure here, so a
missed check fails fast and says so.
"""

import contextlib
import glob
import importlib
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common import data, trainer
from launch import methods
from tests.helpers import REPO

CONFIGS = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
  if os.path.basename(p) not in ('__init__.py', 'defaults.py')
)

# Fields that accept any value of their type, with the reason. Bools are all exempt: no bool is invalid alone.
EXEMPT = {
  'seed': 'any int seeds the run',
  'vgg.random_seed': 'any int seeds the untrained VGG19',
  'features.projection_seed': 'any int seeds the projection',
  'data.name': 'a tfds name: checked when the dataset is opened (DatasetNotFoundError, tests/common/test_data.py)',
  'data.train_split': 'a tfds split name: checked when the dataset is opened',
  'data.eval_split': 'a tfds split name: checked when the dataset is opened',
  'data.tfds_data_dir': "a path; '' = tfds' default: checked when the dataset is opened",
  'data.manual_dir': 'a path: checked when tfds reads it',
  'data.folder': "a path, used only with source='folder': checked when opened (tests/common/test_data.py)",
  'data.mnist_dir': "a path, used only with source='mnist_corners': checked when opened",
  'vgg.weights_path': "a path; '' = untrained weights: checked when loaded (tests/imle/test_vgg19.py)",
}
# Int fields where 0 is meaningful (the comment in configs/defaults.py or the dataclass says what it means).
ZERO_OK = {
  'num_train_steps',
  'train_batch_parts',
  'eval_every_steps',
  'sample_every_steps',
  'data.num_eval_examples',
  'data.num_unseen_classes',
  'optimizer.lr_halve_every',
  'features.projection_dim',
  'srgan.pretrain_steps',
  'srgan.lr_decay_after',
  'evaluate.num_examples',
}
# Fields whose default gives no invalid value by rule (empty tuples): theirs.
SPECIAL = {
  'profile_steps': [(3, 2), (0, 1)],
  'optimizer.lr_halve_at': [(0,)],
  'features.weights': [(-1.0, 1.0, 1.0), (1.0,)],
  'features.weights_tuned_for': ['no_such_value'],
}
# Impossible combinations: (method or None for all, overrides, the field the error must name).
COMBINATIONS = [
  (None, {'data.random_crop_min': 200, 'data.random_crop_max': 100}, 'config.data.random_crop_min'),
  (None, {'data.lowres_size': 64, 'data.highres_size': 32}, 'config.data.lowres_size'),
  (None, {'data.num_unseen_classes': 2, 'data.source': 'embedded'}, 'config.data.num_unseen_classes'),
  (
    None,
    {'data.source': 'mnist_corners', 'data.num_unseen_classes': 0, 'data.augment': 'flip_rot90'},
    'config.data.augment',
  ),
  (
    None,
    {'data.source': 'mnist_corners', 'data.num_unseen_classes': 0, 'data.corner_digit_size': 100},
    'config.data.corner_digit_size',
  ),
  (None, {'data.celeba_crop_box': (1, 2)}, 'config.data.celeba_crop_box'),
  ('pixelcnn', {'data.highres_size': 40}, 'config.data.highres_size'),
  ('regression', {'data.highres_size': 40}, 'config.data.highres_size'),
  ('srgan', {'data.highres_size': 40}, 'config.data.highres_size'),
  ('srim', {'data.highres_size': 40}, 'config.data.highres_size'),
  (
    'srim',
    {'features.components': ('pixels',), 'features.selection_components': ('pixels', 'conv2_2')},
    'config.features.selection_components',
  ),
  ('srim', {'features.components': ('pixels', 'pixels')}, 'config.features.components'),
  ('pixelcnn', {'evaluate.temperatures': (1.0, float('inf'))}, 'config.evaluate.temperatures'),
  ('srgan', {'srgan.content_layer': 'conv9_9'}, 'config.srgan.content_layer'),
]


def leaves(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def invalid_values(path, value):
  """Well-typed values that no run can use."""
  if path in EXEMPT or isinstance(value, bool):
    return []
  if path in SPECIAL:
    return SPECIAL[path]
  if isinstance(value, int):
    return [-1] + ([] if path in ZERO_OK else [0])
  if isinstance(value, float):
    return [-1.0]
  if isinstance(value, str):
    return ['no_such_value']
  assert isinstance(value, tuple) and value, f'{path}={value!r}: give it an invalid value in SPECIAL'
  return [tuple({int: -1, float: -1.0, str: 'no_such_value'}[type(v)] for v in value)]


def load_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def overridden(name, overrides):
  config = load_config(name)
  for path, value in overrides.items():
    *sections, field = path.split('.')
    node = config
    for s in sections:
      node = node[s]
    node[field] = value
  return config


def launcher(name):
  spec = importlib.util.spec_from_file_location(f'launch_{name}', os.path.join(REPO, 'launch', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def launchers():
  return {name: launcher(name) for name in ('train', 'sample', 'evaluate')}


@pytest.fixture(autouse=True)
def no_real_work(monkeypatch):
  """A value the checks miss would start a run: fail at once instead, saying so."""

  def missed(*args, **kwargs):
    raise AssertionError('not refused before the data or the model were touched')

  monkeypatch.setattr(data, 'make_dataset', missed)
  monkeypatch.setattr(trainer, 'create_sharded', missed)


def launch(launchers, which, config, tmp_path):
  """Runs launcher `which` on `config` in-process: (exit code, stderr)."""
  workdir, output = tmp_path / 'run', tmp_path / 'out'
  image = tmp_path / 'in.png'
  if not image.exists():
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
    try:
      if which == 'train':
        launchers['train'].run(config, str(workdir))
      elif which == 'sample':
        launchers['sample'].run(
          workdir=str(workdir), checkpoint=None, config=config, input=str(image), output=str(output)
        )
      else:
        launchers['evaluate'].run(config, str(workdir))
      code = 0
    except SystemExit as e:
      code = e.code
  assert not workdir.exists() and not output.exists(), 'something was written'
  return code, stderr.getvalue()


def check_refused(launchers, which, config, field, tmp_path):
  """'' if `which` refused `config` as it should, naming `field`; else what went wrong."""
  try:
    code, stderr = launch(launchers, which, config, tmp_path)
  except AssertionError as e:
    return str(e)
  errors = [line for line in stderr.splitlines() if line.startswith('error:')]
  if not code or 'Traceback' in stderr or len(errors) != 1 or field not in errors[0]:
    return f'exit {code}, {errors or stderr[-300:]!r}'
  return ''


def launchers_for(method):
  """launch/evaluate.py takes pixel recursive, SRIM and SRGAN configs (a regression run is --regression_workdir)."""
  return ('train', 'sample') if method == 'regression' else ('train', 'sample', 'evaluate')


@pytest.mark.parametrize('name', CONFIGS)
def test_every_invalid_field_value_is_one_error_line_naming_it(name, launchers, tmp_path):
  config = load_config(name)
  method = config.method
  failures, walked = [], 0
  for path, value in leaves(config):
    for bad in invalid_values(path, value):
      for which in launchers_for(method):
        walked += 1
        problem = check_refused(launchers, which, overridden(name, {path: bad}), f'config.{path}', tmp_path)
        if problem:
          failures.append(f'{which} --config.{path}={bad!r}: {problem}')
  assert walked > 50
  assert not failures, f'{len(failures)} of {walked}:\n' + '\n'.join(failures)


@pytest.mark.parametrize('name', CONFIGS)
def test_impossible_combinations_are_one_error_line_naming_a_field(name, launchers, tmp_path):
  method = load_config(name).method
  failures = []
  for only, overrides, field in COMBINATIONS:
    if only in (None, method):
      for which in launchers_for(method):
        problem = check_refused(launchers, which, overridden(name, overrides), field, tmp_path)
        if problem:
          failures.append(f'{which} {overrides}: {problem}')
  assert not failures, '\n'.join(failures)


def test_every_config_is_valid_as_shipped_and_with_the_zeros_that_mean_something():
  for name in CONFIGS:
    config = load_config(name)
    check = methods.module(config.method).check_config
    check(config)
    for path, _ in leaves(config):
      if path in ZERO_OK:
        check(overridden(name, {path: 0}))


def test_evaluate_refuses_a_regression_config_in_one_line(launchers, tmp_path):
  code, stderr = launch(launchers, 'evaluate', load_config('demo_regression'), tmp_path)
  assert code and stderr.strip().splitlines() == [stderr.strip()] and stderr.startswith('error: --config must be')


@pytest.mark.slow
@pytest.mark.parametrize(
  'script, args',
  [
    ('train.py', ['--config=configs/demo_srim.py:runlocal', '--config.imle.pool_size=-8']),
    ('evaluate.py', ['--config=configs/demo.py:runlocal', '--config.evaluate.nn_chunk_size=0']),
    ('sample.py', ['--config=configs/demo_srgan.py:runlocal', '--config.srgan.adam_b1=1.5', '--input=README.md']),
  ],
)
def test_the_command_line_says_the_same(tmp_path, script, args):
  out = subprocess.run(
    [
      sys.executable,
      f'launch/{script}',
      *args,
      f'--workdir={tmp_path / "run"}',
      *([f'--output={tmp_path / "out"}'] if script == 'sample.py' else []),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  field = args[1].split('=')[0].lstrip('-')
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith('error: ') and field in out.stderr.strip().splitlines()[-1]
  assert os.listdir(tmp_path) == []
