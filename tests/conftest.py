"""Fixtures shared by test modules."""

import os

import jax
import pytest


@pytest.fixture(scope='module')
def compile_once(tmp_path_factory):
  """For a module whose runs differ only in steps and workdirs: a persistent cache compiles their identical programs
  once. Use with `pytestmark = pytest.mark.usefixtures('compile_once')`."""
  settings = {
    'jax_compilation_cache_dir': str(tmp_path_factory.mktemp('jax_cache')),
    'jax_persistent_cache_min_compile_time_secs': 0.0,
    'jax_persistent_cache_min_entry_size_bytes': -1,
  }
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  yield
  for name, value in before.items():
    jax.config.update(name, value)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny trained pixel recursive workdir (5 steps), trained once per module that asks for it."""
  from pixelsr import train
  from tests.helpers import tiny_config

  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(tiny_config(num_train_steps=5), workdir)
  return workdir


# The unit tier (`pytest -m unit`), run on every change: models, layers, losses, metrics, config and the golden steps,
# the tests of these modules that are not `slow`, less the paper-size ones below. Listed here, in one place, so that
# the tier's time (under 2 minutes on a 2-core CPU: README.md) is kept in view when a test is added.
UNIT_MODULES = frozenset(
  {
    'common/test_config_defaults.py',
    'common/test_daala_metrics.py',
    'common/test_golden_steps.py',
    'common/test_images.py',
    'common/test_imresize.py',
    'common/test_imports.py',
    'common/test_metrics.py',
    'common/test_progress.py',
    'common/test_sr_space.py',
    'pixelsr/test_models.py',
    'study/test_study_protocol.py',
    'study/test_study_storage.py',
  }
)
NOT_UNIT = frozenset({'test_paper_size_prior_receptive_field'})


def pytest_collection_modifyitems(config, items):
  del config
  root = os.path.dirname(os.path.abspath(__file__))
  for item in items:
    module = os.path.relpath(str(item.path), root).replace(os.sep, '/')
    name = getattr(item, 'originalname', item.name)
    if module in UNIT_MODULES and name not in NOT_UNIT and item.get_closest_marker('slow') is None:
      item.add_marker(pytest.mark.unit)
