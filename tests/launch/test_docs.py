"""README.md, docs/ and benchmarks/README.md stay true: every relative link leads to a file, and every command line
they name runs a script that exists, with flags that script defines, config files that exist and `--config.*`
fields those configs have."""

import glob
import importlib
import os
import re
import shlex
import tomllib

import pytest

from tests.helpers import REPO

PAGES = ['README.md', 'benchmarks/README.md', *sorted(os.path.relpath(p, REPO) for p in glob.glob(f'{REPO}/docs/*.md'))]
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
COMMAND = re.compile(r'\bpython3? ((?:launch|examples|benchmarks)/[\w/]+\.py)\b(.*)')
# absl's own flags, which every absl script accepts.
ABSL_FLAGS = {
  'verbosity',
  'v',
  'help',
  'helpfull',
  'helpshort',
  'logtostderr',
  'alsologtostderr',
  'flagfile',
  'log_dir',
  'stderrthreshold',
  'only_check_args',
}
DEFINED = re.compile(r"""(?:DEFINE_\w+|add_argument)\(\s*['"](?:--)?(\w+)['"]""")


def links(text: str) -> list[str]:
  return [t for t in LINK.findall(text) if not re.match(r'(https?|mailto):|#', t)]


def commands(text: str) -> list[tuple[str, list[str]]]:
  """(script, its arguments) of every `python <script>.py ...` in the text: in code blocks (with `\\` continuations)
  and in inline code."""
  text = text.replace('\\\n', ' ')
  found = []
  for line in text.splitlines():
    for match in COMMAND.finditer(line):
      rest = re.split(r'`|&&|\||;|\s#\s|\s#$', match.group(2))[0]
      try:
        args = shlex.split(rest)
      except ValueError:  # An unbalanced quote in prose: the words up to it.
        args = rest.split()
      found.append((match.group(1), args))
  return found


def script_flags(script: str) -> set[str]:
  with open(os.path.join(REPO, script)) as f:
    names = set(DEFINED.findall(f.read()))
  return names | ABSL_FLAGS | {f'no{n}' for n in names}


def config_fields(path_and_arg: str) -> set[str] | None:
  """The dotted fields of a config file (`configs/x.py[:arg]`), or None if it is not a config file of configs/."""
  path, _, arg = path_and_arg.partition(':')
  if not re.fullmatch(r'configs/\w+\.py', path):
    return None
  config = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}').get_config(arg or None)
  fields = set()

  def walk(node, prefix):
    for key in node:
      fields.add(prefix + key)
      if hasattr(node[key], 'keys'):
        walk(node[key], f'{prefix}{key}.')

  walk(config, '')
  return fields


def problems_of_command(script: str, args: list[str]) -> list[str]:
  if not os.path.exists(os.path.join(REPO, script)):
    return [f'{script} does not exist']
  found, defined = [], script_flags(script)
  config = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  if config is None and 'config' in defined and script.startswith('launch/'):
    config = 'configs/demo.py'
  for arg in args:
    if not arg.startswith('-') or arg in ('-', '--') or '...' in arg:
      continue
    name = arg.lstrip('-').split('=', 1)[0]
    if name.startswith('config.'):
      fields = config_fields(config) if config else None
      if fields is not None and name[len('config.') :] not in fields:
        found.append(f'{script}: {config} has no field {name}')
    elif name not in defined and not re.fullmatch(r'v|\d+', name):
      found.append(f'{script} defines no flag --{name}')
    elif name == 'config' and '=' in arg and config_fields(arg.split('=', 1)[1]) is None:
      path = arg.split('=', 1)[1].partition(':')[0]
      if path.endswith('.py') and not os.path.exists(os.path.join(REPO, path)):
        found.append(f'{script}: --config={path} does not exist')
  return found


def problems_of_page(text: str, page_dir: str) -> list[str]:
  found = []
  for target in links(text):
    path = target.split('#', 1)[0]
    if path and not os.path.exists(os.path.normpath(os.path.join(page_dir, path))):
      found.append(f'link to {target}: no such file')
  for script, args in commands(text):
    found += problems_of_command(script, args)
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    markers = tomllib.load(f)['tool']['pytest']['ini_options']['markers']
  known = {m.split(':')[0] for m in markers}
  for expression in re.findall(r'pytest[^`\n]*?-m (?:"([^"]+)"|(\w+))', text):
    for word in re.findall(r'\w+', ''.join(expression)):
      if word not in {'not', 'and', 'or'} | known:
        found.append(f'pytest -m names no marker {word!r}')
  return found


@pytest.mark.parametrize('page', PAGES)
def test_links_and_commands_of_the_page_exist(page):
  with open(os.path.join(REPO, page)) as f:
    text = f.read()
  assert problems_of_page(text, os.path.dirname(os.path.join(REPO, page))) == []


def test_the_checker_finds_a_broken_link_an_unknown_flag_a_missing_field_and_marker():
  text = (
    'See [the page](docs/no_such_page.md) and [a figure](docs/figure2.png).\n'
    '```bash\npython launch/train.py --config=configs/demo.py --no_such_flag=1 \\\n'
    '    --config.model.no_such_field=3 --config.model.prior_channels=8\n```\n'
    '`python launch/no_such_script.py --x` and `pytest -q -m "unit and not fast"`.\n'
  )
  assert problems_of_page(text, REPO) == [
    'link to docs/no_such_page.md: no such file',
    'launch/train.py defines no flag --no_such_flag',
    'launch/train.py: configs/demo.py has no field config.model.no_such_field',
    'launch/no_such_script.py does not exist',
    "pytest -m names no marker 'fast'",
  ]


def test_the_readme_is_a_map():
  with open(os.path.join(REPO, 'README.md')) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 200
  assert lines[0].startswith('# ') and lines[2] == '```bash' and 'launch/train.py' in lines[3]
  assert "pip install -e '.[test]' && pytest -q" in lines[6]
