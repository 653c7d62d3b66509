"""The demo's labelled grid holds what its labels say, and the end-of-run figures match a hand computation."""

import math
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import images, metrics
from pixelsr import models, sampling, summary
from tests.helpers import REPO

TINY = dict(
  cond_blocks=1, cond_channels=8, prior_layers=2, prior_channels=8, prior_head_channels=16, init='lecun_normal'
)


def make_model(batch=3, lowres_hw=4, seed=0):
  cfg = models.PixelSRConfig(**TINY)
  model = models.PixelRecursiveSR(cfg)
  lowres = jax.random.randint(jax.random.key(seed + 1), (batch, lowres_hw, lowres_hw, 3), 0, 256).astype(jnp.uint8)
  highres = jax.random.randint(jax.random.key(seed + 2), (batch, 4 * lowres_hw, 4 * lowres_hw, 3), 0, 256)
  highres = highres.astype(jnp.uint8)
  return model, model.init(jax.random.key(seed), lowres, highres), np.asarray(lowres), np.asarray(highres)


def test_grid_columns_are_the_input_bicubic_samples_and_truth():
  model, variables, lowres, highres = make_model()
  key = jax.random.key(5)
  columns = summary.grid_columns(model, variables, lowres, highres, key)
  assert tuple(columns) == summary.COLUMNS
  np.testing.assert_array_equal(columns['input'], lowres)
  np.testing.assert_array_equal(columns['bicubic'], images.quantize(images.bicubic_upsample(lowres, 16)))
  np.testing.assert_array_equal(columns['tau=1.0'], sampling.sample(model, variables, lowres, key, temperature=1.0))
  np.testing.assert_array_equal(columns['tau=1.2'], sampling.sample(model, variables, lowres, key, temperature=1.2))
  np.testing.assert_array_equal(columns['greedy'], sampling.sample(model, variables, lowres, key, temperature=math.inf))
  np.testing.assert_array_equal(columns['truth'], highres)
  assert not np.array_equal(columns['tau=1.0'], columns['greedy'])
  assert [summary.column_name(t) for t in (0.8, 1.25, 2, math.inf)] == ['tau=0.8', 'tau=1.25', 'tau=2.0', 'greedy']


def test_labelled_grid_puts_each_column_under_its_name():
  model, variables, lowres, highres = make_model(batch=2)
  columns = summary.grid_columns(model, variables, lowres, highres, jax.random.key(0))
  grid = summary.labelled_grid(columns, scale=2, padding=2)
  big = {
    name: np.repeat(np.repeat(c, 32 // c.shape[1], axis=1), 32 // c.shape[2], axis=2) for name, c in columns.items()
  }
  body = images.make_grid(list(big.values()), padding=2)
  header = grid[: grid.shape[0] - body.shape[0]]
  np.testing.assert_array_equal(grid[header.shape[0] :], body)
  assert header.shape[0] >= 8 and grid.shape[1] == body.shape[1] == 6 * 34 + 2
  # Cell (row 1, column 'bicubic'): the bicubic upsample of input 1, each pixel doubled.
  top, left = header.shape[0] + 2 + 34, 2 + 34
  np.testing.assert_array_equal(grid[top : top + 32, left : left + 32], big['bicubic'][1])
  np.testing.assert_array_equal(grid[top : top + 32 : 2, left : left + 32 : 2], columns['bicubic'][1])
  for k in range(6):  # Every column has ink (its name) above it, and the header is otherwise white.
    assert (header[:, 2 + 34 * k : 34 * (k + 1)] < 128).any(), summary.COLUMNS[k]
  assert (header[:, :2] == 255).all()


def discretised_laplace_bits(truth, centre, scale):
  """-log2 p per sub-pixel, written out one value at a time."""
  cdf = lambda x: 0.5 * math.exp(x / scale) if x < 0 else 1 - 0.5 * math.exp(-x / scale)
  bits = []
  for y, m in zip(truth.reshape(-1).tolist(), centre.reshape(-1).tolist()):
    upper = 1.0 if y == 255 else cdf(y + 0.5 - m)
    lower = 0.0 if y == 0 else cdf(y - 0.5 - m)
    bits.append(-math.log2(upper - lower))
  return np.array(bits)


def test_heldout_figures_match_a_hand_computation():
  model, variables, lowres, highres = make_model(batch=5, lowres_hw=2)
  # The truth: the bicubic upsample plus small noise, so the best Laplace scale is a few grey levels.
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(lowres, 8)))
  noise = np.asarray(jax.random.laplace(jax.random.key(9), highres.shape)) * 3
  truth = np.clip(np.round(bicubic + noise), 0, 255).astype(np.uint8)
  truth[0, 0, 0] = [0, 255, 0]  # both edge bins
  # Two batches of 3, the last padded with a masked row of garbage.
  batches = [
    {'lowres': lowres[:3], 'highres': truth[:3], 'mask': np.ones(3, bool)},
    {
      'lowres': np.concatenate([lowres[3:], lowres[:1]]),
      'highres': np.concatenate([truth[3:], highres[:1]]),
      'mask': np.array([True, True, False]),
    },
  ]
  figures = summary.heldout_figures(model, variables, batches)

  dims = 8 * 8 * 3
  model_bits = -np.asarray(sampling.log_prob(model, variables, lowres, truth)) / (dims * math.log(2))
  bicubic_bits = -np.asarray(sampling.log_prob(model, variables, lowres, bicubic)) / (dims * math.log(2))
  assert figures['bits_per_dim'] == pytest.approx(model_bits.mean(), rel=1e-5)
  assert figures['bicubic_bits_per_dim'] == pytest.approx(bicubic_bits.mean(), rel=1e-5)
  np.testing.assert_allclose(
    sampling.bits_per_dim(sampling.log_prob(model, variables, lowres, bicubic), (8, 8, 3)), bicubic_bits, rtol=1e-5
  )
  cond_logits, _ = model.apply(variables, lowres, truth)
  cond_nats = np.take_along_axis(np.asarray(jax.nn.log_softmax(cond_logits, -1)), truth[..., None].astype(int), -1)
  assert figures['cond_bits_per_dim'] == pytest.approx(-cond_nats.mean() / math.log(2), rel=1e-5)
  scale = figures['bicubic_laplace_scale']
  assert 1.5 < scale < 6
  assert figures['bicubic_laplace_bits_per_dim'] == pytest.approx(
    discretised_laplace_bits(truth, bicubic, scale).mean(), rel=1e-9
  )
  for other in (scale / 1.1, scale * 1.1):  # the best scale of the grid, to within its 2% steps
    assert discretised_laplace_bits(truth, bicubic, other).mean() > figures['bicubic_laplace_bits_per_dim']
  # An untrained model is near a uniform guess (8 bits); the Laplace on this near-bicubic truth far below it.
  assert 7 < figures['bits_per_dim'] < 9 and figures['bicubic_laplace_bits_per_dim'] < 5


def test_continue_command_keeps_the_overrides_and_doubles_the_steps():
  argv = [
    'launch/train.py',
    '--config=configs/demo.py',
    '--config.batch_size',
    '16',
    '--workdir',
    'runs/x',
    '--config.num_train_steps=600',
    '--config.data.source=embedded',
  ]
  assert summary.continue_command(argv, 'runs/x', 1200) == (
    'python launch/train.py --config=configs/demo.py --config.batch_size 16 --config.data.source=embedded '
    '--workdir=runs/x --config.num_train_steps=1200'
  )
  assert summary.continue_command(['launch/train.py'], 'runs/my demo', 1200) == (
    "python launch/train.py '--workdir=runs/my demo' --config.num_train_steps=1200"
  )


def test_summary_lines_say_where_the_model_stands():
  figures = {
    'heldout/bits_per_dim': 4.2,
    'heldout/bicubic_bits_per_dim': 3.9,
    'heldout/bicubic_laplace_bits_per_dim': 4.5,
    'heldout/bicubic_laplace_scale': 5.3,
    'heldout/cond_bits_per_dim': 6.0,
  }
  lines = summary.summary_lines(figures, 600, 'python launch/train.py --config.num_train_steps=1200')
  text = '\n'.join(lines)
  assert 'model 4.200 vs. bicubic + the best Laplace noise 4.500 (scale 5.3 grey levels): the model is better.' in text
  assert 'each value on its own): 6.000: it has not yet learned what bicubic knows' in text
  assert 'the bicubic upsample under the model: 3.900 (more likely than the truth)' in text  # 3.9 bits < 4.2 bits
  assert lines[-1].endswith('python launch/train.py --config.num_train_steps=1200') and len(lines) == 5
  figures.update({'heldout/bits_per_dim': 4.6, 'heldout/cond_bits_per_dim': 4.4})
  text = '\n'.join(summary.summary_lines(figures, 600, 'cmd'))
  assert 'the model is not better yet' in text and 'it has learned more than bicubic knows' in text
  # With the samples' consistency and the eval split's dead ReLU channels: a line each, before the command.
  figures.update(
    {
      'heldout/sample_consistency': 0.0123,
      'heldout/bicubic_consistency': 0.0002,
      'eval/relu_dead/conditioning/stage0_block0/inner': 0.25,
      'eval/relu_dead/conditioning/upsample0': 0.5,
      'eval/relu_dead_worst': 0.5,
      'eval/relu_dead_mean': 0.375,
    }
  )
  lines = summary.summary_lines(figures, 600, 'cmd')
  assert len(lines) == 7 and lines[-3].endswith(': 0.0123 (bicubic 0.0002).')
  assert lines[-2] == (
    'Conditioning network: 50% of the ReLU channels of its worst site (conditioning/upsample0) '
    'never fire on these crops (mean over sites 38%).'
  )


def test_heldout_figures_sample_consistency_is_that_of_tau_1_samples():
  model, variables, lowres, highres = make_model(batch=3, lowres_hw=2)
  batches = [
    {'lowres': lowres[:2], 'highres': highres[:2], 'mask': np.ones(2, bool)},
    {'lowres': lowres[1:], 'highres': highres[1:], 'mask': np.array([False, True])},
  ]
  key = jax.random.key(3)
  figures = summary.heldout_figures(model, variables, batches, sample_key=key)
  want = []
  for i, batch in enumerate(batches):
    draws = sampling.sample(model, variables, batch['lowres'], jax.random.fold_in(key, i), temperature=1.0)
    want.extend(np.asarray(metrics.consistency(batch['lowres'], draws))[batch['mask']])
  assert len(want) == 3 and figures['sample_consistency'] == pytest.approx(np.mean(want), rel=1e-6)
  bicubic = images.quantize(images.bicubic_upsample(lowres, 8))
  assert figures['bicubic_consistency'] == pytest.approx(
    float(np.mean(metrics.consistency(lowres, bicubic))), rel=1e-6, abs=1e-9
  )
  assert 'sample_consistency' not in summary.heldout_figures(model, variables, batches)


@pytest.mark.slow
def test_launch_train_ends_with_the_figures_and_a_continue_command_that_works(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = [
    '--config=configs/demo.py:runlocal',
    '--config.num_train_steps=10',
    '--config.eval_every_steps=10',
    '--config.sample_every_steps=0',
    '--config.checkpoint_every_steps=10',
  ]
  out = subprocess.run(
    [sys.executable, 'launch/train.py', *flags, f'--workdir={workdir}'],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[-7].startswith('Held-out crops after 10 steps') and 'bicubic + the best Laplace noise' in lines[-6]
  assert lines[-3].startswith('tau = 1.0 samples against their input (consistency')
  assert lines[-2].startswith('Conditioning network: ') and 'of its worst site (conditioning/' in lines[-2]
  prefix = 'Continue training from step 10: '
  assert lines[-1] == prefix + shlex.join(
    ['python', 'launch/train.py', *flags[:1], *flags[2:], f'--workdir={workdir}', '--config.num_train_steps=20']
  )
  again = subprocess.run(
    [sys.executable, *shlex.split(lines[-1][len(prefix) :])[1:]], capture_output=True, text=True, timeout=600, cwd=REPO
  )
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'Resumed from the checkpoint of step 10' in again.stderr and 'Trained steps 11..20' in again.stderr
  assert again.stdout.splitlines()[-1].startswith('Continue training from step 20: ')
