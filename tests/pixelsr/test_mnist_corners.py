"""MNIST corners: the IDX reader, the pair generator behind make_dataset(source='mnist_corners'), the mode measure,
and launch/corners.py end to end on tiny models."""

import gzip
import itertools
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from common import data, mnist
from common.errors import UserError
from configs import defaults, mnist_corners
from pixelsr import corners, regression, sampling, train
from tests.helpers import REPO

SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'data', 'mnist')
NUM_DIGITS, NUM_EVAL = 40, 10


def write_idx(path, array: np.ndarray, *, gz: bool = True, type_code: int = 0x08):
  raw = struct.pack(f'>BBBB{array.ndim}I', 0, 0, type_code, array.ndim, *array.shape) + array.tobytes()
  with (gzip.open if gz else open)(path, 'wb') as f:
    f.write(raw)


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  """(folder, uint8 (40, 28, 28)): a t10k-images file of distinct synthetic 'digits' (white boxes on black)."""
  rng = np.random.default_rng(0)
  images = np.zeros((NUM_DIGITS, 28, 28), np.uint8)
  for image in images:
    top, left = rng.integers(4, 10, size=2)
    image[top : top + rng.integers(8, 15), left : left + rng.integers(3, 15)] = rng.integers(100, 256)
  folder = tmp_path_factory.mktemp('mnist')
  write_idx(folder / mnist.IDX_IMAGES, images)
  return str(folder), images


def corners_config(folder, **overrides):
  cfg = defaults.data_config()
  cfg.update(
    source='mnist_corners',
    mnist_dir=folder,
    mnist_eval_digits=NUM_EVAL,
    lowres_size=16,
    highres_size=16,
    corner_digit_size=8,
    num_eval_examples=0,
  )
  cfg.update(overrides)
  return cfg


def batches(cfg, split='train', count=None, batch_size=8, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return list(itertools.islice(data.make_dataset(cfg, split, batch_size=batch_size, **kwargs), count))


def tf_resize(images: np.ndarray, size: int, levels: int = 256) -> np.ndarray:
  """The reference: digits (N, 28, 28) resized (antialiased bicubic) to `levels` grey levels, uint8 (N, s, s, 1)."""
  resized = tf.image.resize(images[..., None].astype(np.float32), (size, size), 'bicubic', antialias=True).numpy()
  step = 255 / (levels - 1)
  return np.clip(np.round(np.round(resized / step) * step), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize('gz', [True, False])
def test_read_idx_returns_the_array_in_the_header_shape(tmp_path, gz):
  array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
  path = tmp_path / ('a.idx.gz' if gz else 'a.idx')
  write_idx(path, array, gz=gz)
  np.testing.assert_array_equal(mnist.read_idx(path), array)
  write_idx(path, array[0, 0], gz=gz)  # 1-d, as a labels file
  np.testing.assert_array_equal(mnist.read_idx(path), array[0, 0])


def test_read_idx_names_the_fault(tmp_path):
  array = np.ones((4, 6, 6), np.uint8)
  write_idx(tmp_path / 'ok.gz', array)
  whole = gzip.decompress((tmp_path / 'ok.gz').read_bytes())
  faults = {
    'magic number is 08030000': b'\x08\x03\0\0' + whole[4:],
    'magic number is 00000d03': whole[:2] + b'\x0d' + whole[3:],  # float type
    'truncated': whole[:-1],
    'too long': whole + b'\0',
    'promises a header': whole[:9],
  }
  for expected, raw in faults.items():
    (tmp_path / 'bad').write_bytes(raw)
    with pytest.raises(ValueError, match=expected):
      mnist.read_idx(tmp_path / 'bad')
  (tmp_path / 'bad.gz').write_bytes((tmp_path / 'ok.gz').read_bytes()[:-12])  # cut inside the gzip stream
  with pytest.raises(ValueError, match='not a complete gzip file'):
    mnist.read_idx(tmp_path / 'bad.gz')
  (tmp_path / 'bad.gz').write_bytes(whole)  # not gzipped at all
  with pytest.raises(ValueError, match='not a complete gzip file'):
    mnist.read_idx(tmp_path / 'bad.gz')


def test_the_shared_t10k_files():
  if not os.path.isdir(SHARED_MNIST):
    pytest.skip(f'{SHARED_MNIST} is absent')
  images = mnist.read_idx(os.path.join(SHARED_MNIST, mnist.IDX_IMAGES))
  labels = mnist.read_idx(os.path.join(SHARED_MNIST, 't10k-labels-idx1-ubyte.gz'))
  assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
  assert list(labels[:5]) == [7, 2, 1, 0, 4]  # MNIST's test set starts 7 2 1 0 4.
  assert 80 < images.astype(np.float64).mean() * 784 / 255 < 120  # ~100 white pixels' worth of ink per digit
  assert mnist.load_digits(
    corners_config(os.path.relpath(SHARED_MNIST, REPO), mnist_eval_digits=1000), 'eval'
  ).shape == (1000, 28, 28)  # relative to the repository root, whatever the cwd


def test_missing_or_corrupt_digits_are_one_user_error(tmp_path):
  for setup in ('missing', 'corrupt'):
    if setup == 'corrupt':
      (tmp_path / mnist.IDX_IMAGES).write_bytes(b'not gzip')
    with pytest.raises(UserError, match=r'--config.data.mnist_dir=.* --config.data.mnist_source=tfds'):
      batches(corners_config(str(tmp_path)), count=1)


def test_tfds_mnist_digits_make_the_same_pairs():
  cfg = corners_config('', mnist_source='tfds', name='mnist', train_split='train', eval_split='test')
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    images = tfds.builder('mnist').as_dataset(split='test', batch_size=12)
    images = next(iter(tfds.as_numpy(images)))['image'][..., 0]
    stream = batches(cfg, 'eval')
  np.testing.assert_array_equal(np.concatenate([b['lowres'] for b in stream])[:12], tf_resize(images, 16))
  assert [b['mask'].sum() for b in stream] == [8, 4]


def test_tfds_mnist_that_is_not_prepared_says_how_to_prepare_it(tmp_path):
  cfg = corners_config('', mnist_source='tfds', name='mnist', tfds_data_dir=str(tmp_path))
  with pytest.raises(data.DatasetNotFoundError, match="'mnist' is not prepared .*tfds build mnist"):
    batches(cfg, count=1)


# ---------------------------------------------------------------- the pairs


def test_pairs_hold_the_digit_intact_in_one_upper_corner(digits):
  folder, images = digits
  stream = batches(corners_config(folder), count=15, batch_size=8, seed=1)  # 120 examples: 4 epochs of 30
  lowres = np.concatenate([b['lowres'] for b in stream])
  highres = np.concatenate([b['highres'] for b in stream])
  assert lowres.shape == (120, 16, 16, 1) and highres.shape == (120, 16, 16, 1) and highres.dtype == np.uint8
  inputs, small = tf_resize(images, 16), tf_resize(images, 8)
  which = [int(np.flatnonzero((inputs == x).all(axis=(1, 2, 3)))[0]) for x in lowres]  # the digit of each pair
  assert sorted(which[:30]) == list(range(30))  # each training digit once per epoch; the eval digits never
  left = np.array([np.array_equal(y[:8, :8], small[d]) for y, d in zip(highres, which)])
  right = np.array([np.array_equal(y[:8, 8:], small[d]) for y, d in zip(highres, which)])
  assert np.all(left != right)
  for y, is_left in zip(highres, left):
    empty = y.copy()
    empty[:8, (0 if is_left else 8) : (8 if is_left else 16)] = 0
    assert not empty.any()  # the other quadrant and the bottom half are black
  assert 40 <= left.sum() <= 80  # 120 fair draws: 60 +- 10 (~3.7 sd)
  corners_of = {d: {bool(x) for x, e in zip(left, which) if e == d} for d in range(30)}
  assert sum(len(c) == 2 for c in corners_of.values()) >= 15  # epochs draw afresh: most digits met both corners


def test_the_corner_is_a_function_of_seed_and_index_and_resumes(digits):
  cfg = corners_config(digits[0])
  straight = batches(cfg, count=6, seed=3)
  again = batches(cfg, count=6, seed=3)
  resumed = batches(cfg, count=2, seed=3, start_index=4 * 8)
  other_seed = batches(cfg, count=6, seed=4)
  for a, b in zip(straight, again):
    np.testing.assert_array_equal(a['highres'], b['highres'])
  for a, b in zip(straight[4:], resumed):
    np.testing.assert_array_equal(a['highres'], b['highres'])
    np.testing.assert_array_equal(a['lowres'], b['lowres'])
  assert not all(np.array_equal(a['highres'], b['highres']) for a, b in zip(straight, other_seed))


def test_processes_get_row_blocks_of_the_global_batch(digits):
  cfg = corners_config(digits[0])
  for split, count in (('train', 3), ('eval', None)):
    whole = batches(cfg, split, count, seed=5)
    parts = [batches(cfg, split, count, seed=5, process_index=p, process_count=2) for p in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for g, p0, p1 in zip(whole, *parts):
      for k in g:
        np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), g[k])


def test_eval_takes_each_held_out_digit_once_with_fixed_corners_and_a_padding_mask(digits):
  folder, images = digits
  cfg = corners_config(folder)
  stream = batches(cfg, 'eval', seed=0)  # 10 digits in batches of 8: the second batch has 6 padding rows
  assert [b['mask'].tolist() for b in stream] == [[True] * 8, [True] * 2 + [False] * 6]
  assert stream[1]['highres'].shape == (8, 16, 16, 1) and not stream[1]['highres'][2:].any()
  lowres = np.concatenate([b['lowres'] for b in stream])[:NUM_EVAL]
  np.testing.assert_array_equal(lowres, tf_resize(images[-NUM_EVAL:], 16))
  for seed in (1, 2):
    for a, b in zip(stream, batches(cfg, 'eval', seed=seed)):
      np.testing.assert_array_equal(a['highres'], b['highres'])
  assert [b['lowres'].shape[0] for b in batches(corners_config(folder, num_eval_examples=3), 'eval')] == [8]


def test_grey_levels_round_both_images(digits):
  folder, images = digits
  batch = batches(corners_config(folder, mnist_grey_levels=4), 'eval')[0]
  np.testing.assert_array_equal(batch['lowres'], tf_resize(images[-NUM_EVAL:][:8], 16, levels=4))
  assert set(np.unique(batch['highres'])) == {0, 85, 170, 255}


def test_bad_fields_are_refused(digits):
  with pytest.raises(UserError, match='corner_digit_size must be in'):
    batches(corners_config(digits[0], corner_digit_size=9), count=1)
  with pytest.raises(UserError, match='mnist_grey_levels must be in'):
    batches(corners_config(digits[0], mnist_grey_levels=1), count=1)


# ---------------------------------------------------------------- the mode measure


def test_mode_measure_on_hand_made_images():
  digit = np.zeros((8, 8), np.uint8)
  digit[1:7, 3:5] = 255  # a '1': 12 white pixels' worth of ink
  canvases = np.zeros((6, 16, 16, 1), np.uint8)
  canvases[0, :8, :8, 0] = digit  # left
  canvases[1, :8, 8:, 0] = digit  # right
  canvases[2, :8, :8, 0] = canvases[2, :8, 8:, 0] = digit  # both
  canvases[3, 8:, :, 0] = 255  # ink only in the bottom half, which is not counted: blank
  canvases[4, :8, :8, 0] = digit  # left, with a little ink on the right: 12 vs 1.2 is 90.9% left
  canvases[4, 0, 8:14, 0] = 51
  canvases[5, :8, 8:, 0] = digit // 2  # half-bright right, and 1.4 on the left: 6 vs 1.4 is 81% right: both
  canvases[5, 0, :7, 0] = 51
  left, right = corners.corner_ink(canvases)
  np.testing.assert_allclose(left, [12, 0, 12, 0, 12, 1.4], atol=1e-9)
  np.testing.assert_allclose(right, [0, 12, 12, 0, 1.2, 12 * 127 / 255], atol=1e-9)
  assert corners.classify(canvases).tolist() == ['left', 'right', 'both', 'blank', 'left', 'both']
  faint = np.zeros((1, 16, 16, 1), np.uint8)
  faint[0, 2, 2:5, 0] = 80  # 0.94 units: blank, though all of it is on the left
  assert corners.classify(faint).tolist() == ['blank']
  counts = corners.ModeCounts.of(canvases)
  assert counts == corners.ModeCounts(left=2, right=1, both=2, blank=1)
  assert counts.single_mode == 0.5 and counts.left_share == pytest.approx(2 / 3)


# ---------------------------------------------------------------- the configs and launch/corners.py


def test_the_three_configs_share_data_and_conditioning_network():
  configs = {m: mnist_corners.get_config(m) for m in mnist_corners.MODELS}
  assert [c.method for c in configs.values()] == ['regression', 'pixelcnn', 'pixelcnn']
  assert configs['ce'].model.use_prior is False and configs['pixelcnn'].model.use_prior is True
  assert configs['l2'].data == configs['ce'].data == configs['pixelcnn'].data
  # The L2 model's own: it predicts the output, not a residual over the input, from a zero output layer.
  l2_only = {'residual': False, 'zero_init_last': True}
  for field in defaults.CONDITIONING_FIELDS:
    if field in l2_only:
      assert configs['l2'].model[field] == l2_only[field], field
    else:
      assert configs['l2'].model[field] == configs['ce'].model[field] == configs['pixelcnn'].model[field], field
  assert mnist_corners.get_config().model == configs['pixelcnn'].model
  with pytest.raises(ValueError, match="takes 'l2', 'ce' or 'pixelcnn'"):
    mnist_corners.get_config('pixelcnn,fast')


@pytest.mark.parametrize('residual', [False, True])
def test_the_l2_model_erases_the_input_and_splits_the_ink_between_the_corners(digits, tmp_path, residual):
  """Figure 2's L2 column: trained on the pairs, the L2 model (residual=False, as its config) draws the
  lower half black, as every target is, and about half of the digit's ink in each upper quadrant: the mean of the
  two modes. Table 1's formulation (residual=True: the input + tanh(residual)) cannot erase the input digit, whose
  white pixels never go below mid-grey: it fails the same check."""
  steps = 800
  config = mnist_corners.get_config('l2')  # The figure's model (3 blocks: 7 pixels of context); ~20 s on a CPU.
  config.data.update(mnist_dir=digits[0], mnist_eval_digits=NUM_EVAL)
  config.model.residual = residual
  config.optimizer.lr_halve_at = (400, 650)
  config.update(num_train_steps=steps, eval_every_steps=0, sample_every_steps=0, checkpoint_every_steps=steps)
  regression.train_and_evaluate(config, str(tmp_path))
  lowres, highres = corners.held_out_pairs(config.data, 0)
  outputs = np.asarray(regression.predict(*regression.restore(config, str(tmp_path)), lowres))
  lower_ink = outputs[:, 8:].sum((1, 2, 3)) / 255
  left, right = corners.corner_ink(outputs)
  half = sum(corners.corner_ink(highres)) / 2  # half the target digit's ink, which lies in one upper quadrant
  input_lower_ink = lowres[:, 8:].sum((1, 2, 3)) / 255
  print(
    f'residual={residual}: lower-half ink: inputs {input_lower_ink.round(1)}, outputs {lower_ink.round(2)}, '
    f'darkest {outputs[:, 8:].max()}; quadrant ink / half the digit: left {(left / half).round(2)}, '
    f'right {(right / half).round(2)}'
  )
  # Black: under 2 white pixels' worth of ink over the lower half's 128 pixels (a mean grey of 4 / 255), no pixel
  # above a quarter of white.
  black = lower_ink.max() < 2 and outputs[:, 8:].max() < 64
  if not residual:
    assert black, (lower_ink, outputs[:, 8:].max())
    share = left / (left + right)
    assert np.all((share > 0.3) & (share < 0.7)), share  # both corners drawn, about equally: the modes' mean
    assert 0.7 < (left + right).sum() / (2 * half.sum()) < 1.5  # ... each about half the digit's ink
  else:
    assert not black and outputs[:, 8:].max() >= 127  # white input pixels show through at mid-grey or above


def test_reproduce_writes_the_figure_and_the_table(digits, tmp_path):
  configs = {m: mnist_corners.get_config(m + ',runlocal') for m in mnist_corners.MODELS}
  for c in configs.values():
    c.data.update(mnist_dir=digits[0], mnist_eval_digits=NUM_EVAL)
    c.update(num_train_steps=2, eval_every_steps=0, sample_every_steps=0)  # Fewer compilations.
  rows, paths = corners.reproduce(configs, str(tmp_path), num_examples=6, num_samples=3, figure_rows=2)
  assert [os.path.basename(p) for p in paths] == ['corners.md', 'corners.csv', 'figure2.png']
  assert list(rows) == [
    'Ground truth',
    'L2 regression',
    'Cross-entropy, per-pixel mode',
    'Cross-entropy, samples',
    'PixelCNN, samples',
  ]
  assert [r.total for r in rows.values()] == [6, 6, 6, 18, 18]
  assert rows['Ground truth'].single_mode == 1.0
  with open(paths[1]) as f:
    assert f.readline() == 'output,n,left,right,both,blank,single_mode,left_share\n'
  # The figure's cells are the models' outputs: PixelCNN sample k of input n is row n * 3 + k of batch 0's draw.
  model, variables = train.restore(configs['pixelcnn'], str(tmp_path / 'pixelcnn'))
  lowres, _ = corners.held_out_pairs(configs['pixelcnn'].data, 6)
  samples = np.asarray(sampling.sample(model, variables, lowres, jax.random.fold_in(jax.random.key(0), 0), 1.0, 3))
  assert corners.ModeCounts.of(samples) == rows['PixelCNN, samples']
  grid = np.asarray(Image.open(paths[2]))
  assert grid.shape == (4 * (2 * 18 + 2), 4 * (7 * 18 + 2), 3)  # 2 rows; input, L2, CE x 2, 3 samples; x4

  def cell(row, column):  # Every 4th pixel of the enlarged 16x16 image at (row, column).
    return grid[4 * (2 + 18 * row) : 4 * (18 + 18 * row) : 4, 4 * (2 + 18 * column) : 4 * (18 + 18 * column) : 4]

  np.testing.assert_array_equal(cell(1, 0)[..., :1], lowres[1])
  np.testing.assert_array_equal(cell(1, 6)[..., :1], samples[1 * 3 + 2])


def run_cli(*flags):
  return subprocess.run(
    [sys.executable, 'launch/corners.py', *flags], capture_output=True, text=True, timeout=300, cwd=REPO
  )


@pytest.mark.slow
def test_bad_flags_and_missing_digits_fail_in_one_line(tmp_path):
  out = run_cli('--num_samples=0', f'--workdir={tmp_path}')
  assert out.returncode != 0 and out.stderr.strip() == 'error: --num_samples must be >= 1, got 0'
  out = run_cli('--runlocal', f'--mnist_dir={tmp_path}', f'--workdir={tmp_path}')  # a folder without the file
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
    'error: Cannot read the MNIST digits: [Errno 2] No such file or directory'
  )
  assert not os.path.exists(tmp_path / 'corners.md')
