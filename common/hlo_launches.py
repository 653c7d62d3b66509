"""Kernel launches in a compiled XLA program, read from its optimized HLO text (`compiled.as_text()`).

On a GPU every fusion, library call (cuBLAS/cuDNN custom-call) and copy left in the optimized program is a kernel
launch; in a loop of short steps (the cached sampler's pixel scan) their count, not their arithmetic, sets the time.
`benchmarks/sampling.py` prints the count of one pixel step for each batch size.
"""

import collections
import re

# Operations that move no data on any backend.
_FREE = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast', 'after-all'}


def _computations(hlo: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r'(?:ENTRY )?%?([\w.-]+) \(.*\{$', line)
    if header:
      name = header.group(1)
      comps[name] = []
    elif name and line.startswith('  '):
      comps[name].append(line)
  return comps


def _body(line: str) -> str:
  """The body computation of a while instruction's line."""
  match = re.search(r'body=%?([\w.-]+)', line)
  if match is None:
    raise ValueError(f'a while instruction without a body: {line!r}')
  return match.group(1)


def _opcode(line: str) -> str:
  op = re.search(r' ([a-z][\w-]*)\(', line.split(' = ', 1)[-1])
  return op.group(1) if op else ''


def _launches(comps: dict, name: str) -> collections.Counter:
  """Kernel-launching ops of one run of computation `name`, a loop's body counted once per trip (fused
  computations are inside their fusion's one launch)."""
  count = collections.Counter()
  for line in comps[name]:
    op = _opcode(line)
    if op in _FREE:
      continue
    if op == 'while':
      body = _body(line)
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      for k, v in _launches(comps, body).items():
        count[k] += v * (int(trips.group(1)) if trips else 1)
    elif op in ('call', 'conditional', 'async-start'):
      for callee in re.findall(r'(?:to_apply|calls|branch_computations)=\{?%?([\w.-]+)', line):
        count.update(_launches(comps, callee))
    else:
      count[
        'fusion' if op == 'fusion' else 'library call' if op in ('custom-call', 'dot', 'convolution') else 'other'
      ] += 1
  return count


def pixel_step(hlo: str, width: int) -> collections.Counter:
  """The kernel launches of one pixel of the cached sampler's compiled program: the body of the innermost loop of
  `width` trips (the pixel scan inside the row scan)."""
  comps = _computations(hlo)
  loops = {}
  for lines in comps.values():
    for line in lines:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      if _opcode(line) == 'while' and trips and int(trips.group(1)) == width:
        loops[_body(line)] = None
  nested = {
    body
    for body in loops
    if not any(
      re.search(rf'body=%?{re.escape(inner)}\b', line) for inner in loops if inner != body for line in comps[body]
    )
  }
  if len(nested) != 1:
    raise ValueError(f'expected one innermost loop of {width} trips, found {len(nested)}')
  return _launches(comps, nested.pop())
