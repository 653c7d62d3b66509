"""The training loop end to end on the embedded photos: loss falls, resume is exact, sharding changes nothing."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from PIL import Image

from common import sharding, train_loop
from common.config import from_config
from common.errors import UserError
from pixelsr import models, train
from tests.helpers import REPO, checkpoint_params, tiny_config


def test_demo_run_lowers_loss_and_writes_a_sample_grid(tmp_path):
  workdir = str(tmp_path)
  before = train.train_and_evaluate(tiny_config(num_train_steps=1, eval_every_steps=1), workdir)
  after = train.train_and_evaluate(
    tiny_config(num_train_steps=60, eval_every_steps=60, sample_every_steps=60, num_sample_images=2), workdir
  )
  assert after['eval/O2'] < before['eval/O2'] - 0.5, (before, after)
  assert after['eval/bits_per_dim'] == pytest.approx(after['eval/ce_joint'] / np.log(2), rel=1e-5)
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'lowres_sample_truth_00000060.png')))
  assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] > 2 * 32 and grid.shape[1] > 3 * 32
  assert os.listdir(os.path.join(workdir)) and any(f.startswith('events') for f in os.listdir(workdir))


def test_resume_continues_at_the_same_step_with_identical_params(tmp_path):
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  full = train.train_and_evaluate(tiny_config(num_train_steps=10), straight)
  train.train_and_evaluate(tiny_config(num_train_steps=5), interrupted)
  resumed = train.train_and_evaluate(tiny_config(num_train_steps=10), interrupted)
  assert resumed['train/loss'] == full['train/loss']  # the window of steps 6..10 only: no step was redone
  a, b = checkpoint_params(straight, 10), checkpoint_params(interrupted, 10)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not any(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(checkpoint_params(interrupted, 5)))
  )


def test_a_workdir_of_another_model_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=5), str(tmp_path))
  other = tiny_config(num_train_steps=10)
  other.model.prior_channels = 9
  with pytest.raises(UserError, match='different config.model'):
    train.train_and_evaluate(other, str(tmp_path))


def test_a_workdir_recorded_before_a_new_model_field_resumes_at_its_default(tmp_path):
  # A run recorded before `residual` existed trained the model that the field's default describes.
  train.train_and_evaluate(tiny_config(num_train_steps=5), str(tmp_path))
  path = tmp_path / 'config.json'
  recorded = json.loads(path.read_text())
  del recorded['model']['residual']
  path.write_text(json.dumps(recorded))
  other = tiny_config(num_train_steps=10)
  other.model.residual = False
  with pytest.raises(UserError, match='different config.model'):
    train.train_and_evaluate(other, str(tmp_path))
  assert train.train_and_evaluate(tiny_config(num_train_steps=10), str(tmp_path))['train/loss'] > 0
  assert json.loads(path.read_text())['model']['residual'] is True  # recorded from now on


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np
    from common import data, sharding
    from pixelsr import train
    from tests.helpers import tiny_config
    config = tiny_config()
    config.model.dtype = sys.argv[2]  # bf16 on a CPU: the prior's convolutions as matmuls, custom gradients
    losses = {}
    for n in (1, 2, 8):
      mesh = sharding.data_mesh(jax.devices()[:n])
      config.train_batch_parts = 2 if n < 8 else 1
      state = train.create_train_state(config, jax.random.key(0), mesh)
      step, _ = train.compile_steps(train.setup(config, mesh), state)
      batches = data.make_dataset(config.data, 'train', batch_size=config.batch_size, seed=0)
      for _ in range(4):
        state, metrics = step(state, sharding.to_global(next(batches), mesh), jax.random.key(0))
      losses[n] = float(metrics['loss'])
      assert len(state.params['conditioning']['stem']['kernel'].sharding.device_set) == n
      # Each device's batch in 2 parts: no part crosses devices, so the only collectives are the gradients' and
      # the metrics' all-reduces.
      hlo = step.lower(state, sharding.to_global(next(batches), mesh), jax.random.key(0)).compile().as_text()
      assert not any(op in hlo for op in ('all-to-all', 'collective-permute', 'all-gather')), n
    print('LOSSES', losses[1], losses[2], losses[8])
    """)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_eight_devices_reach_the_one_device_loss(dtype):
  out = subprocess.run(
    [sys.executable, '-c', _SHARDED, REPO, dtype], capture_output=True, text=True, timeout=600, cwd=REPO
  )
  assert out.returncode == 0, out.stderr[-3000:]
  one, two, eight = map(float, out.stdout.split('LOSSES')[1].split())
  # Same data and params; only the order of the cross-device reductions and the parts' sums differs.
  assert two == pytest.approx(one, rel=1e-4) and eight == pytest.approx(one, rel=1e-4)


def test_model_config_errors_name_the_field():
  with pytest.raises(UserError, match='config.model.prior_layerz'):
    from_config(models.PixelSRConfig, {'prior_layerz': 3}, 'config.model')
  with pytest.raises(UserError, match='config.model.prior_layers must be an int'):
    from_config(models.PixelSRConfig, {'prior_layers': 2.5}, 'config.model')
  with pytest.raises(UserError, match='config.model.init must be one of'):
    from_config(models.PixelSRConfig, {'init': 'xavier'}, 'config.model')
  bad = tiny_config()
  bad.data.highres_size = 24
  with pytest.raises(UserError, match='config.data.highres_size=24'):
    train.model_config(bad)


@pytest.mark.slow
@pytest.mark.parametrize(
  'flag,needle',
  [
    ('--config.batch_sise=8', 'batch_sise'),
    ('--config.batch_size=eight', 'batch_size'),
    ('--config.model.prior_layers=2.5', 'prior_layers'),
    ('--config.loss=O3', 'config.loss'),
    ('--config.optimizer.name=sgd', 'config.optimizer.name'),
    ('--config=configs/no_such_config.py', 'no_such_config.py'),
  ],
)
def test_bad_command_line_fields_end_in_one_clear_error(tmp_path, flag, needle):
  out = subprocess.run(
    [sys.executable, 'launch/train.py', '--config=configs/demo.py:runlocal', f'--workdir={tmp_path}', flag],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode != 0
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_a_nan_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(num_train_steps=10, log_every_steps=3, checkpoint_every_steps=2)
  mesh = sharding.data_mesh()
  state = train_state.TrainState.create(apply_fn=None, params={'w': jnp.zeros(())}, tx=optax.sgd(1.0))

  @jax.jit
  def step(state, batch, rng):
    state = state.replace(step=state.step + 1, params={'w': state.params['w'] + batch['x'].sum()})
    return state, {'loss': jnp.where(state.step == 5, jnp.nan, 1.0), 'grad_norm': jnp.float32(1.0)}

  def batches(start_step):
    while True:
      yield {'x': np.full((8,), 0.125, np.float32)}

  with pytest.raises(train_loop.TrainingDivergedError, match='loss is nan at step 5'):
    train_loop.run(config, str(tmp_path), state=state, mesh=mesh, train_step=step, train_batches=batches)
  # Step 6 (a checkpoint step) was never saved: the window holding step 5 is checked first.
  assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()) == [2, 4]
  assert checkpoint_params(str(tmp_path), 4)['w'] == 4.0
