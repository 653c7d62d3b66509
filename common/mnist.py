"""MNIST corners (section 3.2 of the pixel recursive paper): MNIST digits, and pairs whose output is the input digit
scaled into the upper-left or the upper-right corner, each with probability 1/2.

Digits come from the raw IDX files (config.data.mnist_source='idx': the official t10k file, 10,000 digits, of which
the last config.data.mnist_eval_digits are held out) or from tfds 'mnist' ('tfds': train_split / eval_split). Where
config.data.mnist_dir does not exist (a clone without the lab's shared data), 'idx' falls back to tfds. Each
pair is uint8 with one grey channel, white ink on black as in MNIST:

  lowres:  the 28x28 digit, antialiased bicubic resize to lowres_size, rounded.
  highres: a black highres_size canvas holding the digit resized the same way to corner_digit_size, its top row on
           row 0 and its left column on column 0 (upper-left) or its right column on the last column (upper-right).

The corner is a stateless draw keyed by (seed, example index), the index counting examples over all epochs: a
digit met again in a later epoch draws its corner afresh, and a resumed run sees the pairs an uninterrupted one would.
Eval pairs use a fixed key whatever the seed (common.streams.EVAL_SEED, as common.data's eval crops).
"""

import functools
import gzip
import math
import os
import struct
import zlib

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from common import streams
from common.errors import UserError

IDX_IMAGES = 't10k-images-idx3-ubyte.gz'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNSIGNED_BYTE = 0x08  # IDX type code; MNIST's images and labels are both unsigned bytes.


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """An IDX file of unsigned bytes (gzipped if its name ends in .gz) as a uint8 array of the shape in its header.

  Raises:
    OSError: the file cannot be opened.
    ValueError: not gzip (for .gz) or truncated gzip, a bad magic number, a type other than unsigned byte, or a
      size that does not match the header (truncated or trailing bytes); the message names the file.
  """
  path = os.fspath(path)
  try:
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
      raw = f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f'{path} is not a complete gzip file ({e})') from e
  if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] != _UNSIGNED_BYTE:
    raise ValueError(
      f'{path} is not an IDX file of unsigned bytes: its magic number is {raw[:4].hex() or "missing"}, not 000008<ndim>'
    )
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = struct.unpack(f'>{ndim}I', raw[4:header]) if len(raw) >= header else None
  if shape is None or len(raw) != header + math.prod(shape):
    expected = 'a header' if shape is None else f'{header + math.prod(shape)} bytes for shape {shape}'
    raise ValueError(
      f'{path} holds {len(raw)} bytes where its header promises {expected}: the file is '
      f'{"truncated" if shape is None or len(raw) < header + math.prod(shape) else "too long"}'
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def mnist_dir(data_cfg: ml_collections.ConfigDict) -> str:
  """config.data.mnist_dir; a relative path starts at the repository root, so the default works from any cwd."""
  return os.path.join(REPO, os.path.expanduser(data_cfg.mnist_dir))


def load_digits(data_cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """uint8 (N, 28, 28): the digits of `split` ('train' or 'eval') from config.data.mnist_source."""
  if data_cfg.mnist_source == 'tfds':
    return _tfds_digits(data_cfg, split)
  if data_cfg.mnist_source != 'idx':
    raise UserError(f"config.data.mnist_source must be 'idx' or 'tfds', got {data_cfg.mnist_source!r}")
  folder = mnist_dir(data_cfg)
  if not os.path.isdir(folder):
    return _fallback_digits(data_cfg, split, folder)
  path = os.path.join(folder, IDX_IMAGES)
  try:
    digits = read_idx(path)
    if digits.ndim != 3:
      raise ValueError(f'{path} holds an array of shape {digits.shape}, not images (N, height, width)')
  except (OSError, ValueError) as e:
    raise UserError(
      f'Cannot read the MNIST digits: {e}. Pass --config.data.mnist_dir=<the folder holding '
      f'{IDX_IMAGES}> (a relative path starts at {REPO}), or use tfds mnist: '
      '--config.data.mnist_source=tfds'
    ) from e
  held_out = data_cfg.mnist_eval_digits
  if not 0 < held_out < len(digits):
    raise UserError(
      f'config.data.mnist_eval_digits must be in [1, {len(digits) - 1}] (the file holds {len(digits)} '
      f'digits), got {held_out}'
    )
  return digits[-held_out:] if split == 'eval' else digits[:-held_out]


def _fallback_digits(data_cfg: ml_collections.ConfigDict, split: str, folder: str) -> np.ndarray:
  """tfds mnist, for a clone without the shared folder of IDX files (the default mnist_dir is the lab's)."""
  logging.warning('MNIST: %s (config.data.mnist_dir) does not exist; reading tfds %r instead.', folder, data_cfg.name)
  try:
    return _tfds_digits(data_cfg, split)
  except streams.DatasetNotFoundError as e:
    data_dir = os.fspath(tfds.builder(data_cfg.name, data_dir=data_cfg.tfds_data_dir or None).data_dir_root)
    # tfds 4.9's command line imports apache_beam, which tensorflow-datasets does not install; the Python call
    # needs nothing more.
    raise streams.DatasetNotFoundError(
      f'No MNIST digits: {folder} (config.data.mnist_dir) does not exist, and tfds {data_cfg.name!r}, the '
      f'fallback, is not prepared in {data_dir}. Prepare it once, on a machine with internet: `python -c "import '
      f"tensorflow_datasets as tfds; tfds.builder('{data_cfg.name}', data_dir='{data_dir}').download_and_prepare()"
      f'"`, or `tfds build {data_cfg.name} --data_dir={data_dir}` (its command line needs `pip install '
      f'apache-beam`); or pass --config.data.mnist_dir=<the folder holding {IDX_IMAGES}>, or '
      f'--config.data.tfds_data_dir=<a data_dir where it is prepared>.'
    ) from e


def _tfds_digits(data_cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
  try:
    builder = tfds.builder(data_cfg.name, data_dir=data_cfg.tfds_data_dir or None)
  except tfds.core.DatasetNotFoundError as e:
    raise streams.DatasetNotFoundError(f'tfds has no dataset named {data_cfg.name!r}: check --config.data.name') from e
  split_name = data_cfg.train_split if split == 'train' else data_cfg.eval_split
  try:
    batches = builder.as_dataset(split=split_name, batch_size=4096)  # pyright: ignore[reportCallIssue]  (tfds' decorator)
  except AssertionError as e:  # What tfds raises for a dataset missing from data_dir (as in common.data).
    if builder.is_prepared():
      raise
    raise streams.DatasetNotFoundError(streams.not_prepared_message(builder, data_cfg)) from e
  return np.concatenate([batch['image'][..., 0] for batch in tfds.as_numpy(batches)])  # 47 MB for 60k digits.


def check_fields(data_cfg: ml_collections.ConfigDict) -> None:
  if not 2 <= data_cfg.mnist_grey_levels <= 256:
    raise UserError(f'config.data.mnist_grey_levels must be in [2, 256], got {data_cfg.mnist_grey_levels}')
  size, digit = data_cfg.highres_size, data_cfg.corner_digit_size
  if not 0 < digit <= size // 2:
    raise UserError(
      f'config.data.corner_digit_size must be in [1, highres_size // 2 = {size // 2}] so that the digit '
      f'stays in its upper quadrant, got {digit}'
    )


def corner_pair(example: dict[str, tf.Tensor], data_cfg: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """{'image': uint8 (28, 28, 1) digit, 'seed': int64 [2], maybe 'mask'} -> {'lowres', 'highres', maybe 'mask'}."""
  digit = tf.cast(example['image'], tf.float32)
  lowres, small = (
    _resize(digit, size, data_cfg.mnist_grey_levels) for size in (data_cfg.lowres_size, data_cfg.corner_digit_size)
  )
  free = data_cfg.highres_size - data_cfg.corner_digit_size
  left = tf.where(tf.random.stateless_uniform([], seed=example['seed']) < 0.5, 0, free)
  highres = tf.pad(small, [[0, free], [left, free - left], [0, 0]])  # pyright: ignore[reportArgumentType]  (tf stubs)
  highres.set_shape([data_cfg.highres_size, data_cfg.highres_size, 1])
  pair = {'lowres': lowres, 'highres': highres}
  if 'mask' in example:
    pair['mask'] = example['mask']
  return pair


def _resize(digit: tf.Tensor, size: int, levels: int) -> tf.Tensor:
  """Antialiased bicubic resize, then rounding to the nearest of `levels` grey levels spread evenly over 0..255."""
  step = 255 / (levels - 1)
  return streams.quantize(tf.round(tf.image.resize(digit, [size, size], 'bicubic', antialias=True) / step) * step)


def corner_pairs(
  data_cfg: ml_collections.ConfigDict, split: str, *, shard: streams.Shard, seed: int, start_index: int
) -> tuple[tf.data.Dataset, int]:
  """make_dataset's source 'mnist_corners': this process's pairs of `split`, and the number of eval examples.

  Training permutes the digits afresh each epoch and eval takes the held-out digits in order, with common.streams
  (the same row split over processes as common.data's 'embedded' and 'folder' sources).
  """
  check_fields(data_cfg)
  digits = load_digits(data_cfg, split)
  num_eval = min(data_cfg.num_eval_examples, len(digits)) if data_cfg.num_eval_examples > 0 else len(digits)
  table = tf.constant(digits[..., None])
  examples = streams.indexed_examples(
    lambda item: table[item], len(digits), split, num_eval, shard=shard, seed=seed, start_index=start_index
  )
  pairs = examples.map(functools.partial(corner_pair, data_cfg=data_cfg), num_parallel_calls=tf.data.AUTOTUNE)
  return pairs, num_eval
