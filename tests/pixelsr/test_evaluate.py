"""launch/evaluate.py and pixelsr/evaluate.py end to end on tiny trained models: table 1's values are the metrics of
each method's outputs computed directly; missing models skip rows; bad flags fail in one line and write nothing."""

import csv
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from common import checkpoint, data, metrics, train_loop
from common.errors import UserError
from configs import defaults
from pixelsr import baselines, evaluate, losses, regression, sampling, train
from tests.helpers import REPO, tiny_config

ROWS = ['Bicubic', 'NN', 'Regression', 'tau=1.0', 'tau=1.5', 'greedy']


def evaluate_config():
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, log_every_steps=2)
  # 6 examples in batches of 4: the second batch is padded.
  config.evaluate.update(
    num_examples=6,
    batch_size=4,
    temperatures=(1.0, 1.5),
    greedy=True,
    nn_database_size=300,
    nn_chunk_size=128,
    num_figure_rows=3,
  )
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  config = evaluate_config()
  train.train_and_evaluate(config, str(root / 'pixelcnn'))
  regression.train_and_evaluate(defaults.regression_config(config), str(root / 'regression'))
  return config, str(root / 'pixelcnn'), str(root / 'regression')


def read_csv(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0], {row[0]: {k: float(v) if v else None for k, v in zip(rows[0][1:], row[1:])} for row in rows[1:]}


def direct_scores(lowres, output, highres, nll_model=None):
  """Table 1's columns for one method, computed without pixelsr.evaluate."""
  scores = {
    'psnr': metrics.bounded_psnr(output, highres),
    'ssim': metrics.ssim(output, highres),
    'ms_ssim': metrics.ms_ssim(output, highres),
    'consistency': metrics.consistency(lowres, output),
  }
  if nll_model is not None:
    model, variables = nll_model
    cond, prior = model.apply(variables, lowres, output)
    scores['nll_bits_per_dim'] = losses.per_example_losses(cond, prior, output)['ce_joint'] / losses.LN2
  return {k: float(np.mean(v)) for k, v in scores.items()}


def test_table1_values_are_the_metrics_of_each_methods_outputs(runs):
  config, pixelcnn_dir, regression_dir = runs
  table = evaluate.table1(config, pixelcnn_dir, regression_dir)
  paths = evaluate.write(table, pixelcnn_dir)
  assert [os.path.basename(p) for p in paths] == ['table1.md', 'table1.csv', 'table1.png']
  header, rows = read_csv(os.path.join(pixelcnn_dir, 'table1.csv'))
  assert header == ['method', 'psnr', 'ssim', 'ms_ssim', 'consistency', 'nll_bits_per_dim']
  assert list(rows) == ROWS and not table.skipped

  eval_data = ml_collections.ConfigDict(config.data.to_dict() | {'num_eval_examples': 6})
  batch = next(data.make_dataset(eval_data, 'eval', batch_size=6))
  lowres, highres = batch['lowres'], batch['highres']
  model, variables = train.restore(config, pixelcnn_dir)
  database = next(data.make_dataset(config.data, 'train', batch_size=300, seed=config.seed))
  index = ((lowres.reshape(6, 1, -1).astype(int) - database['lowres'].reshape(1, 300, -1)) ** 2).sum(-1).argmin(1)
  reg_model, reg_variables = regression.restore(defaults.regression_config(config), regression_dir)
  # The sampled rows draw batch b (of 4, zero-padded) with fold_in(seed_key(seed, 'evaluate'), b).
  padded = np.concatenate([lowres, np.zeros_like(lowres[:2])])

  key = train_loop.seed_key(0, 'evaluate')

  def sampled(tau):
    batches = [
      sampling.sample(model, variables, padded[4 * b : 4 * b + 4], jax.random.fold_in(key, b), tau) for b in (0, 1)
    ]
    return np.concatenate(batches)[:6]

  outputs = {
    'Bicubic': baselines.bicubic(lowres, 32),
    'NN': database['highres'][index],
    'Regression': regression.predict(reg_model, reg_variables, lowres),
    'tau=1.0': sampled(1.0),
    'tau=1.5': sampled(1.5),
    'greedy': sampled(float('inf')),
  }
  assert not np.array_equal(outputs['tau=1.0'], outputs['tau=1.5'])
  for name, output in outputs.items():
    expected = direct_scores(lowres, output, highres, (model, variables))
    assert rows[name] == pytest.approx(expected, rel=1e-5, abs=1e-7), name

  figure = np.asarray(Image.open(paths[2]))
  assert figure.shape == (3 * 34 + 2, (1 + len(ROWS) + 1) * 34 + 2, 3)
  np.testing.assert_array_equal(figure[2:34, 2 + 34 : 34 + 34], outputs['Bicubic'][0])  # Row 0, column Bicubic.
  with open(paths[0]) as f:
    markdown = f.read()
  assert '| Method | pSNR | SSIM | MS-SSIM | Consistency | NLL (bits/dim) |' in markdown
  assert f'| greedy | {rows["greedy"]["psnr"]:.2f} | ' in markdown


def test_a_regression_workdir_that_holds_another_method_is_refused(runs):
  config, pixelcnn_dir, _ = runs
  with pytest.raises(UserError, match="holds a 'pixelcnn' run where a 'regression' run was expected"):
    evaluate.table1(config, pixelcnn_dir, regression_workdir=pixelcnn_dir)


def run_cli(*flags):
  return subprocess.run(
    [sys.executable, 'launch/evaluate.py', '--config=configs/demo.py:runlocal', *flags],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )


@pytest.mark.slow
def test_rows_without_a_checkpoint_are_skipped_with_a_message(tmp_path):
  workdir, untrained = str(tmp_path / 'never_trained'), str(tmp_path / 'regression')
  os.makedirs(untrained)
  checkpoint.check_config(untrained, defaults.regression_config(evaluate_config()))  # config.json, no checkpoint
  out = run_cli(f'--workdir={workdir}', f'--regression_workdir={untrained}', '--num_examples=3')
  assert out.returncode == 0, out.stderr[-3000:]
  header, rows = read_csv(os.path.join(workdir, 'table1.csv'))
  assert list(rows) == ['Bicubic', 'NN'] and rows['NN']['nll_bits_per_dim'] is None
  assert rows['NN']['consistency'] > 0 and 20 < rows['Bicubic']['psnr'] < 50
  assert 'skipping row Regression: ' in out.stderr and 'has no checkpoints/' in out.stderr
  assert f'skipping row tau=1.0: {workdir} does not exist' in out.stderr
  assert 'Skipped greedy: ' in out.stdout and '| NN | ' in out.stdout and ' n/a |' in out.stdout
  assert sorted(os.listdir(workdir)) == ['table1.csv', 'table1.md', 'table1.png']


@pytest.mark.slow
@pytest.mark.parametrize(
  'flag, needle',
  [
    ('--num_examples=-1', 'config.evaluate.num_examples must be >= 0'),
    ('--config.evaluate.temperatures=(0.0,)', 'config.evaluate.temperatures must be finite and > 0'),
    ('--config=configs/demo_regression.py', '--config must be a pixel recursive config'),
  ],
)
def test_bad_flags_end_in_one_error_line_and_write_nothing(tmp_path, flag, needle):
  out = run_cli(f'--workdir={tmp_path}', flag)
  assert out.returncode != 0
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr and os.listdir(tmp_path) == []
