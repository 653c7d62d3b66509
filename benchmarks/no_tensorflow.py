"""Runs a benchmark where TensorFlow is not installed, e.g. a CUDA image with JAX alone:

  python benchmarks/no_tensorflow.py benchmarks/sampling.py --batch_sizes=1,32

The library imports TensorFlow (tf.data pipelines) and clu imports TensorBoard at module import, but the benchmarks'
timed paths use random or in-memory batches and write no summaries. This stubs those packages before the script
runs: any attribute is a placeholder, and nothing of them executes. A script that does read data through tf.data
fails here instead of running. Scripts that start subprocesses of themselves (train_throughput.py with several
configs or dtypes) lose the stubs there: give them one of each.
"""

import importlib.abc
import importlib.machinery
import runpy
import sys
import types

STUBBED = ('tensorflow', 'tensorflow_datasets', 'tensorboard', 'tensorflow_metadata')


class _Missing:
  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    if attr.startswith('__'):
      raise AttributeError(attr)
    return _Missing(f'{self._name}.{attr}')

  def __call__(self, *args, **kwargs):
    return _Missing(f'{self._name}()')

  def __mro_entries__(self, bases):
    return (object,)

  def __or__(self, other):
    return self

  __ror__ = __or__

  def __getitem__(self, item):
    return self

  def __iter__(self):
    return iter(())


class _Module(types.ModuleType):
  def __getattr__(self, attr):
    if attr.startswith('__'):
      raise AttributeError(attr)
    return _Missing(f'{self.__name__}.{attr}')


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in STUBBED:
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _Module(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


sys.meta_path.insert(0, _Finder())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
