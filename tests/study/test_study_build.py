"""`launch/study.py build --kind=fooled` on tiny trained runs: the study's images are table 1's rows of the eval
examples (the truth and bicubic checked pixel for pixel), enlarged by nearest neighbour; bad flags fail in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common import data
from common.study import manifest
from configs import defaults
from pixelsr import baselines, regression, train
from tests.helpers import REPO, tiny_config


def _study(*flags):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, 'launch', 'study.py'), *flags],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
  )


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, log_every_steps=2)
  config.evaluate.update(
    num_examples=12, batch_size=4, temperatures=(1.0,), greedy=True, nn_database_size=64, nn_chunk_size=64
  )
  train.train_and_evaluate(config, str(root / 'pixelcnn'))
  regression.train_and_evaluate(defaults.regression_config(config), str(root / 'regression'))
  return config, root


@pytest.mark.slow
def test_build_fooled_from_trained_runs(runs, tmp_path):
  config, root = runs
  out = tmp_path / 'study'
  result = _study(
    'build',
    '--kind=fooled',
    f'--workdir={root / "pixelcnn"}',
    f'--regression_workdir={root / "regression"}',
    f'--out={out}',
    '--num_examples=12',
    '--practice_pairs=2',
    '--main_pairs=8',
    '--golden_pairs=2',
    '--workers_per_algorithm=3',
  )
  assert result.returncode == 0, result.stderr
  assert 'images shown at 128x128 pixels' in result.stdout and '(Regression, tau=1.0)' in result.stdout
  m = manifest.load(str(out))
  assert m.arms == ('Regression', 'tau=1.0') and m.image_size == (128, 128)  # the paper's arms, of the rows made
  assert (m.practice_pairs, m.main_pairs, m.golden_pairs, m.workers_per_arm, m.display_ms) == (2, 8, 2, 3, 1000)
  # What `report` checks a table1.md against: the examples and NN's database, and the models' steps.
  assert m.source['table1'][0].startswith('12 examples of the') and 'NN searched 64 training' in m.source['table1'][0]
  assert any('at step 2' in note for note in m.source['table1'][1:])
  batch = next(data.make_dataset(config.data, 'eval', batch_size=16, process_index=0, process_count=1))
  bicubic = np.asarray(baselines.bicubic(batch['lowres'][:12], config.data.highres_size, config.data.resize))

  def shown(example, label):
    big = np.asarray(Image.open(manifest.image_path(str(out), m.examples[example].images[label])))
    assert np.array_equal(big, np.repeat(np.repeat(big[::4, ::4], 4, 0), 4, 1))
    return big[::4, ::4]

  for n in range(12):
    assert np.array_equal(shown(n, manifest.TRUTH), batch['highres'][n])
    assert np.array_equal(shown(n, 'Bicubic'), bicubic[n])
  # The sample and the regression are images of their own (a tiny model draws noise).
  assert not np.array_equal(shown(0, 'tau=1.0'), shown(0, 'Regression'))
  assert not np.array_equal(shown(0, 'tau=1.0'), shown(0, manifest.TRUTH))
  assert (
    _study('build', '--kind=fooled', f'--workdir={root / "pixelcnn"}', f'--out={out}')
    .stderr.strip()
    .endswith('already holds a study (its answers live there too); choose a new --out.')
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  'flags, needle',
  [
    (['build', '--out=/tmp/x'], 'error: build needs --workdir.'),
    (['report'], 'error: report needs --study.'),
    (['serve', '--study=/nonexistent'], 'is not a study (manifest.json missing)'),
    (['launch'], 'error: usage: launch/study.py {build|invite|serve|report}'),
    (['build', '--workdir=/tmp/x', '--out=/tmp/y', '--rows=tau=1.0,Bicubic'], 'error: --rows Bicubic: the golden'),
  ],
)
def test_bad_commands_end_in_one_error_line(flags, needle):
  result = _study(*flags)
  assert result.returncode != 0 and needle in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.slow
def test_build_refuses_a_run_of_another_method(runs, tmp_path):
  _, root = runs
  result = _study('build', '--kind=fooled', f'--workdir={root / "regression"}', f'--out={tmp_path / "s"}')
  assert result.returncode == 1 and 'must be a pixel recursive run' in result.stderr
  assert not (tmp_path / 's').exists()


def test_preference_inputs_cover_every_seen_and_unseen_class(tmp_path):
  """The preference build's inputs: the first `per_class` held-out images of every class, seen and unseen, each
  labelled with its class subfolder (checked against the folder's own split and the pipeline's images)."""
  from launch import study_build as build

  rng = np.random.default_rng(0)
  for c in range(14):
    os.makedirs(tmp_path / f'class{c:02d}')
    for k in range(4):
      Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f'class{c:02d}' / f'{k}.png')
  data_cfg = defaults.data_config()
  data_cfg.update(source='folder', folder=str(tmp_path), crop='centre', eval_fraction=0.5, num_unseen_classes=4)
  lowres, classes = build._split_by_class(data_cfg, 'eval_unseen', per_class=2)
  assert classes == [f'class{c:02d}' for c in range(10, 14) for _ in range(2)]
  files = data.folder_files(str(tmp_path), 0.5, 4)
  names = [f.split(os.sep)[-2] for f in files['eval']]
  seen_lowres, seen = build._split_by_class(data_cfg, 'eval', per_class=1)
  assert seen == list(dict.fromkeys(names))  # every seen class with a held-out image, once
  data_cfg.num_eval_examples = 0
  batch = next(data.make_dataset(data_cfg, 'eval', batch_size=64, process_index=0, process_count=1))
  assert np.array_equal(seen_lowres, batch['lowres'][[names.index(c) for c in seen]])
