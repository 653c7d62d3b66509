"""Sampling speed of the paper's CelebA model (32x32x3): the cached sampler end to end against the naive one.

  python benchmarks/sampling.py [--config=celeba_pixelcnn] [--batch_sizes=1,32] [--naive_steps=48,6]

The cached sampler (`pixelsr.sampling.sample`) is timed end to end: conditioning net, every sub-pixel, on the
device, after a separate compile. The naive sampler re-runs the whole network for each of the H*W*C sub-pixels; it
is timed on its first `naive_steps` sub-pixels (`num_subpixels`, after a separate compile) and scaled by the exact
step count, H*W*C / naive_steps: each of its steps is the same full forward pass. Both sample the same batch sharded
over all local devices. Results go in benchmarks/README.md.

Per batch size it also counts, in the compiled cached sampler, the operations that launch a kernel (fusions, library
calls such as cuBLAS, copies) in one step of the pixel loop: below a few hundred images per call the GPU sampler is
bound by these launches, not by arithmetic. `--naive_steps=0` skips the naive sampler. `--pixel_kernels=xla,pallas`
times each colour-pass implementation (config.model.pixel_kernel) side by side; the naive sampler is the same for
both.
"""

import dataclasses
import importlib
import time

import jax
import numpy as np
from absl import app, flags

from common import hlo_launches, sharding
from pixelsr import models, sampling, train

flags.DEFINE_string('config', 'celeba_pixelcnn', 'Config module under configs/ (its model and data sizes).')
flags.DEFINE_list('batch_sizes', ['1', '32'], 'Images per call.')
flags.DEFINE_list('naive_steps', ['48', '6'], 'Sub-pixels the naive sampler is timed on, one per batch size.')
flags.DEFINE_integer('repeats', 2, 'Timed runs of the cached sampler; the fastest is reported.')
flags.DEFINE_list('pixel_kernels', ['xla'], "config.model.pixel_kernel values to time: 'xla', 'pallas'.")
FLAGS = flags.FLAGS


def timed(fn, *args, repeats=1):
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def measure(model, variables, batch_size: int, naive_steps: int, shape: tuple[int, int, int], lowres_size: int):
  mesh = sharding.data_mesh()
  lowres = np.random.default_rng(0).integers(0, 256, (batch_size, lowres_size, lowres_size, shape[-1]), np.uint8)
  lowres = jax.device_put(
    lowres, sharding.batch_sharding(mesh) if batch_size % mesh.size == 0 else sharding.replicated(mesh)
  )
  key, tau = jax.random.key(0), jax.numpy.float32(1.0)
  t0 = time.perf_counter()
  cached = sampling._sample_cached.lower(model, variables, lowres, key, tau, greedy=False, num_samples=1).compile()
  cached_compile = time.perf_counter() - t0
  cached_s = timed(cached, variables, lowres, key, tau, repeats=FLAGS.repeats)
  launches = hlo_launches.pixel_step(cached.as_text(), shape[1])
  total_steps = int(np.prod(shape))
  out = dict(
    batch=batch_size,
    cached_compile_s=cached_compile,
    cached_s=cached_s,
    cached_images_per_s=batch_size / cached_s,
    cached_ms_per_subpixel=1e3 * cached_s / total_steps,
    launches=launches,
  )
  if not naive_steps:
    return out
  naive = sampling._sample_naive.lower(
    model, variables, lowres, key, tau, greedy=False, num_samples=1, num_subpixels=naive_steps
  ).compile()
  naive_step_s = timed(naive, variables, lowres, key, tau) / naive_steps
  naive_s = naive_step_s * total_steps
  return dict(
    out,
    naive_ms_per_step=1e3 * naive_step_s,
    naive_steps=naive_steps,
    naive_est_s=naive_s,
    naive_images_per_s=batch_size / naive_s,
    speedup=naive_s / cached_s,
  )


def main(argv):
  del argv
  config = importlib.import_module(f'configs.{FLAGS.config}').get_config()
  cfg = train.model_config(config)
  d = config.data
  shape = (d.highres_size, d.highres_size, cfg.num_colours)
  model = models.PixelRecursiveSR(cfg)
  variables = model.init(
    jax.random.key(0),
    np.zeros((1, d.lowres_size, d.lowres_size, cfg.num_colours), np.uint8),
    np.zeros((1, *shape), np.uint8),
  )
  print(
    f'device: {jax.devices()[0].device_kind} x {jax.device_count()} ({jax.default_backend()}); '
    f'{FLAGS.config} model, {"x".join(map(str, shape))} outputs = {np.prod(shape)} sub-pixels'
  )
  for batch, steps in zip(map(int, FLAGS.batch_sizes), map(int, FLAGS.naive_steps)):
    for kernel in FLAGS.pixel_kernels:
      kernel_model = models.PixelRecursiveSR(dataclasses.replace(cfg, pixel_kernel=kernel))
      r = measure(kernel_model, variables, batch, steps, shape, d.lowres_size)
      launches = ', '.join(f'{v} {k}' for k, v in sorted(r['launches'].items()))
      naive = (
        ''
        if not steps
        else (
          f' | naive {r["naive_ms_per_step"]:.1f} ms/step timed on {r["naive_steps"]} steps, x {np.prod(shape)} '
          f'steps = {r["naive_est_s"]:.0f} s ({r["naive_images_per_s"]:.4f} images/s) | speedup {r["speedup"]:.0f}x'
        )
      )
      print(
        f'batch {r["batch"]}, {kernel} colour passes: cached {r["cached_s"]:.2f} s ({r["cached_images_per_s"]:.2f} '
        f'images/s, {r["cached_ms_per_subpixel"]:.3f} ms/sub-pixel; compile {r["cached_compile_s"]:.1f} s; one '
        f'pixel launches {sum(r["launches"].values())} kernels: {launches}){naive}',
        flush=True,
      )


if __name__ == '__main__':
  app.run(main)
