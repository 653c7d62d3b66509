"""launch/sample.py: a user's images in, samples, grid and NLLs out; bad input ends in one line and no output."""

import csv
import json
import os
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from common import images, user_images
from common.errors import UserError
from pixelsr import sampling, train
from tests.helpers import REPO, tiny_config
from tests.helpers import sample_cli as cli


@pytest.mark.slow
def test_samples_grid_and_nll_of_a_folder_of_images(run_dir, tmp_path):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (60, 90, 4), dtype=np.uint8), 'RGBA').save(inputs / 'wide.png')
  Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8), 'L').save(inputs / 'tiny.jpg')
  Image.new('RGB', (1, 1), (200, 30, 90)).save(inputs / 'one.png')
  Image.fromarray(rng.integers(0, 65536, (9, 12), dtype=np.uint16)).save(inputs / 'deep.png')  # 16-bit grey
  (inputs / 'notes.txt').write_text('not an image, and not picked up: only image extensions are')
  out = tmp_path / 'out'
  result = cli(
    f'--workdir={run_dir}', f'--input={inputs}', '--num_samples=2', '--temperature=1.0,inf', f'--output={out}'
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'wide.png: 90x60 -> centre crop 60x60 -> resize to 32x32' in result.stdout
  assert 'one.png: 1x1 -> resize to 8x8 (bicubic, antialiased)' in result.stdout
  names = ('deep', 'one', 'tiny', 'wide')
  files = sorted(os.listdir(out))
  assert files == sorted(
    ['grid.png', 'nll.csv'] + [f'{n}_tau{t}_{k}.png' for n in names for t in ('1', 'inf') for k in (0, 1)]
  )
  grid = np.asarray(Image.open(out / 'grid.png'))
  assert grid.shape == (4 * 34 + 2, 6 * 34 + 2, 3)  # 4 inputs x (input, 2 x 2 samples, bicubic), padding 2

  # The written samples are the model's: NLLs recomputed from the PNGs, greedy samples are argmax everywhere.
  model, variables = train.restore(tiny_config(), run_dir)
  rows = list(csv.DictReader((out / 'nll.csv').read_text().splitlines()))
  assert len(rows) == 16
  lowres = {
    n: user_images.to_model_input(images.load_image(inputs / f), tiny_config().data, 3)[0]
    for n, f in (('wide', 'wide.png'), ('tiny', 'tiny.jpg'), ('one', 'one.png'), ('deep', 'deep.png'))
  }
  np.testing.assert_array_equal(lowres['one'], np.broadcast_to([200, 30, 90], (8, 8, 3)))
  for row in rows:
    y = np.asarray(Image.open(out / row['file']))[None]
    x = jnp.asarray(lowres[row['input']])[None]
    bits = sampling.bits_per_dim(sampling.log_prob(model, variables, x, y), y.shape[1:])
    assert float(row['nll_bits_per_dim']) == pytest.approx(float(bits[0]), rel=1e-5)
    if row['temperature'] == 'inf':
      cond, prior = model.apply(variables, x, y)
      np.testing.assert_array_equal(y, jnp.argmax(cond + prior, -1))


@pytest.mark.slow
def test_a_non_image_file_ends_in_one_line_and_writes_nothing(run_dir, tmp_path):
  bad = tmp_path / 'photo.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'truncated')
  out = tmp_path / 'out'
  result = cli(f'--workdir={run_dir}', f'--input={bad}', f'--output={out}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: Cannot read image file '")
  assert 'Traceback' not in result.stderr
  assert not out.exists() and os.listdir(tmp_path) == ['photo.png']


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_refused(run_dir, tmp_path):
  out = tmp_path / 'out'
  result = cli(
    f'--checkpoint={run_dir}/checkpoints/5', '--config=configs/demo.py', f'--input={REPO}/README.md', f'--output={out}'
  )
  assert result.returncode == 1 and 'different config.model' in result.stderr.splitlines()[-1]
  assert not out.exists()


def test_user_errors_name_the_problem(run_dir, tmp_path):
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import sample  # launch/sample.py

  with pytest.raises(UserError, match='exactly one of --workdir'):
    sample.run_dir_and_step(None, None)
  with pytest.raises(UserError, match='is not <workdir>/checkpoints/<step>'):
    sample.run_dir_and_step(run_dir, None)
  assert sample.run_dir_and_step(f'{run_dir}/checkpoints/5', None) == (run_dir, 5)
  with pytest.raises(UserError, match='must be > 0'):
    sample.parse_temperatures(['1.0', '0'])
  with pytest.raises(UserError, match="numbers or 'inf'"):
    sample.parse_temperatures(['warm'])
  with pytest.raises(UserError, match='holds no image files'):
    sample.input_files(str(tmp_path))
  with pytest.raises(UserError, match='has no config.json'):
    sample.super_resolve(
      workdir=str(tmp_path),
      step=None,
      expected_config=None,
      files=[],
      output=str(tmp_path / 'o'),
      num_samples=1,
      temperatures=[1.0],
      seed=0,
      batch_size=1,
    )
  (tmp_path / 'regression').mkdir()
  (tmp_path / 'regression' / 'config.json').write_text(json.dumps({'method': 'regression'}))
  with pytest.raises(
    UserError, match="--whole_image takes pixel recursive, SRIM and SRGAN runs .* config.method='regression' run"
  ):
    sample.whole_images(
      workdir=str(tmp_path / 'regression'),
      step=None,
      expected_config=None,
      files=[],
      output=str(tmp_path / 'o'),
      num_samples=1,
      seed=0,
      tile=8,
      overlap=-1,
    )
  assert not os.path.exists(tmp_path / 'o')
  with pytest.raises(UserError, match="--pixel_kernel applies to pixel recursive runs; .* config.method='regression'"):
    sample.run_config(str(tmp_path / 'regression'), None, 'pallas')
  with pytest.raises(UserError, match='has no checkpoint 7; it has \\[5\\]'):
    train.restore(tiny_config(), run_dir, step=7)
  other = tiny_config()
  other.model.prior_channels = 9  # the checkpoint's arrays do not fit this model
  with pytest.raises(UserError, match='does not fit this model'):
    train.restore(other, run_dir)
  assert json.loads(pathlib.Path(run_dir, 'config.json').read_text())['model']['prior_channels'] == 6  # not rewritten


def test_the_pallas_colour_passes_write_the_same_samples(run_dir, tmp_path):
  """--pixel_kernel=pallas (interpreted on the CPU) against the run's own XLA passes: the same files, bit for bit."""
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import sample  # launch/sample.py

  photo = tmp_path / 'photo.png'
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photo)
  written = {}
  for kernel in (None, 'pallas'):
    out = tmp_path / f'out_{kernel}'
    sample.super_resolve(
      workdir=run_dir,
      step=None,
      expected_config=None,
      files=[str(photo)],
      output=str(out),
      num_samples=2,
      temperatures=[1.0],
      seed=3,
      batch_size=1,
      pixel_kernel=kernel,
    )
    written[kernel] = {f: np.asarray(Image.open(out / f)) for f in sorted(os.listdir(out)) if f.startswith('photo')}
  assert list(written[None]) == ['photo_tau1_0.png', 'photo_tau1_1.png']
  for name, image in written[None].items():
    np.testing.assert_array_equal(written['pallas'][name], image)
  assert json.loads(pathlib.Path(run_dir, 'config.json').read_text())['model']['pixel_kernel'] == 'xla'  # not rewritten


def test_inputs_are_made_as_the_training_data():
  cfg = tiny_config().data
  image = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
  x, how = user_images.to_model_input(image, cfg, 3)
  expected = images.downsample(images.downsample(image[:, 15:55], cfg.highres_size), cfg.lowres_size)
  np.testing.assert_array_equal(x, expected)
  assert (
    how == '70x40 -> centre crop 40x40 -> resize to 32x32 (bicubic, antialiased) -> resize to 8x8 (bicubic, '
    'antialiased)'
  )
  grey, _ = user_images.to_model_input(image[:8, :8], cfg, 1)
  np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.fromarray(image[:8, :8]).convert('L')))


def test_output_is_all_or_nothing(tmp_path):
  out = tmp_path / 'out'

  def write_then_fail(folder):
    images.save_png(os.path.join(folder, 'a.png'), np.zeros((2, 2, 3), np.uint8))
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    user_images.write_all_or_nothing(str(out), write_then_fail)
  assert os.listdir(tmp_path) == []  # no output folder, no staging folder left behind
  names = user_images.write_all_or_nothing(
    str(out), lambda f: images.save_png(os.path.join(f, 'b.png'), np.zeros((2, 2, 3), np.uint8))
  )
  assert names == ['b.png'] and os.listdir(out) == ['b.png']
