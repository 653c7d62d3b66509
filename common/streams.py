"""What every input source shares: the resumable example streams, the process split, tfds' not-prepared error.

common.data (the photo sources) and common.mnist (MNIST corners) both build on these; neither imports the other's
private helpers.

The training order is a function of (seed, example index) only: epoch e of a source with n items is a permutation
keyed by (seed, -1 - e), and example i's random draws (crops, augmentation) are keyed by (seed, i), so a stream
started at `start_index` is the one an uninterrupted run would be reading. Eval streams use EVAL_SEED whatever the
training seed, so runs with different seeds are evaluated on the same examples.
"""

import dataclasses
import math
import os

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from common.errors import UserError

EVAL_SEED = 2**31 - 1


class DatasetNotFoundError(UserError):
  """A tfds dataset that is not prepared on this machine, or that tfds does not know."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which rows of each global batch this process yields."""

  index: int
  count: int
  batch: int

  @property
  def global_batch(self) -> int:
    return self.batch * self.count

  def global_index(self, local: tf.Tensor) -> tf.Tensor:
    """Local example number -> index in the global stream (row-block split of each batch)."""
    step, row = local // self.batch, local % self.batch  # pyright: ignore[reportOperatorIssue]  (tf stubs lack %)
    return step * self.global_batch + self.index * self.batch + row

  def owns(self, index: tf.Tensor) -> tf.Tensor:
    return (index % self.global_batch) // self.batch == self.index  # pyright: ignore[reportOperatorIssue]  (tf stubs)


def options() -> tf.data.Options:
  result = tf.data.Options()
  result.deterministic = True
  # Parallelism comes from the parallel maps; single-threaded ops leave cores for JAX.
  result.threading.max_intra_op_parallelism = 1
  return result


def quantize(x: tf.Tensor) -> tf.Tensor:
  """Same rule as common.images.quantize: round half to even, clip to [0, 255]."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def example_seed(seed: int, index: tf.Tensor) -> tf.Tensor:
  """The int64 [2] key of example `index`'s random draws."""
  return tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])


def epoch_stream(num_items: int, seed: int, start_index: int, shard: Shard) -> tf.data.Dataset:
  """{'index', 'item'}: this process's part of an endless stream of shuffled epochs.

  Epoch e is a permutation of the items keyed by (seed, -1 - e) (negative, so it never
  shares a key with an example, keyed by (seed, index >= 0)); the stream starts at
  start_index without generating the epochs before it.
  """
  first_epoch = start_index // num_items

  def epoch(e):
    keys = tf.random.stateless_uniform([num_items], seed=tf.stack([tf.constant(seed, tf.int64), -1 - e]))
    return tf.data.Dataset.from_tensor_slices(
      {  # pyright: ignore[reportArgumentType]  (tf stubs: a dict of tensors is a nest)
        'index': e * num_items + tf.range(num_items, dtype=tf.int64),
        'item': tf.argsort(keys),
      }
    )

  stream = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  return stream.skip(start_index - first_epoch * num_items).filter(lambda x: shard.owns(x['index']))


def eval_indices(num_examples: int, shard: Shard) -> tf.data.Dataset:
  """This process's rows of the eval stream 0 .. num_examples - 1, in order."""
  local_count = math.ceil(num_examples / shard.global_batch) * shard.batch
  indices = tf.data.Dataset.range(local_count).map(shard.global_index)
  return indices.filter(lambda i: i < num_examples)


def indexed_examples(
  load_item, num_items: int, split: str, num_eval: int, *, shard: Shard, seed: int, start_index: int
) -> tf.data.Dataset:
  """{'image', 'seed'} (eval: and 'mask') of a source whose items (files, photos, digits) `load_item(item)` reads by
  number: shuffled epochs for 'train', the first `num_eval` items in order for any eval split."""
  if split == 'train':
    stream = epoch_stream(num_items, seed, start_index, shard)
    return stream.map(
      lambda x: {'image': load_item(x['item']), 'seed': example_seed(seed, x['index'])},
      num_parallel_calls=tf.data.AUTOTUNE,
    )
  indices = eval_indices(num_eval, shard)
  return indices.map(
    lambda i: {'image': load_item(i % num_items), 'seed': example_seed(EVAL_SEED, i), 'mask': True},
    num_parallel_calls=tf.data.AUTOTUNE,
  )


def not_prepared_message(builder: tfds.core.DatasetBuilder, data_cfg: ml_collections.ConfigDict) -> str:
  """What to run to prepare the tfds dataset data_cfg.name, which `builder` did not find."""
  data_dir = os.fspath(builder.data_dir_root)
  name = data_cfg.name
  message = (
    f'tfds dataset {name!r} is not prepared in {data_dir} (make_dataset never downloads). '
    f'Prepare it once, on a machine with internet: `tfds build {name} --data_dir={data_dir}`, or in '
    f'Python `tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare()`. To use data '
    'prepared elsewhere, copy that data_dir to this machine and pass --config.data.tfds_data_dir=<it>.'
  )
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions:
    manual_dir = data_cfg.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
    message += (
      f' {name} needs files downloaded by hand into {manual_dir} (set with '
      f'--config.data.manual_dir; `tfds build --manual_dir=...`): {instructions.strip()}'
    )
  return message
