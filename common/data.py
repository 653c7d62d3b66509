"""Input pipelines: batches of {'lowres', 'highres'} uint8 images from three sources.

Sources (data_cfg.source): 'tfds' (a prepared tfds dataset such as celeb_a or lsun/bedroom),
'folder' (a user's own images) and 'embedded' (colour photos shipped inside scikit-image,
for runs without any download). Every source runs the same steps:

  decode -> crop (data_cfg.crop) -> antialiased bicubic resize to highres_size -> round
  half to even, clip -> highres uint8 -> [training only: data_cfg.augment] -> bicubic resize
  of that uint8 image to lowres_size (data_cfg.resize) -> round, clip -> lowres uint8.

The source -> highres resize is always antialiased: without it a 178-pixel face shrunk to
32 pixels aliases. data_cfg.resize selects the highres -> lowres operator the model learns
to invert: 'antialiased' (tf.image.resize(..., antialias=True), the default), 'no_antialias'
(tf.image.resize(..., antialias=False)) or 'tf1' (tf.compat.v1.image.resize_bicubic: Keys
a = -0.75, no half-pixel centres, the operator of TF1-era code such as the pixel recursive
paper's). common.images.resize computes the same three on the JAX side.

Splits: 'train' (endless, shuffled), 'eval' (the held-out examples) and, for a 'folder' with
data_cfg.num_unseen_classes > 0, 'eval_unseen': every image of the last N class subfolders,
which 'train' and 'eval' then never see (SRIM's test images of classes unseen in training).

A fourth source, 'mnist_corners' (common/mnist.py), makes grey (1-channel) pairs of its own in
the same streams (common/streams.py): lowres is an MNIST digit, highres the digit moved into
an upper corner.

The training order is a function of (seed, example index) only, so `start_index` (the
number of examples a run has consumed) resumes exactly where an uninterrupted run would be.
Random crops and the augmentation draw from stateless generators keyed by (seed, index).
"""

import contextlib
import functools
import math
import os
import re
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import skimage.data
import tensorflow as tf
import tensorflow_datasets as tfds

from common import mnist, streams
from common.errors import UserError
from common.images import RESIZE_METHODS, ImageError, load_image
from common.streams import DatasetNotFoundError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
EMBEDDED_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina')
SPLITS = ('train', 'eval', 'eval_unseen')
AUGMENTATIONS = ('none', 'flip_rot90')
# Fixes which files of a folder are held out; changing it would leak eval files into training.
_FOLDER_SPLIT_SEED = 0


def make_dataset(
  data_cfg: ml_collections.ConfigDict,
  split: str,
  *,
  batch_size: int,
  seed: int = 0,
  start_index: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches for this process: {'lowres': uint8 (b, l, l, 3), 'highres': uint8 (b, h, h, 3)}.

  Args:
    data_cfg: the data config (configs/defaults.py: data_config()).
    split: 'train' (infinite, shuffled), 'eval' (finite: num_eval_examples held-out
      examples, each exactly once, in a fixed order, with a bool 'mask' (b,) that is
      False on the padding that fills the last batches) or 'eval_unseen' (as 'eval', of the
      images of the classes held out by data_cfg.num_unseen_classes; 'folder' only).
    batch_size: the global batch size; this process yields batch_size // process_count.
    seed: training order, random crops and augmentation (eval splits ignore it: see
      common.streams.EVAL_SEED).
    start_index: examples already consumed (step * batch_size); the stream starts where
      an uninterrupted run would be. A multiple of batch_size.
    process_index: this process; defaults to jax.process_index().
    process_count: defaults to jax.process_count().

  'embedded', 'folder' and 'mnist_corners' split each global batch by rows: process p gets rows
  [p * b, (p + 1) * b), so the processes' batches concatenated are the global batch. 'tfds'
  gives each process its own part of the split (tfds.split_for_jax_process). For 'eval',
  every process yields the same number of batches, ceil(num_examples / batch_size).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} must be a positive multiple of the process count {process_count}')
  if start_index < 0 or start_index % batch_size:
    raise ValueError(f'start_index {start_index} must be a non-negative multiple of batch_size {batch_size}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} must be in [0, {process_count})')
  sources = {
    'tfds': _tfds_examples,
    'folder': _folder_examples,
    'embedded': _embedded_examples,
    'mnist_corners': mnist.corner_pairs,
  }
  if data_cfg.source not in sources:
    raise UserError(f'config.data.source must be one of {sorted(sources)}, got {data_cfg.source!r}')
  _check_fields(data_cfg, split)
  _hide_gpus_from_tf()
  shard = streams.Shard(process_index, process_count, batch_size // process_count)
  examples, num_eval = sources[data_cfg.source](data_cfg, split, shard=shard, seed=seed, start_index=start_index)

  if data_cfg.source == 'mnist_corners':  # Grey pairs of its own: lowres is not a downsample of highres.
    ds, channels = examples, 1
  else:
    augment = split == 'train' and data_cfg.augment != 'none'
    ds = examples.map(
      functools.partial(_make_pair, data_cfg=data_cfg, augment=augment), num_parallel_calls=tf.data.AUTOTUNE
    )
    channels = 3
  if split != 'train':
    size = data_cfg.highres_size, data_cfg.lowres_size
    padding = tf.data.Dataset.from_tensors(
      {
        'highres': tf.zeros([size[0], size[0], channels], tf.uint8),
        'lowres': tf.zeros([size[1], size[1], channels], tf.uint8),
        'mask': False,
      }
    ).repeat()
    ds = ds.concatenate(padding).take(math.ceil(num_eval / batch_size) * shard.batch)
  ds = ds.batch(shard.batch, drop_remainder=True).prefetch(2)
  return _numpy_batches(ds.with_options(streams.options()))


def _check_fields(data_cfg: ml_collections.ConfigDict, split: str) -> None:
  if data_cfg.crop not in ('celeba', 'centre', 'random', 'none'):
    raise UserError(f"config.data.crop must be 'celeba', 'centre', 'random' or 'none', got {data_cfg.crop!r}")
  if data_cfg.resize not in RESIZE_METHODS:
    raise UserError(f'config.data.resize must be one of {list(RESIZE_METHODS)}, got {data_cfg.resize!r}')
  if data_cfg.augment not in AUGMENTATIONS:
    raise UserError(f'config.data.augment must be one of {list(AUGMENTATIONS)}, got {data_cfg.augment!r}')
  if data_cfg.augment != 'none' and data_cfg.source == 'mnist_corners':
    raise UserError(
      "config.data.augment must be 'none' with source='mnist_corners': a vertical flip or a rotation "
      'would move the digit into a lower corner, which the task never shows'
    )
  unseen = data_cfg.num_unseen_classes
  if not isinstance(unseen, int) or unseen < 0:
    raise UserError(f'config.data.num_unseen_classes must be an integer >= 0, got {unseen!r}')
  if unseen and data_cfg.source != 'folder':
    raise UserError(
      f'config.data.num_unseen_classes={unseen} holds out class subfolders of an image folder, but '
      f'config.data.source is {data_cfg.source!r}: use --config.data.source=folder, or set '
      '--config.data.num_unseen_classes=0'
    )
  if split == 'eval_unseen' and not unseen:
    raise UserError(
      "The 'eval_unseen' split needs held-out classes: set config.data.num_unseen_classes > 0 "
      "(source='folder', one subfolder per class)"
    )


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates as numpy; a bad image file surfaces as ImageError, not as a TF op error.

  The TF iterator is dropped before any error leaves: the error's traceback would otherwise keep it alive until the
  interpreter shuts down, and deleting it then waits forever on its in-flight numpy_function calls (they need the
  GIL, which a finalizing interpreter no longer hands out). Callers close() the generator for the same reason.
  """
  batches = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      error = e.with_traceback(None)  # TF's frames in the traceback hold the iterator.
    else:
      yield batch  # pyright: ignore[reportReturnType]  (tensorflow's stubs type as_numpy_iterator's items as arrays)
      continue
    batches = error.__context__ = None
    bad_file = re.search(r'ImageError: (.*)', error.message)
    if bad_file:
      raise ImageError(bad_file.group(1))  # TF's trace says nothing more.
    raise error


def _hide_gpus_from_tf() -> None:
  """JAX owns the accelerators; TF would otherwise reserve GPU memory for the input pipeline."""
  with contextlib.suppress(RuntimeError):  # TF already initialised its devices: the first caller's choice stands.
    tf.config.set_visible_devices([], 'GPU')


def lowres_from_highres(highres: tf.Tensor, lowres_size: int, method: str = 'antialiased') -> tf.Tensor:
  """uint8 (H, W, 3) -> uint8 (lowres_size, lowres_size, 3): the model's input, by `method` (config.data.resize)."""
  size, highres = [lowres_size, lowres_size], tf.cast(highres, tf.float32)
  if method == 'tf1':
    # The op behind tf.compat.v1.image.resize_bicubic, without its deprecation warning.
    resized = tf.raw_ops.ResizeBicubic(images=highres[None], size=size, align_corners=False, half_pixel_centers=False)[
      0
    ]
  else:
    resized = tf.image.resize(highres, size, 'bicubic', antialias=method == 'antialiased')
  return streams.quantize(resized)


def augment_square(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """One of the 8 flips and 90-degree rotations of a square (S, S, C) image, each with probability 1/8, keyed by
  `seed` (int64 [2]): a horizontal flip, a vertical flip and a transpose, each with probability 1/2 and in that
  order, as the augmentation of BasicSR, on which the SRIM authors' PyTorch port is built."""
  key = tf.random.experimental.stateless_fold_in(seed, 1)  # pyright: ignore[reportAttributeAccessIssue]  (not in tensorflow's stubs)  # Not the crop's key: the draws must be independent.
  flip_h, flip_v, transpose = tf.unstack(tf.random.stateless_uniform([3], seed=key) < 0.5)
  image = tf.where(flip_h, image[:, ::-1], image)
  image = tf.where(flip_v, image[::-1], image)
  return tf.where(transpose, tf.transpose(image, [1, 0, 2]), image)


def crop_image(image: tf.Tensor, data_cfg: ml_collections.ConfigDict, seed: tf.Tensor) -> tf.Tensor:
  """Cuts the square that data_cfg.crop asks for from an (H, W, C) image.

  'celeba': data_cfg.celeba_crop_box = (top, left, size), for 178x218 aligned CelebA.
  'centre': the largest centred square (odd margins put the extra pixel bottom/right).
  'random': side uniform in [min(random_crop_min, s), min(random_crop_max, s)] with
    s = min(H, W), then a uniform position; `seed` (int64 [2]) keys the stateless draw.
  'none': the whole image, which the square resize then scales anisotropically (SRIM's data).
  """
  if data_cfg.crop == 'none':
    return image
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  if data_cfg.crop == 'celeba':
    top, left, size = data_cfg.celeba_crop_box
    return tf.image.crop_to_bounding_box(image, top, left, size, size)
  if data_cfg.crop == 'centre':
    side = tf.minimum(h, w)
    return image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
  u = tf.random.stateless_uniform([3], seed=seed)
  largest = tf.minimum(h, w)
  low = tf.minimum(data_cfg.random_crop_min, largest)
  high = tf.minimum(data_cfg.random_crop_max, largest)
  side = low + _floor_int(u[0], high - low + 1)
  top = _floor_int(u[1], h - side + 1)
  left = _floor_int(u[2], w - side + 1)
  return image[top : top + side, left : left + side]


def _floor_int(u: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """A uniform u in [0, 1) -> an integer uniform in [0, n)."""
  return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float32)), tf.int32), n - 1)


def _make_pair(
  example: dict[str, tf.Tensor], data_cfg: ml_collections.ConfigDict, augment: bool
) -> dict[str, tf.Tensor]:
  crop = tf.cast(crop_image(example['image'], data_cfg, example['seed']), tf.float32)
  size = data_cfg.highres_size
  highres = streams.quantize(tf.image.resize(crop, [size, size], 'bicubic', antialias=True))
  if augment:  # Before the downsampling, so that lowres is the configured operator's image of highres.
    highres = augment_square(highres, example['seed'])
  pair = {'highres': highres, 'lowres': lowres_from_highres(highres, data_cfg.lowres_size, data_cfg.resize)}
  if 'mask' in example:
    pair['mask'] = example['mask']
  return pair


# ---------------------------------------------------------------- embedded photos


def embedded_photo(name: str, split: str, eval_fraction: float) -> np.ndarray:
  """The part of scikit-image photo `name` that `split` may crop from.

  'eval' gets the bottom round(H * eval_fraction) rows (at least 1), 'train' the rows above,
  so eval crops are at most as tall as that strip (e.g. 30 rows of chelsea at 0.1).
  """
  photo = getattr(skimage.data, name)()
  held_out = min(max(1, round(photo.shape[0] * eval_fraction)), photo.shape[0] - 1)
  return photo[photo.shape[0] - held_out :] if split == 'eval' else photo[: photo.shape[0] - held_out]


def _embedded_examples(data_cfg, split, *, shard, seed, start_index):
  if data_cfg.crop == 'celeba':
    raise UserError(
      "config.data.crop='celeba' needs aligned CelebA images; use 'random' or 'centre' with source='embedded'"
    )
  if split == 'eval' and data_cfg.num_eval_examples <= 0:
    raise UserError('source=embedded makes as many eval crops as asked: set data.num_eval_examples > 0')
  photos = [embedded_photo(name, split, data_cfg.eval_fraction) for name in EMBEDDED_PHOTOS]
  # One flat constant plus offsets: photos differ in size, and a padded stack would be 3x larger.
  flat = tf.constant(np.concatenate([p.reshape(-1) for p in photos]))
  offsets = tf.constant(np.cumsum([0] + [p.size for p in photos]), tf.int64)
  shapes = tf.constant([p.shape for p in photos], tf.int64)

  def load_item(item):
    return tf.reshape(flat[offsets[item] : offsets[item + 1]], shapes[item])

  examples = streams.indexed_examples(
    load_item, len(photos), split, data_cfg.num_eval_examples, shard=shard, seed=seed, start_index=start_index
  )
  return examples, data_cfg.num_eval_examples


# ---------------------------------------------------------------- image folder


def folder_files(folder: str, eval_fraction: float, num_unseen_classes: int = 0) -> dict[str, list[str]]:
  """Image paths under `folder` (searched recursively) of each split: {'train', 'eval', 'eval_unseen'}.

  With num_unseen_classes = N > 0, the classes are the top-level subfolders that hold images, sorted by name; every
  image must be in one. The last N classes are held out whole: their images are 'eval_unseen'. The other images are
  split class by class (all of them as one group when N = 0; 'eval_unseen' is then empty): a group's sorted list is
  permuted with a fixed seed and its last round(n * eval_fraction) files (at least 1 when eval_fraction > 0, at most
  n - 1) are 'eval', the rest 'train'. Per class, so that every seen class has held-out images and a folder built with
  a known number per class trains on a known number: SRIM's 167 per class at 0.1 leave the paper's 150. The split
  depends on the file names only, not on the run.
  """
  if not os.path.isdir(folder):
    raise UserError(
      f'config.data.folder {folder!r} is not a directory: point --config.data.folder at a folder of images'
    )
  files = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(folder, followlinks=True)
    for name in names
    if name.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not files:
    raise UserError(
      f'config.data.folder {folder!r} holds no images (searched recursively for {", ".join(IMAGE_EXTENSIONS)})'
    )
  groups, unseen = [files], []
  if num_unseen_classes:
    groups, unseen = _hold_out_classes(folder, files, num_unseen_classes)
  if eval_fraction <= 0:
    return {'train': [p for group in groups for p in group], 'eval': [], 'eval_unseen': unseen}
  if sum(len(group) for group in groups) < 2:
    raise UserError(
      f'config.data.folder {folder!r} holds 1 image{" of the seen classes" if unseen else ""}; holding '
      'out eval images needs at least 2 (or set data.eval_fraction=0)'
    )
  train, held = [], []
  for group in groups:
    held_out = min(max(1, round(len(group) * eval_fraction)), len(group) - 1)
    order = np.random.default_rng(_FOLDER_SPLIT_SEED).permutation(len(group))
    shuffled = [group[i] for i in order]
    train += shuffled[: len(group) - held_out]
    held += shuffled[len(group) - held_out :]
  return {'train': train, 'eval': held, 'eval_unseen': unseen}


def _hold_out_classes(folder: str, files: list[str], num_unseen: int) -> tuple[list[list[str]], list[str]]:
  """(the images of each seen class, the images of the last `num_unseen` classes), all sorted."""
  classes, loose = {}, []
  for path in files:
    top, *below = os.path.relpath(path, folder).split(os.sep)
    (classes.setdefault(top, []) if below else loose).append(path)
  fix = 'or set --config.data.num_unseen_classes=0'
  if not classes:
    raise UserError(
      f'config.data.num_unseen_classes={num_unseen} holds out classes, but config.data.folder '
      f'{folder!r} has no subfolders with images: put each class in its own subfolder '
      f'({folder}/CLASS/*.jpg), {fix}'
    )
  if loose:
    raise UserError(
      f'config.data.num_unseen_classes={num_unseen} needs every image in a class subfolder, but '
      f'{folder!r} holds {len(loose)} at its top level (e.g. {os.path.basename(loose[0])}): move them '
      f"into their class's subfolder, {fix}"
    )
  if num_unseen >= len(classes):
    raise UserError(
      f'config.data.num_unseen_classes={num_unseen} must be less than the {len(classes)} classes '
      f'(subfolders with images) of {folder!r}, so that some are left for training'
    )
  names = sorted(classes)
  return [classes[c] for c in names[:-num_unseen]], [p for c in names[-num_unseen:] for p in classes[c]]


def _read_file(path: tf.Tensor) -> tf.Tensor:
  """Decodes with common.images.load_image (PIL), whose errors name the file.

  Files are checked lazily, when read: checking a large folder up front would cost a pass
  over it at every start. A bad file stops the run at its first use with its name.
  """
  image = tf.numpy_function(lambda p: load_image(p.decode()), [path], tf.uint8, stateful=False)
  image.set_shape([None, None, 3])
  return image


def _folder_examples(data_cfg, split, *, shard, seed, start_index):
  files = folder_files(data_cfg.folder, data_cfg.eval_fraction, data_cfg.num_unseen_classes)[split]
  if not files:  # Only 'eval' can be empty here.
    raise UserError(f'No eval images: data.eval_fraction is {data_cfg.eval_fraction}; set it > 0 to hold some out')
  num_eval = len(files)
  if data_cfg.num_eval_examples > 0:
    num_eval = min(num_eval, data_cfg.num_eval_examples)
  paths = tf.constant(files)
  examples = streams.indexed_examples(
    lambda item: _read_file(paths[item]), len(files), split, num_eval, shard=shard, seed=seed, start_index=start_index
  )
  return examples, num_eval


# ---------------------------------------------------------------- tfds


def _tfds_examples(data_cfg, split, *, shard, seed, start_index):
  try:
    builder = tfds.builder(data_cfg.name, data_dir=data_cfg.tfds_data_dir or None)
  except tfds.core.DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'tfds has no dataset named {data_cfg.name!r}: check --config.data.name') from e
  read_config = tfds.ReadConfig(options=streams.options(), try_autocache=False)

  def load(split_name):
    """Undecoded images: shuffling and skipping move bytes, and only kept examples are decoded."""
    try:
      # tfds' decorator hides as_dataset's parameters from type checkers.
      ds = builder.as_dataset(
        split=split_name,  # pyright: ignore[reportCallIssue]
        shuffle_files=False,
        read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()},
      )
    except AssertionError as e:  # What tfds raises for a dataset missing from data_dir.
      if builder.is_prepared():
        raise
      raise DatasetNotFoundError(streams.not_prepared_message(builder, data_cfg)) from e
    return ds.map(lambda ex: ex['image'])

  def decode(encoded):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image

  def process_split(split_name):
    return tfds.split_for_jax_process(split_name, process_index=shard.index, process_count=shard.count)

  if split == 'train':
    records = load(process_split(data_cfg.train_split))
    num_records = int(records.cardinality())  # tfds datasets know their size.
    if num_records <= 0:
      raise UserError(f'Split {data_cfg.train_split!r} of {data_cfg.name!r} has no examples for process {shard.index}')
    # Each epoch is the fixed record order (tfds shuffles records when it writes them)
    # re-shuffled through a buffer keyed by (seed, epoch): an epoch is rebuilt from its
    # number, so resuming skips whole epochs for free and reads at most one epoch.
    local_start = start_index // shard.count
    first_epoch = local_start // num_records

    def epoch(e):
      epoch_seed = tf.random.stateless_uniform(
        [],
        seed=tf.stack([tf.constant(seed, tf.int64), e]),
        minval=None,  # pyright: ignore[reportArgumentType]  (tf stubs; None: the full int64 range)
        maxval=None,
        dtype=tf.int64,
      )
      return records.shuffle(data_cfg.shuffle_buffer, seed=epoch_seed)

    stream = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    stream = stream.skip(local_start - first_epoch * num_records).enumerate(start=local_start)
    # Crop keys unique across processes: local number i of process p is example i * count + p.
    examples = stream.map(
      lambda i, encoded: {'image': decode(encoded), 'seed': streams.example_seed(seed, i * shard.count + shard.index)},
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    return examples, 0

  available = int(load(data_cfg.eval_split).cardinality())
  num_eval = min(data_cfg.num_eval_examples, available) if data_cfg.num_eval_examples > 0 else available
  records = load(process_split(f'{data_cfg.eval_split}[:{num_eval}]'))
  examples = records.enumerate().map(
    lambda i, encoded: {
      'image': decode(encoded),
      'seed': streams.example_seed(streams.EVAL_SEED, i * shard.count + shard.index),
      'mask': True,
    },
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  return examples, num_eval
