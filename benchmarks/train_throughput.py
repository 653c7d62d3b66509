"""Training throughput of the paper configs: steps/s, images/s, FLOPs per step, achieved FLOP/s, peak memory, and
how the step time scales with the number of devices.

  python benchmarks/train_throughput.py [--configs=celeba_pixelcnn,lsun_pixelcnn] [--batch_size=32] [--steps=5]
  python benchmarks/train_throughput.py --configs=celeba_pixelcnn --devices=1,2,4,8   # scaling, global batch fixed
  python benchmarks/train_throughput.py --configs=celeba_pixelcnn --dtypes=float32,bfloat16   # mixed precision

Runs the real jitted train step, sharded over the first n local devices (all by default), on random uint8 batches
of the config's sizes, in each compute dtype of --dtypes (config.model.dtype). FLOPs come from XLA's cost analysis of
the compiled step. Memory: the process's peak RSS (host) and, where the backend reports it (GPU/TPU), the device's
peak_bytes_in_use. Each (config, dtype) runs in a process of its own, so each peak is its own. Results go in
benchmarks/README.md.
"""

import importlib
import resource
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from common import cli, sharding
from pixelsr import train

flags.DEFINE_list('configs', ['celeba_pixelcnn', 'lsun_pixelcnn'], 'Config modules under configs/.')
flags.DEFINE_integer('batch_size', 32, 'Global batch size.')
flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile + warm-up step).')
flags.DEFINE_list('devices', [], 'Device counts to time the step on (a mesh over the first n); default: all.')
flags.DEFINE_list('dtypes', ['float32'], "config.model.dtype values to time ('float32', 'bfloat16').")
FLAGS = flags.FLAGS


def peak_memory_gib() -> tuple[float, float | None]:
  """(host peak RSS, device peak bytes in use or None), in GiB."""
  stats = jax.local_devices()[0].memory_stats() or {}
  device = stats['peak_bytes_in_use'] / 2**30 if 'peak_bytes_in_use' in stats else None
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, device


def measure(name: str, batch_size: int, steps: int, num_devices: int, dtype: str) -> dict:
  config = importlib.import_module(f'configs.{name}').get_config()
  config.unlock().model.dtype = dtype
  cfg = train.model_config(config)
  mesh = sharding.data_mesh(jax.devices()[:num_devices])
  state = train.create_train_state(config, jax.random.key(0), mesh)
  config.batch_size = batch_size
  step, _ = train.compile_steps(train.setup(config, mesh), state)
  rng = np.random.default_rng(0)
  d = config.data
  batch = sharding.to_global(
    {
      'lowres': rng.integers(0, 256, (batch_size, d.lowres_size, d.lowres_size, cfg.num_colours), np.uint8),
      'highres': rng.integers(0, 256, (batch_size, d.highres_size, d.highres_size, cfg.num_colours), np.uint8),
    },
    mesh,
  )
  key = jax.random.key(0)
  compiled = step.lower(state, batch, key).compile()
  cost = compiled.cost_analysis()
  # XLA reports one device's share of the SPMD program.
  flops = num_devices * float((cost[0] if isinstance(cost, list) else cost).get('flops', float('nan')))
  state, metrics = step(state, batch, key)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t0) / steps
  host, device = peak_memory_gib()
  return dict(
    config=name,
    dtype=dtype,
    devices=num_devices,
    params=sum(x.size for x in jax.tree.leaves(state.params)),
    step_s=seconds,
    steps_per_s=1 / seconds,
    images_per_s=batch_size / seconds,
    gflop_per_step=flops / 1e9,
    achieved_gflops=flops / 1e9 / seconds,
    host_gib=host,
    device_gib=device,
  )


def main(argv):
  del argv
  if len(FLAGS.configs) * len(FLAGS.dtypes) > 1:  # One process each, so each peak-memory figure is its own.
    for name in FLAGS.configs:
      for dtype in FLAGS.dtypes:
        subprocess.run(
          [
            sys.executable,
            __file__,
            f'--configs={name}',
            f'--dtypes={dtype}',
            f'--batch_size={FLAGS.batch_size}',
            f'--steps={FLAGS.steps}',
            f'--devices={",".join(FLAGS.devices)}',
          ],
          check=True,
        )
    return
  print(
    f'device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}), '
    f'batch {FLAGS.batch_size}, {FLAGS.steps} timed steps'
  )
  counts = [int(n) for n in FLAGS.devices] or [jax.device_count()]
  if not all(1 <= n <= jax.device_count() for n in counts):
    sys.exit(
      f'error: --devices={",".join(FLAGS.devices)} asks for more devices than the {jax.device_count()} there '
      'are (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8).'
    )
  for n in counts:
    r = measure(FLAGS.configs[0], FLAGS.batch_size, FLAGS.steps, n, FLAGS.dtypes[0])
    device = '' if r['device_gib'] is None else f' | {r["device_gib"]:.2f} GiB device peak'
    print(
      f'{r["config"]} ({r["dtype"]}) on {r["devices"]} device(s): {r["params"]:,} params | '
      f'{r["step_s"]:.3f} s/step | '
      f'{r["steps_per_s"]:.3f} steps/s | {r["images_per_s"]:.1f} images/s | {r["gflop_per_step"]:.1f} GFLOP/step | '
      f'{r["achieved_gflops"]:.1f} GFLOP/s | {r["host_gib"]:.2f} GiB host peak RSS{device}',
      flush=True,
    )


if __name__ == '__main__':
  cli.use_huge_pages()  # As the launchers do; GLIBC_TUNABLES=glibc.malloc.hugetlb=0 measures 4 KiB pages.
  app.run(main)
