"""The paper's CelebA train step on this machine's CPU: our jitted JAX step against a plain PyTorch eager port of the
same network (benchmarks/torch_pixelsr.py) in the same precision, timed side by side in one process, with the
machine's dense-matmul rate.

  pip install -e '.[bench]'
  python benchmarks/cpu_train_step.py [--config=celeba_pixelcnn] [--batch_size=32] [--rounds=3] [--steps=3] \
      [--dtypes=float32,bfloat16] [--prior_convs=auto,xla] [--parts=1,4]

The pairs: float32 against the port in float32, and bfloat16 (`config.model.dtype='bfloat16'`: bf16 matmul and
convolution inputs, matmuls summed in f32; parameters, logits, softmax and loss in f32) against the port under
`torch.autocast('cpu', dtype=torch.bfloat16)`, the one line a PyTorch user adds. All start from the same parameters
(the JAX init copied into torch) on the same uint8 batch, and their first losses are printed side by side. Each round
runs a block of steps of every port, then of ours, then of every port again (load drifts; torch runs before and after
ours); a block's first step is untimed (stepping the two alternately left torch's spinning OpenMP threads on the
cores while the next JAX step started). The median over all timed steps is reported, with the minimum. Both use every
core (torch.set_num_threads(os.cpu_count())). FLOPs are XLA's count of the compiled JAX step, used for all.
`--prior_convs` times those values of `config.model.prior_convs` ('auto' = the prior's convolutions as matmuls on a
CPU in bf16, and in float32 from 64 channels; 'xla' = XLA's convolution). `--parts` times the step with the batch
differentiated in that many parts (`config.train_batch_parts`; 0 = the library's choice). GFLOP/s divide the
smallest of the contenders' XLA counts (the matmul form counts kh - 1 rows per image more than the convolution does,
which it computes and drops).
Results go in benchmarks/README.md.
"""

import importlib
import itertools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_pixelsr
from absl import app, flags

from common import cli, sharding, trainer
from pixelsr import models, train

flags.DEFINE_string('config', 'celeba_pixelcnn', 'Config module under configs/ (its model and data sizes).')
flags.DEFINE_integer('batch_size', 32, 'Batch size of both steps.')
flags.DEFINE_integer('rounds', 3, 'Rounds; each runs a block of steps of every contender in turn.')
flags.DEFINE_integer('steps', 3, 'Timed steps per block, after one untimed warm-up step.')
flags.DEFINE_list(
  'dtypes',
  ['float32', 'bfloat16'],
  "Precisions to time, ours and torch's alike: 'float32' (both f32) and 'bfloat16' (ours: config.model.dtype; "
  "torch: the forward under torch.autocast('cpu', dtype=torch.bfloat16)).",
)
flags.DEFINE_list('prior_convs', ['auto'], "config.model.prior_convs values to time ('auto', 'xla', 'matmul').")
flags.DEFINE_bool(
  'profile_torch', False, "After timing, torch.profiler's ops by self CPU time for one step of each port."
)
flags.DEFINE_list('parts', ['0'], 'config.train_batch_parts values to time (0 = auto: 4 on a CPU at batch 32).')
FLAGS = flags.FLAGS


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """The machine's dense n x n x n matmul rate through JAX (f32; bf16 inputs with f32 accumulation) and torch."""

  def best(fn):
    fn()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9

  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  b = a.astype(jnp.bfloat16)
  f32 = jax.jit(lambda a: a @ a)
  bf16 = jax.jit(lambda b: jnp.matmul(b, b, preferred_element_type=jnp.float32))
  t = torch.from_numpy(np.asarray(a))
  return {
    'jax f32': best(lambda: f32(a).block_until_ready()),
    'jax bf16 in, f32 out': best(lambda: bf16(b).block_until_ready()),
    'torch f32': best(lambda: t @ t),
  }


def jax_step(config, batch_size: int, parts: int):
  config.unlock()
  config.batch_size = batch_size
  config.train_batch_parts = parts
  cfg = train.model_config(config)
  mesh = sharding.data_mesh(jax.devices()[:1])
  state = train.create_train_state(config, jax.random.key(0), mesh)
  step, _ = train.compile_steps(train.setup(config, mesh), state)
  return cfg, state, step


def main(argv):
  del argv
  torch.set_num_threads(os.cpu_count())
  config = importlib.import_module(f'configs.{FLAGS.config}').get_config()
  d, b = config.data, FLAGS.batch_size
  rng = np.random.default_rng(0)
  lowres = rng.integers(0, 256, (b, d.lowres_size, d.lowres_size, 3), np.uint8)
  highres = rng.integers(0, 256, (b, d.highres_size, d.highres_size, 3), np.uint8)
  print(
    f'CPU: {os.cpu_count()} cores; jax {jax.__version__} ({jax.devices()[0].device_kind}), '
    f'torch {torch.__version__}; {FLAGS.config}, batch {b}; GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES")}'
  )
  for name, rate in matmul_gflops().items():
    print(f'dense 2048^3 matmul, {name}: {rate:.0f} GFLOP/s')

  steps = {}
  for dtype, prior_convs, parts in itertools.product(FLAGS.dtypes, FLAGS.prior_convs, map(int, FLAGS.parts)):
    config.unlock().model.update(dtype=dtype, prior_convs=prior_convs)
    convs = 'matmuls' if models.prior_convs_as_matmul(train.model_config(config)) else 'convolutions'
    num_parts = trainer.batch_parts(parts, b, sharding.data_mesh(jax.devices()[:1]))
    name = f'{dtype}, prior convolutions as {convs}, {num_parts} parts'
    if name in steps:  # 'auto' chose what another value names
      continue
    cfg, state, step = jax_step(config, b, parts)
    batch = {'lowres': jnp.asarray(lowres), 'highres': jnp.asarray(highres)}
    cost = step.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost)['flops'])
    steps[name] = dict(state=state, step=step, batch=batch, flops=flops, times=[])
  first = next(iter(steps.values()))
  network_flops = min(s['flops'] for s in steps.values())
  nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  torch_batch = nchw(lowres), nchw(highres)
  # One port per precision, each from the same initial parameters (a step changes them).
  torch_steps = {}
  for dtype in FLAGS.dtypes:
    model = torch_pixelsr.PixelRecursiveSR(cfg)
    torch_pixelsr.load_flax_params(model, jax.device_get(first['state'].params))
    torch_steps[dtype] = dict(step=torch_pixelsr.make_train_step(model, autocast=dtype == 'bfloat16'), times=[])

  def jax_block(s):
    times = []
    for _ in range(FLAGS.steps + 1):
      t0 = time.perf_counter()
      s['state'], metrics = s['step'](s['state'], s['batch'], jax.random.key(0))
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
      s.setdefault('first_loss', float(metrics['loss']))
    s['times'] += times[1:]

  def torch_block(t):
    times = []
    for _ in range(FLAGS.steps + 1):
      t0 = time.perf_counter()
      loss = t['step'](*torch_batch)
      times.append(time.perf_counter() - t0)
      t.setdefault('first_loss', float(loss))
    t['times'] += times[1:]

  for _ in range(FLAGS.rounds):  # torch before and after ours in every round, as load drifts.
    for t in torch_steps.values():
      torch_block(t)
    for s in steps.values():
      jax_block(s)
    for t in torch_steps.values():
      torch_block(t)

  torch_names = {'float32': 'torch eager f32', 'bfloat16': 'torch eager, autocast bf16'}
  for dtype, t in torch_steps.items():
    t['median'] = statistics.median(t['times'])
    print(
      f'{torch_names[dtype]}: {t["median"]:.2f} s/step (min {min(t["times"]):.2f}), first loss '
      f'{t["first_loss"]:.5f}, {network_flops / 1e9 / t["median"]:.0f} GFLOP/s'
    )
  if FLAGS.profile_torch:  # Op by op, to set beside benchmarks/profile_step.py's table of ours.
    for dtype, t in torch_steps.items():
      with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t['step'](*torch_batch)
      print(f'{torch_names[dtype]}, one step:')
      print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=18))
  for name, s in steps.items():
    jax_s = statistics.median(s['times'])
    same = torch_steps[name.split(',')[0]]  # The port in the same precision.
    print(
      f'jax {name}: {jax_s:.2f} s/step (min {min(s["times"]):.2f}), first loss {s["first_loss"]:.5f}, '
      f'XLA counts {s["flops"] / 1e9:.1f} GFLOP/step, {network_flops / 1e9 / jax_s:.0f} GFLOP/s | torch / jax in '
      f'the same precision = {same["median"] / jax_s:.2f}x',
      flush=True,
    )


if __name__ == '__main__':
  cli.use_huge_pages()  # As the launchers do; GLIBC_TUNABLES=glibc.malloc.hugetlb=0 measures 4 KiB pages.
  app.run(main)
