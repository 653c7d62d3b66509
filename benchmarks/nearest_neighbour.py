"""Time and memory of table 1's nearest-neighbour search (`pixelsr.baselines.nearest_neighbours`) as the database grows.

  python benchmarks/nearest_neighbour.py [--sizes=10000,100000,1000000] [--queries=1000] [--chunk_size=4096]

Synthetic 8x8x3 uint8 low-res vectors with 32x32x3 high-res counterparts, as the paper's (LSUN: 3M entries). The
database is a cycle over `--distinct_chunks` random chunks already on the device, so the figures are the search
itself (distances, argmin, the running best and its high-res gather), not data loading or host-to-device copies.
Sizes run in ascending order in one process: the peak memory (device peak_bytes_in_use on GPU/TPU, the process's
peak RSS on CPU) is a running maximum, so a bounded search shows the same peak for every size. Results go in
benchmarks/README.md.
"""

import resource
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from pixelsr import baselines

flags.DEFINE_list('sizes', ['10000', '100000', '1000000'], 'Database sizes (entries), run in ascending order.')
flags.DEFINE_integer('queries', 1000, 'Low-res query images searched for at once.')
flags.DEFINE_integer('chunk_size', 4096, 'Database entries per device step.')
flags.DEFINE_integer('distinct_chunks', 4, 'Random chunks the synthetic database cycles over.')
FLAGS = flags.FLAGS


def peak_memory_gib() -> tuple[float, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'host peak RSS'


def synthetic_database(size: int, chunks: list[tuple[jax.Array, jax.Array]], chunk_size: int):
  for start in range(0, size, chunk_size):
    lowres, highres = chunks[(start // chunk_size) % len(chunks)]
    count = min(chunk_size, size - start)
    yield lowres[:count], highres[:count]


def main(argv):
  del argv
  sizes = sorted(int(s) for s in FLAGS.sizes)
  keys = jax.random.split(jax.random.key(0), 2 * FLAGS.distinct_chunks + 1)
  random_uint8 = lambda key, shape: jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
  queries = random_uint8(keys[-1], (FLAGS.queries, 8, 8, 3))
  chunks = [
    (
      random_uint8(keys[2 * i], (FLAGS.chunk_size, 8, 8, 3)),
      random_uint8(keys[2 * i + 1], (FLAGS.chunk_size, 32, 32, 3)),
    )
    for i in range(FLAGS.distinct_chunks)
  ]
  # Compile and warm up, with each size's short last chunk (its slice and padding compile too), so the timings
  # below are the search only.
  for size in sizes:
    warm_up = synthetic_database(size % FLAGS.chunk_size or FLAGS.chunk_size, chunks, FLAGS.chunk_size)
    jax.block_until_ready(baselines.nearest_neighbours(queries, warm_up, FLAGS.chunk_size))
  print(
    f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.queries} queries, '
    f'chunk {FLAGS.chunk_size}'
  )
  for size in sizes:
    t0 = time.perf_counter()
    found = baselines.nearest_neighbours(queries, synthetic_database(size, chunks, FLAGS.chunk_size), FLAGS.chunk_size)
    jax.block_until_ready(found)
    seconds = time.perf_counter() - t0
    memory, kind = peak_memory_gib()
    held = size * (8 * 8 * 3 + 32 * 32 * 3) / 2**30
    print(
      f'{size:,} entries: {seconds:.2f} s | {size * FLAGS.queries / seconds / 1e9:.2f} G distances/s | '
      f'{memory:.2f} GiB {kind} (the database itself: {held:.2f} GiB)',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
