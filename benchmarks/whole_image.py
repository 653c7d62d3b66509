"""Whole-image super-resolution (imle/whole_image.py, launch/sample.py --whole_image): time and peak memory of one
photo of a given size through SRIM or SRGAN at the config's sizes, in tiles.

  python benchmarks/whole_image.py --size=1000x750                       # SRIM, configs/imagenet_srim.py
  python benchmarks/whole_image.py --config=configs/imagenet_srgan.py --size=1000x750
  python benchmarks/whole_image.py --size=4000x3000 --tile=128          # a 12-megapixel photo

Untrained weights (batch norm at its initial averages): the cost does not depend on them. The photo is random uint8.
Reported: wall time of the whole image after compiling each tile shape once on a first, smaller run of the same
tiling; throughput in output megapixels per second; the process's peak RSS (CPU) or the device's peak bytes.
"""

import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from common.config import from_config  # noqa: E402  (after the path)
from imle import models, srgan_models, whole_image  # noqa: E402

config_flags.DEFINE_config_file(
  'config', os.path.join(_REPO, 'configs', 'imagenet_srim.py'), 'SRIM or SRGAN config.', lock_config=False
)
flags.DEFINE_string('size', '1000x750', 'The low-res photo, WIDTHxHEIGHT; the output is 4x each side.')
flags.DEFINE_integer('tile', 64, 'Low-res pixels per tile side.')
flags.DEFINE_integer('overlap', -1, 'Context pixels; -1 = the receptive radius.')


def tile_fn_and_radius(config):
  side = config.data.lowres_size
  if config.method == 'srim':
    cfg = from_config(models.SRIMConfig, config.model, 'config.model')
    model = models.SRIM(cfg)
    noises = [
      jnp.zeros((1, side * 2 ** (s + 1), side * 2 ** (s + 1), cfg.noise_channels)) for s in range(cfg.num_stages)
    ]
    variables = model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), noises)
    return (
      whole_image.srim_tile_fn(model, variables),
      whole_image.srim_receptive_radius(cfg),
      whole_image.srim_noises(cfg, jax.random.key(1)),
    )
  cfg = from_config(srgan_models.SRGANConfig, config.model, 'config.model')
  model = srgan_models.Generator(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))
  return whole_image.srgan_tile_fn(model, variables), whole_image.srgan_receptive_radius(cfg), lambda *window: ()


def main(argv):
  del argv
  config = flags.FLAGS.config
  width, height = (int(v) for v in flags.FLAGS.size.lower().split('x'))
  fn, radius, noises = tile_fn_and_radius(config)
  overlap = radius if flags.FLAGS.overlap < 0 else flags.FLAGS.overlap
  tile = flags.FLAGS.tile
  photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
  # Every tile shape of the big run (interior, right and bottom edges, corners) appears in a 3x3-tile image with the
  # same remainders; compiling them there keeps compilation out of the timing.
  warm_h = min(height, 2 * tile + (height % tile or tile))
  warm_w = min(width, 2 * tile + (width % tile or tile))
  whole_image.super_resolve(fn, photo[:warm_h, :warm_w], 4, tile=tile, overlap=overlap, noises=noises)
  start = time.perf_counter()
  out = whole_image.super_resolve(fn, photo, 4, tile=tile, overlap=overlap, noises=noises)
  seconds = time.perf_counter() - start
  stats = jax.devices()[0].memory_stats() or {}
  peak = (
    f'{stats["peak_bytes_in_use"] / 2**30:.2f} GiB on the device'
    if 'peak_bytes_in_use' in stats
    else f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak RSS'
  )
  print(
    f'{config.method} {width}x{height} -> {out.shape[1]}x{out.shape[0]}, tiles {tile} + {overlap} context, '
    f'{jax.devices()[0].device_kind}: {seconds:.1f} s ({out.shape[0] * out.shape[1] / 1e6 / seconds:.3f} output '
    f'megapixels/s), {peak}'
  )


if __name__ == '__main__':
  app.run(main)
