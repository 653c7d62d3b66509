"""One gated layer's 3x5 vertical convolution alone, forward and forward + backward, as XLA's convolution and as
`layers.conv_as_matmul`, in float32 and bf16: what `config.model.prior_convs='auto'` chooses between on a CPU.

  python benchmarks/prior_convs.py [--batch_size=8] [--channels=64] [--repeats=20]

Times are medians of `--repeats` calls of the jitted function; the gradient is that of a fixed cotangent with respect
to the input and the kernel. Results go in benchmarks/README.md.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from common import cli
from pixelsr import layers

flags.DEFINE_integer('batch_size', 8, 'Examples (a part of the CelebA batch of 32 in 4 parts).')
flags.DEFINE_integer('channels', 64, 'config.model.prior_channels: the input has p channels, the output 2p.')
flags.DEFINE_integer('size', 32, 'Image side.')
flags.DEFINE_integer('repeats', 20, 'Timed calls per function.')
FLAGS = flags.FLAGS


def median_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main(argv):
  del argv
  b, s, p = FLAGS.batch_size, FLAGS.size, FLAGS.channels
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.standard_normal((3, 5, p, 2 * p)) * 0.05, jnp.float32)
  bias = jnp.zeros((2 * p,), jnp.float32)
  g = jnp.asarray(rng.standard_normal((b, s, s, 2 * p)), jnp.float32)
  print(f'{jax.devices()[0].device_kind}, {b} x {s} x {s} x {p} -> {2 * p}, kernel 3x5')
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.asarray(rng.standard_normal((b, s, s, p)), dtype)
    for as_matmul in (False, True):
      f = lambda x, k, m=as_matmul, d=dtype: layers.row_conv(x, k, bias, 2, 2, jnp.dtype(d), m).astype(jnp.float32)
      both = jax.jit(lambda x, k, f=f: jax.vjp(f, x, k)[1](g))
      name = 'matmul form' if as_matmul else 'XLA convolution'
      print(
        f'{jnp.dtype(dtype).name:8s} {name:16s} forward {median_ms(jax.jit(f), x, kernel):6.2f} ms, '
        f'forward + backward {median_ms(both, x, kernel):6.2f} ms',
        flush=True,
      )


if __name__ == '__main__':
  cli.use_huge_pages()
  app.run(main)
