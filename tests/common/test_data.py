"""Tests for common.data: pairs, determinism, resumption, process sharding, eval padding, sources."""

import collections
import io
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from common import data
from common.errors import UserError
from common.images import ImageError
from configs.defaults import data_config

BATCH = 4


def _embedded_config(**overrides):
  cfg = data_config()
  cfg.source = 'embedded'
  cfg.crop = 'random'
  cfg.num_eval_examples = 10
  cfg.update(overrides)
  return cfg


def _batches(cfg, split='train', count=None, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return list(itertools.islice(data.make_dataset(cfg, split, batch_size=BATCH, **kwargs), count))


def _tf_lowres(highres, method='antialiased'):
  """The reference of each config.data.resize, straight from TF's public resizes."""
  highres = highres.astype(np.float32)
  if method == 'tf1':
    resized = tf.compat.v1.image.resize_bicubic(highres, (8, 8), align_corners=False, half_pixel_centers=False)
  else:
    resized = tf.image.resize(highres, (8, 8), 'bicubic', antialias=method == 'antialiased')
  return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def stream():
  """Four batches of an uninterrupted embedded run; with 7 photos they cross epoch boundaries."""
  return _batches(_embedded_config(), count=4, seed=3)


def test_embedded_pairs(stream):
  batch = stream[0]
  assert set(batch) == {'lowres', 'highres'}
  assert batch['highres'].shape == (BATCH, 32, 32, 3) and batch['highres'].dtype == np.uint8
  assert batch['lowres'].shape == (BATCH, 8, 8, 3) and batch['lowres'].dtype == np.uint8
  for b in stream:
    np.testing.assert_array_equal(b['lowres'], _tf_lowres(b['highres']))
  assert len({b['highres'][i].tobytes() for b in stream for i in range(BATCH)}) == 4 * BATCH


@pytest.mark.parametrize('method', ['no_antialias', 'tf1'])
def test_other_lowres_operators(method):
  batch = _batches(_embedded_config(resize=method), count=1)[0]
  np.testing.assert_array_equal(batch['lowres'], _tf_lowres(batch['highres'], method))
  assert not np.array_equal(batch['lowres'], _tf_lowres(batch['highres']))
  with pytest.raises(UserError, match="config.data.resize must be one of.*'bilinear'"):
    data.make_dataset(_embedded_config(resize='bilinear'), 'train', batch_size=4, process_index=0, process_count=1)


def test_same_seed_same_stream_and_resume(stream):
  again = _batches(_embedded_config(), count=2, seed=3)
  for a, b in zip(again, stream):
    np.testing.assert_array_equal(a['highres'], b['highres'])
  resumed = _batches(_embedded_config(), count=2, seed=3, start_index=2 * BATCH)
  for a, b in zip(resumed, stream[2:]):
    np.testing.assert_array_equal(a['highres'], b['highres'])
    np.testing.assert_array_equal(a['lowres'], b['lowres'])
  other = _batches(_embedded_config(), count=1, seed=4)[0]
  assert not np.array_equal(other['highres'], stream[0]['highres'])


def test_processes_split_each_global_batch_by_rows(stream):
  for step in (1, 3):
    parts = [
      _batches(_embedded_config(), count=1, seed=3, start_index=step * BATCH, process_index=p, process_count=2)[0]
      for p in range(2)
    ]
    assert parts[0]['highres'].shape[0] == BATCH // 2
    np.testing.assert_array_equal(np.concatenate([p['highres'] for p in parts]), stream[step]['highres'])


def test_eval_is_finite_padded_and_covers_each_example_once():
  batches = _batches(_embedded_config(), 'eval', seed=0)
  assert len(batches) == 3  # ceil(10 / 4)
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 10 + [False] * 2)
  assert not batches[-1]['highres'][2:].any()
  highres = np.concatenate([b['highres'] for b in batches])[:10]
  assert len({h.tobytes() for h in highres}) == 10
  # Eval ignores the training seed; two processes together yield the same rows and padding.
  np.testing.assert_array_equal(_batches(_embedded_config(), 'eval', seed=5)[0]['highres'], highres[:4])
  parts = [_batches(_embedded_config(), 'eval', process_index=p, process_count=2) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == 3
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([p[step]['mask'] for p in parts]), mask[4 * step : 4 * step + 4])
    np.testing.assert_array_equal(np.concatenate([p[step]['highres'] for p in parts]), batches[step]['highres'])


def test_embedded_eval_region_is_held_out():
  photo = data.embedded_photo('chelsea', 'train', 0.1)
  held_out = data.embedded_photo('chelsea', 'eval', 0.1)
  assert held_out.shape == (30, 451, 3) and photo.shape == (270, 451, 3)
  import skimage.data

  np.testing.assert_array_equal(np.concatenate([photo, held_out]), skimage.data.chelsea())


def test_argument_errors():
  with pytest.raises(ValueError, match='multiple of the process count'):
    data.make_dataset(_embedded_config(), 'train', batch_size=5, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='start_index'):
    data.make_dataset(_embedded_config(), 'train', batch_size=4, start_index=6, process_index=0, process_count=1)
  with pytest.raises(UserError, match='num_eval_examples'):
    data.make_dataset(_embedded_config(num_eval_examples=0), 'eval', batch_size=4, process_index=0, process_count=1)


def test_crops():
  image = tf.reshape(tf.range(218 * 178 * 3), (218, 178, 3))
  seed = tf.constant([0, 0], tf.int64)
  face = data.crop_image(image, _embedded_config(crop='celeba'), seed)
  np.testing.assert_array_equal(face, image[40:188, 15:163])
  small = tf.reshape(tf.range(10 * 7), (10, 7, 1))
  np.testing.assert_array_equal(data.crop_image(small, _embedded_config(crop='centre'), seed), small[1:8])
  cfg = _embedded_config(crop='random', random_crop_min=50, random_crop_max=60)
  sides = set()
  for i in range(20):
    crop = data.crop_image(image, cfg, tf.constant([0, i], tf.int64)).numpy()
    assert crop.shape[0] == crop.shape[1] and 50 <= crop.shape[0] <= 60
    top, left = divmod(int(crop[0, 0, 0]) // 3, 178)
    np.testing.assert_array_equal(crop, image[top : top + crop.shape[0], left : left + crop.shape[0]])
    sides.add(crop.shape[0])
  assert len(sides) > 3
  clipped = data.crop_image(small, cfg, seed)
  assert clipped.shape == (7, 7, 1)  # The side is clipped to the image.


@pytest.fixture
def image_folder(tmp_path):
  rng = np.random.default_rng(0)
  modes = ['RGB', 'RGBA', 'L', 'P', 'RGB']
  for i in range(10):
    size = (40 + 7 * i, 60 - 3 * i)
    image = Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).convert(modes[i % 5])
    folder = tmp_path / ('nested' if i % 3 else '')
    folder.mkdir(exist_ok=True)
    jpeg = image.mode in ('RGB', 'L') and i % 2 == 0
    image.save(folder / (f'img{i}.jpg' if jpeg else f'img{i}.PNG'))
  (tmp_path / 'readme.txt').write_text('not an image, and not picked up')
  return tmp_path


def test_folder_source(image_folder):
  splits = data.folder_files(str(image_folder), 0.2)
  train, held_out = splits['train'], splits['eval']
  assert len(train) == 8 and len(held_out) == 2 and not set(train) & set(held_out) and splits['eval_unseen'] == []
  assert data.folder_files(str(image_folder), 0.2) == splits
  cfg = data_config()
  cfg.update(source='folder', folder=str(image_folder), crop='centre', eval_fraction=0.2, num_eval_examples=0)
  batch = _batches(cfg, count=3)[2]
  assert batch['highres'].shape == (BATCH, 32, 32, 3) and batch['highres'].dtype == np.uint8
  np.testing.assert_array_equal(batch['lowres'], _tf_lowres(batch['highres']))
  evals = _batches(cfg, 'eval')
  assert len(evals) == 1 and evals[0]['mask'].tolist() == [True, True, False, False]


def test_folder_errors(tmp_path, image_folder):
  cfg = data_config()
  cfg.update(source='folder', folder=str(tmp_path / 'empty'), crop='centre')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='empty.*holds no images'):
    data.make_dataset(cfg, 'train', batch_size=BATCH, process_index=0, process_count=1)
  cfg.folder = str(tmp_path / 'absent')
  with pytest.raises(UserError, match='absent.*not a directory'):
    data.make_dataset(cfg, 'train', batch_size=BATCH, process_index=0, process_count=1)
  (image_folder / 'broken.png').write_text('not a png')
  cfg.update(folder=str(image_folder), eval_fraction=0.0)
  with pytest.raises(ImageError, match='broken.png'):
    _batches(cfg, count=3)


CLASSES = ('ant', 'bee', 'cat', 'dog', 'eel')


@pytest.fixture
def class_folder(tmp_path):
  """Five class subfolders of tiny one-colour PNGs (some one level deeper); file k is grey level 10 + 7k, so a
  high-res image names its file. Returns (folder, {class: [levels]})."""
  levels, k, root = {}, 0, tmp_path / 'classes'
  for c, name in enumerate(CLASSES):
    for i in range(3 + c % 2):
      folder = root / name / ('deeper' if i == 2 else '')
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.full((6 + i, 9, 3), 10 + 7 * k, np.uint8)).save(folder / f'{i}.png')
      levels.setdefault(name, []).append(10 + 7 * k)
      k += 1
  return root, levels


def _levels(batches):
  """The grey level of each real (unmasked) example, in stream order."""
  highres = np.concatenate([b['highres'][b['mask']] if 'mask' in b else b['highres'] for b in batches])
  assert (highres == highres[:, :1, :1]).all()  # One colour each: a whole file, not a blend of two.
  return highres[:, 0, 0, 0].tolist()


def test_unseen_classes_are_held_out_whole(class_folder):
  folder, levels = class_folder
  splits = data.folder_files(str(folder), 0.3, 2)
  unseen = sorted(p for c in ('dog', 'eel') for p in map(str, (folder / c).rglob('*.png')))
  seen = sorted(p for c in CLASSES[:3] for p in map(str, (folder / c).rglob('*.png')))
  assert sorted(splits['eval_unseen']) == unseen
  assert sorted(splits['train'] + splits['eval']) == seen and len(splits['eval']) == 3  # round(10 * 0.3)
  assert not set(splits['train']) & set(splits['eval'])

  cfg = data_config()
  cfg.update(
    source='folder', folder=str(folder), crop='none', eval_fraction=0.3, num_unseen_classes=2, num_eval_examples=0
  )
  seen_levels = {v for c in CLASSES[:3] for v in levels[c]}
  unseen_levels = levels['dog'] + levels['eel']
  unseen_batches = _batches(cfg, 'eval_unseen')
  assert len(unseen_batches) == 2 and [b['mask'].tolist() for b in unseen_batches] == [[True] * 4, [True] * 3 + [False]]
  assert sorted(_levels(unseen_batches)) == sorted(unseen_levels)  # Each unseen image exactly once.
  assert not unseen_batches[-1]['highres'][3:].any()
  eval_levels = _levels(_batches(cfg, 'eval'))
  train_levels = _levels(_batches(cfg, count=5, seed=1))  # 20 examples: two epochs of the 7 training images.
  assert len(eval_levels) == 3 and set(eval_levels) | set(train_levels) == seen_levels
  assert not set(eval_levels) & set(train_levels)
  cfg.num_eval_examples = 2
  assert len(_levels(_batches(cfg, 'eval_unseen'))) == 2


def test_eval_files_are_held_out_class_by_class(tmp_path_factory, image_folder):
  """SRIM's folder (configs/imagenet_srim.py): 167 files per class at eval_fraction 0.1 hold out 17 of each seen class
  and leave the paper's 150 per class to training; a small class still holds one out. A folder without classes keeps
  its split: the last round(n * fraction) files of one fixed permutation."""
  buffer = io.BytesIO()
  Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(buffer, format='PNG')
  root, sizes = tmp_path_factory.mktemp('classes'), {'ant': 167, 'bee': 167, 'cat': 12, 'dog': 167}  # dog: unseen
  for name, count in sizes.items():
    (root / name).mkdir(parents=True)
    for i in range(count):
      (root / name / f'{i:03d}.png').write_bytes(buffer.getvalue())
  splits = data.folder_files(str(root), 0.1, 1)
  per_class = lambda paths: collections.Counter(os.path.basename(os.path.dirname(p)) for p in paths)
  assert per_class(splits['train']) == {'ant': 150, 'bee': 150, 'cat': 11}
  assert per_class(splits['eval']) == {'ant': 17, 'bee': 17, 'cat': 1}
  assert per_class(splits['eval_unseen']) == {'dog': 167}
  assert not set(splits['train']) & set(splits['eval']) and data.folder_files(str(root), 0.1, 1) == splits
  cfg = data_config()
  cfg.update(
    source='folder',
    folder=str(root),
    crop='none',
    eval_fraction=0.1,
    num_unseen_classes=1,
    num_eval_examples=0,
    highres_size=4,
    lowres_size=2,
  )
  assert sum(b['mask'].sum() for b in _batches(cfg, 'eval')) == 35  # Every held-out file once.

  flat = sorted(str(p) for p in image_folder.rglob('*') if p.suffix.lower() in ('.jpg', '.png'))
  shuffled = [flat[i] for i in np.random.default_rng(0).permutation(len(flat))]
  assert data.folder_files(str(image_folder), 0.2) == {'train': shuffled[:8], 'eval': shuffled[8:], 'eval_unseen': []}


def test_unseen_class_errors(class_folder, image_folder, tmp_path):
  folder, _ = class_folder

  def make(split='train', **overrides):
    cfg = data_config()
    cfg.update(source='folder', folder=str(folder), crop='none', num_unseen_classes=1)
    cfg.update(overrides)
    return data.make_dataset(cfg, split, batch_size=BATCH, process_index=0, process_count=1)

  with pytest.raises(UserError, match="num_unseen_classes=1 .*source is 'embedded'.*source=folder"):
    make(source='embedded')
  with pytest.raises(UserError, match='num_unseen_classes=5 must be less than the 5 classes'):
    make(num_unseen_classes=5)
  with pytest.raises(UserError, match="'eval_unseen' split needs held-out classes"):
    make('eval_unseen', num_unseen_classes=0)
  flat = tmp_path / 'flat'
  flat.mkdir()
  for i in range(3):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / f'{i}.png')
  with pytest.raises(UserError, match='has no subfolders with images: put each class in its own subfolder'):
    make(folder=str(flat))
  # image_folder has a subfolder and images beside it, which belong to no class.
  with pytest.raises(UserError, match=r'needs every image in a class subfolder.*holds 4 at its top level'):
    make(folder=str(image_folder))


def _dihedral(image):
  """The 8 flips and 90-degree rotations of a square image, by numpy."""
  return [np.rot90(flipped, k) for flipped in (image, image[:, ::-1]) for k in range(4)]


def test_flip_rot90_augments_training_pairs_only(stream):
  augmented = _batches(_embedded_config(augment='flip_rot90'), count=4, seed=3)
  used = []
  for plain, aug in zip(stream, augmented):
    for source, image in zip(plain['highres'], aug['highres']):
      matches = [k for k, t in enumerate(_dihedral(source)) if np.array_equal(t, image)]
      assert matches, 'not a flip or rotation of the unaugmented crop'
      used.append(matches[0])
    np.testing.assert_array_equal(aug['lowres'], _tf_lowres(aug['highres']))  # Made from the augmented target.
  assert len(set(used)) >= 4 and used.count(0) < len(used) // 2, used
  # A function of (seed, example index): resumed and split over processes alike; another seed differs.
  resumed = _batches(_embedded_config(augment='flip_rot90'), count=2, seed=3, start_index=2 * BATCH)
  for a, b in zip(resumed, augmented[2:]):
    np.testing.assert_array_equal(a['highres'], b['highres'])
  parts = [
    _batches(
      _embedded_config(augment='flip_rot90'), count=1, seed=3, start_index=BATCH, process_index=p, process_count=2
    )[0]
    for p in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([p['highres'] for p in parts]), augmented[1]['highres'])
  # Eval is never augmented.
  for a, b in zip(_batches(_embedded_config(augment='flip_rot90'), 'eval'), _batches(_embedded_config(), 'eval')):
    np.testing.assert_array_equal(a['highres'], b['highres'])
  with pytest.raises(UserError, match='config.data.augment must be one of'):
    _batches(_embedded_config(augment='flip'), count=1)


def _tfds_reference_highres(name, crop):
  """Every mock example, cropped by hand and resized: the pipeline's outputs must be among them."""
  records = tfds.builder(name).as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
  references = []
  for example in records.as_numpy_iterator():
    image = tf.io.decode_image(example['image'], channels=3).numpy()
    resized = tf.image.resize(crop(image).astype(np.float32), (32, 32), 'bicubic', antialias=True).numpy()
    references.append(np.clip(np.round(resized), 0, 255).astype(np.uint8).tobytes())
  return references


def _centre(image):
  side = min(image.shape[:2])
  top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
  return image[top : top + side, left : left + side]


@pytest.mark.parametrize(
  'name, crop, reference_crop',
  [
    ('celeb_a', 'celeba', lambda image: image[40:188, 15:163]),
    ('lsun/bedroom', 'centre', _centre),
  ],
)
def test_tfds_source_with_mock_data(name, crop, reference_crop):
  cfg = data_config()
  cfg.update(source='tfds', name=name, crop=crop, num_eval_examples=0)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    references = _tfds_reference_highres(name, reference_crop)
    train = _batches(cfg, count=3, seed=1)
    evals = _batches(cfg, 'eval')
    resumed = _batches(cfg, count=1, seed=1, start_index=2 * BATCH)[0]
  assert len(set(references)) == 6
  for batch in train:
    assert batch['highres'].shape == (BATCH, 32, 32, 3) and batch['highres'].dtype == np.uint8
    np.testing.assert_array_equal(batch['lowres'], _tf_lowres(batch['highres']))
    assert all(h.tobytes() in references for h in batch['highres'])
  # 12 examples = 2 epochs of 6, each a permutation.
  first_epochs = np.concatenate([b['highres'] for b in train])[:12]
  assert sorted(h.tobytes() for h in first_epochs[:6]) == sorted(references)
  assert sorted(h.tobytes() for h in first_epochs[6:]) == sorted(references)
  np.testing.assert_array_equal(resumed['highres'], train[2]['highres'])
  assert [b['mask'].tolist() for b in evals] == [[True] * 4, [True, True, False, False]]


def test_tfds_missing_dataset_names_the_fix(tmp_path):
  cfg = data_config()
  cfg.update(source='tfds', name='celeb_a', tfds_data_dir=str(tmp_path))
  with pytest.raises(data.DatasetNotFoundError, match=r"'celeb_a'.*tfds build celeb_a.*tfds_data_dir") as error:
    data.make_dataset(cfg, 'train', batch_size=BATCH, process_index=0, process_count=1)
  assert str(tmp_path) in str(error.value)
  cfg.name = 'no_such_dataset'
  with pytest.raises(data.DatasetNotFoundError, match='no_such_dataset'):
    data.make_dataset(cfg, 'train', batch_size=BATCH, process_index=0, process_count=1)
