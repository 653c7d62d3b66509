"""Where the time of one pixel recursive train step goes, per XLA operation, grouped by the layer it comes from.

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python benchmarks/profile_step.py [--config=celeba_pixelcnn] \
      [--dtype=bfloat16]

Traces one compiled step (loss and gradients, after a warm-up) with `jax.profiler`, reads the per-op durations back
from the Perfetto trace, and names each op by its HLO: the root instruction of a fusion and the `op_name` JAX gave it
(`jvp(...)` = forward, `transpose(jvp(...))` = backward; weight-gradient convolutions carry no name). Layer numbers
are folded (`gated3` -> `gatedN`), so the table adds up each kind of layer. Durations are wall time per op summed over
XLA's threads, so the total exceeds the step when ops overlap; on a machine shared with other jobs they inflate.
"""

import collections
import glob
import gzip
import importlib
import json
import re
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from common import cli, sharding, trainer
from pixelsr import losses, models, train

flags.DEFINE_string('config', 'celeba_pixelcnn', 'Config module under configs/ (its model and data sizes).')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_integer('top', 30, 'Rows of the table.')
flags.DEFINE_integer('parts', 0, 'config.train_batch_parts (0 = auto: 4 on a CPU at batch 32).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'config.model.dtype.')
flags.DEFINE_enum(
  'group',
  'layer',
  ['layer', 'instruction'],
  "'layer': by the op and layer JAX named; 'instruction': by XLA's fusion kind and output shape (what the unnamed "
  'converts, copies and concatenations are).',
)
FLAGS = flags.FLAGS


def describe_ops(hlo: str) -> dict[str, str]:
  """HLO instruction name -> 'opcode op_name' of what it computes (a fusion's root instruction)."""
  roots = {}
  for comp in re.finditer(r'\n%(\S+) \(.*?\{\n(.*?)\n\}', hlo, re.S):
    root = re.search(r'ROOT \S+ = \S+ ([\w-]+)\((.*)', comp.group(2))
    if root:
      name = re.search(r'op_name="([^"]+)"', root.group(2))
      roots[comp.group(1)] = f'{root.group(1)} {name.group(1) if name else ""}'
  described = {}
  for line in hlo[hlo.index('ENTRY') :].splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = \S+ ([\w-]+)\(', line)
    if m:
      calls = re.search(r'calls=%([^,\s]+)', line)
      name = re.search(r'op_name="([^"]+)"', line)
      described[m.group(1)] = roots.get(calls.group(1)) if calls else f'{m.group(2)} {name.group(1) if name else ""}'
  return described


def instruction_kinds(hlo: str) -> dict[str, str]:
  """HLO instruction name -> 'kind shape': its name without the number (`copy_bitcast_fusion`, `ynn_fusion` = a
  matmul) and its output shape, so that the fusions XLA leaves unnamed add up by what they move."""
  kinds = {}
  for line in hlo[hlo.index('ENTRY') :].splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+) ', line)
    if m:
      kinds[m.group(1)] = re.sub(r'[.]\d+$', '', m.group(1)) + ' ' + m.group(2)
  return kinds


def main(argv):
  del argv
  config = importlib.import_module(f'configs.{FLAGS.config}').get_config()
  config.unlock().model.dtype = FLAGS.dtype
  cfg, d, b = train.model_config(config), config.data, FLAGS.batch_size
  rng = np.random.default_rng(0)
  lowres = rng.integers(0, 256, (b, d.lowres_size, d.lowres_size, cfg.num_colours), np.uint8)
  highres = rng.integers(0, 256, (b, d.highres_size, d.highres_size, cfg.num_colours), np.uint8)
  model = models.PixelRecursiveSR(cfg)
  params = model.init(jax.random.key(0), lowres[:1], highres[:1])['params']

  def loss(params, batch):
    return losses.loss_and_metrics(
      *model.apply({'params': params}, batch['lowres'], batch['highres']), batch['highres'], config.loss
    )

  parts = trainer.batch_parts(FLAGS.parts, b, sharding.data_mesh(jax.devices()[:1]))
  batch = {'lowres': lowres, 'highres': highres}
  step = jax.jit(lambda params: trainer.value_and_grad_in_parts(loss, params, batch, parts)[1])
  jax.block_until_ready(step(params))
  t0 = time.perf_counter()
  jax.block_until_ready(step(params))
  print(
    f'{FLAGS.config}, batch {b} in {parts} parts: {time.perf_counter() - t0:.2f} s for loss and gradients (untraced)'
  )
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      jax.block_until_ready(step(params))
    trace_file = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)['traceEvents']
  hlo = step.lower(params).compile().as_text()
  described = describe_ops(hlo) if FLAGS.group == 'layer' else instruction_kinds(hlo)
  by_kind = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in described:
      kind = re.sub(r'gated\d+', 'gatedN', described[e['name']] or '?').replace('jit(loss)/', '')
      by_kind[kind] += e['dur'] / 1e3
  if not by_kind:
    raise SystemExit('error: the trace holds no XLA ops; run with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true.')
  total = sum(by_kind.values())
  print(f'{total:.0f} ms in XLA ops (summed over threads)')
  for kind, ms in by_kind.most_common(FLAGS.top):
    print(f'{ms:8.0f} ms {100 * ms / total:5.1f}%  {kind[:150]}')


if __name__ == '__main__':
  cli.use_huge_pages()  # As the launchers do; GLIBC_TUNABLES=glibc.malloc.hugetlb=0 measures 4 KiB pages.
  app.run(main)
