"""SRIM's training stream: the pools of images the IMLE noises are chosen for, and the rows of each step.

With K = steps_per_pool and P = pool_size, pool p is trained on by steps p*K + 1 ... (p+1)*K; its images are examples
p*P ... (p+1)*P - 1 of the training stream, so a run resumed inside a pool re-reads the pool it was training on. The
rows of each step are a fixed function of (seed, pool, step in the pool) (imle.pool_rows). See imle/train.py for how
the loop's step selects the noises of each new pool.
"""

import itertools
from collections.abc import Iterator

import ml_collections
import numpy as np

from common import data
from imle import imle


def pool_batches(
  config: ml_collections.ConfigDict, imle_cfg: imle.IMLEConfig, start_step: int, process_index: int, process_count: int
) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of each step's batch: pool rows (images + 'pool_index'), plus the whole pool's rows
  ('pool_lowres', 'pool_highres', 'pool_row') at the first step of each pool. Every process reads the whole pool."""
  size, per_pool = imle_cfg.pool_size, imle_cfg.steps_per_pool
  batch, pool_part = (
    config.batch_size // process_count,
    slice(process_index * size // process_count, (process_index + 1) * size // process_count),
  )
  stream = data.make_dataset(
    config.data,
    'train',
    batch_size=size,
    seed=config.seed,
    start_index=start_step // per_pool * size,
    process_index=0,
    process_count=1,
  )
  pool = None
  for step in itertools.count(start_step):  # `step` = state.step before the step.
    number, local_step = divmod(step, per_pool)
    if pool is None or local_step == 0:
      pool = next(stream)
    rows = imle.pool_rows(config.seed, number, local_step, config.batch_size, size)
    rows = rows[process_index * batch : (process_index + 1) * batch]
    out = {'lowres': pool['lowres'][rows], 'highres': pool['highres'][rows], 'pool_index': rows}
    if local_step == 0:
      out.update(
        pool_lowres=pool['lowres'][pool_part],
        pool_highres=pool['highres'][pool_part],
        pool_row=np.arange(size, dtype=np.int32)[pool_part],
      )
    yield out
