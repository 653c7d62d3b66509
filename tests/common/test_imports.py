"""The library's import graph, read from the source with `ast`: `common/` sits below the methods, and no module
imports itself through others (imports inside functions count: they are the same dependency, only later)."""

import ast
import os

import pytest

from tests.helpers import REPO

ROOT = REPO
PACKAGES = ('common', 'pixelsr', 'imle', 'launch', 'configs')


def library_modules() -> dict[str, str]:
  """Dotted module name -> file, for every .py file of the library's packages."""
  modules = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          modules[dotted.removesuffix('.__init__')] = path
  return modules


def imports_of(source: str, module: str, known: set[str]) -> set[str]:
  """The library modules `source` (the text of `module`) imports, at any depth of the file. `from a import b` counts
  as `a.b` when that is a module, else as `a`."""
  found = set()
  package = module if module in {m.rsplit('.', 1)[0] for m in known if '.' in m} else module.rsplit('.', 1)[0]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      names = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:  # `import a.b.c` of a package: the nearest library module.
        name = name.rpartition('.')[0]
      if name and name != module:
        found.add(name)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = library_modules()
  known = set(modules)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      graph[module] = imports_of(f.read(), module, known)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as its modules in order (the first repeated at the end), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


@pytest.fixture(scope='module')
def graph():
  return import_graph()


def test_the_parser_sees_imports_at_every_depth():
  known = {'common', 'common.train_loop', 'common.errors', 'pixelsr', 'pixelsr.train', 'pixelsr.models'}
  source = (
    'from common import train_loop\nimport common.errors\n'
    'def f():\n  from pixelsr import models\n  from . import models as m\n'
  )
  assert imports_of(source, 'pixelsr.train', known) == {'common.train_loop', 'common.errors', 'pixelsr.models'}


def test_known_edges_are_found(graph):
  assert 'common.train_loop' in graph['pixelsr.train']
  assert 'common.checkpoint' in graph['common.train_loop']


def test_find_cycle_reports_a_circle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_common_imports_no_method(graph):
  upward = sorted(
    f'{m} -> {n}'
    for m, targets in graph.items()
    if m.split('.')[0] == 'common'
    for n in targets
    if n.split('.')[0] in ('pixelsr', 'imle', 'launch')
  )
  assert not upward, f'common/ imports a method or a launcher: {upward}'


def test_no_import_circle(graph):
  cycle = find_cycle(graph)
  assert cycle is None, 'import circle: ' + ' -> '.join(cycle or [])
