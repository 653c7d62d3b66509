"""Fixtures shared by test modules."""
import jax
import pytest


@pytest.fixture(scope='module')
def compile_once(tmp_path_factory):
  """For a module whose runs differ only in steps and workdirs: a persistent cache compiles their identical programs
  once. Use with `pytestmark = pytest.mark.usefixtures('compile_once')`."""
  settings = {'jax_compilation_cache_dir': str(tmp_path_factory.mktemp('jax_cache')),
              'jax_persistent_cache_min_compile_time_secs': 0.0, 'jax_persistent_cache_min_entry_size_bytes': -1}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  yield
  for name, value in before.items():
    jax.config.update(name, value)
