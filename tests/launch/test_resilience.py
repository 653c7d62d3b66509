"""Preemption and restarts through launch/train.py: SIGTERM saves and exits 0, kill -9 (also during a checkpoint
write) and a damaged latest checkpoint resume, and the run ends with the parameters of one never stopped, bit for
bit. Several processes on their own runtime reach the parameters of one process with as many devices."""

import glob
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # Launches processes (pyproject.toml's markers).

PIXELCNN = [
  '--config=configs/demo.py:runlocal',
  '--config.model.cond_blocks=1',
  '--config.model.cond_channels=8',
  '--config.model.prior_layers=1',
  '--config.model.prior_channels=6',
  '--config.model.prior_head_channels=12',
  '--config.data.num_eval_examples=16',
  '--config.batch_size=8',
  '--config.eval_every_steps=0',
  '--config.sample_every_steps=0',
]
SRIM = [
  '--config=configs/demo_srim.py:runlocal',
  '--config.data.num_eval_examples=8',
  '--config.data.random_crop_min=24',
  '--config.data.random_crop_max=48',
  '--config.model.num_convs=3',
  '--config.model.channels=8',
  '--config.model.kernel_size=3',
  "--config.features.components=('pixels','conv2_2')",
  "--config.features.selection_components=('pixels','conv2_2')",
  '--config.features.projection_dim=32',
  '--config.features.num_weight_estimation_images=8',
  '--config.imle.pool_size=8',
  '--config.imle.steps_per_pool=3',
  '--config.imle.num_candidates=4',
  '--config.imle.candidates_per_chunk=4',
  '--config.imle.rows_per_chunk=8',
  '--config.imle.eval_num_candidates=4',
  '--config.batch_size=8',
  '--config.eval_every_steps=0',
  '--config.sample_every_steps=0',
]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """The launches of a test compile the same programs: a shared persistent cache compiles them once."""
  return dict(
    os.environ,
    PYTHONUNBUFFERED='1',
    JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
  )


def launch(flags, workdir, log, env, devices=1):
  env = dict(env, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
    [sys.executable, 'launch/train.py', *flags, f'--workdir={workdir}'],
    cwd=REPO,
    env=env,
    stdout=open(log, 'w'),
    stderr=subprocess.STDOUT,
    text=True,
  )


def finish(process, log, timeout=300):
  process.wait(timeout=timeout)
  with open(log) as f:
    return process.returncode, f.read()


def logged_step(log) -> int:
  """The last step the run logged (log_every_steps=1), 0 before the first."""
  with open(log) as f:
    steps = re.findall(r'\] \[(\d+)\] train/', f.read())
  return int(steps[-1]) if steps else 0


def wait_until(condition, process, timeout=240):
  end = time.time() + timeout
  while not condition():
    assert process.poll() is None, 'the run ended before the point where the test stops it'
    assert time.time() < end, 'timed out'
    time.sleep(0.002)


def finished_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def restore(path):
  """A checkpoint's arrays as host values, whatever devices wrote it."""
  with ocp.StandardCheckpointer() as reader:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), dict(reader.metadata(path).item_metadata)
    )
    return jax.tree.map(np.asarray, reader.restore(path, target))


def final_params(workdir, step):
  return restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))['params']


def test_sigterm_kill9_and_a_damaged_checkpoint_resume_to_the_uninterrupted_params(tmp_path, env):
  steps, every = 24, 4
  flags = PIXELCNN + [
    f'--config.num_train_steps={steps}',
    '--config.log_every_steps=1',
    f'--config.checkpoint_every_steps={every}',
    '--config.keep_checkpoints=10',
  ]
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  log = str(tmp_path / 'log')
  code, out = finish(launch(flags, straight, log, env), log)
  assert code == 0, out[-3000:]

  # SIGTERM: the step in flight is finished, saved (not a checkpoint step of the policy), and the exit is clean.
  run = launch(flags, stopped, log, env)
  wait_until(lambda: logged_step(log) >= 6, run)
  run.send_signal(signal.SIGTERM)
  code, out = finish(run, log)
  saved = int(re.search(r'saved the checkpoint of step (\d+)', out).group(1))
  assert code == 0 and saved >= 6, out[-3000:]
  assert finished_steps(stopped)[-1] == saved and saved < steps

  # kill -9 between checkpoints: the next start resumes from the last one.
  run = launch(flags, stopped, log, env)
  wait_until(lambda: logged_step(log) >= saved + 6, run)
  run.kill()
  run.wait()
  assert f'Resumed from the checkpoint of step {saved}' in pathlib.Path(log).read_text()

  # kill -9 while a checkpoint is being written: orbax's temporary directory is left behind. The kill is timed on
  # the directory's appearance; should the write finish first, a torn copy stands in for it, so the next start
  # always meets one.
  checkpoints = os.path.join(stopped, 'checkpoints')
  torn = lambda: glob.glob(os.path.join(checkpoints, '*.orbax-checkpoint-tmp'))
  resumed_at = finished_steps(stopped)[-1]
  run = launch(flags, stopped, log, env)
  wait_until(lambda: (logged_step(log) > resumed_at and torn()) or logged_step(log) >= resumed_at + 2 * every, run)
  run.kill()
  run.wait()
  latest = finished_steps(stopped)[-1]
  if not torn():
    os.makedirs(os.path.join(checkpoints, f'{latest + every}.orbax-checkpoint-tmp', 'default'))
    with open(os.path.join(checkpoints, f'{latest + every}.orbax-checkpoint-tmp', '_CHECKPOINT_METADATA'), 'w') as f:
      f.write('{"item_handlers": ')

  # And the latest finished checkpoint damaged (a data file cut short): a warning, the previous one is restored.
  previous = finished_steps(stopped)[-2]
  data_files = glob.glob(os.path.join(checkpoints, str(latest), 'default', 'ocdbt.process_0', 'd', '*'))
  biggest = max(data_files, key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 2)
  code, out = finish(launch(flags, stopped, log, env), log)
  assert code == 0, out[-3000:]
  assert re.search(rf'Checkpoint {latest} in \S+ cannot be read', out), out[-3000:]
  assert f'Resumed from the checkpoint of step {previous}' in out
  assert [os.path.basename(p).split('-')[0] for p in glob.glob(os.path.join(stopped, 'corrupt_checkpoints', '*'))] == [
    str(latest)
  ]
  assert not torn()  # Cleaned up at the start.

  a, b = final_params(straight, steps), final_params(stopped, steps)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(final_params(stopped, previous)))
  )  # The comparison can fail: training moved the parameters.


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch_two(flags, workdir, tmp_path, env, address):
  return [
    launch(
      flags + [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      workdir,
      str(tmp_path / f'log{i}'),
      env,
      devices=2,
    )
    for i in range(2)
  ]


@pytest.mark.parametrize('flags, preempt', [(PIXELCNN, True), (SRIM, False)], ids=['pixelcnn', 'srim'])
def test_two_processes_of_two_devices_reach_one_process_of_four(tmp_path, env, flags, preempt):
  steps = 30 if preempt else 6
  flags = flags + [
    f'--config.num_train_steps={steps}',
    f'--config.checkpoint_every_steps={steps}',
    '--config.log_every_steps=1',
    f'--config.eval_every_steps={steps}',
    f'--config.sample_every_steps={steps}',
    '--config.num_sample_images=2',
  ]
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  if preempt:  # SIGTERM to process 1 alone: JAX's preemption service has both save the same step and stop.
    runs = launch_two(flags, two, tmp_path, env, f'localhost:{free_port()}')
    wait_until(lambda: logged_step(str(tmp_path / 'log0')) >= 3, runs[0])
    runs[1].send_signal(signal.SIGTERM)
    outs = [finish(run, str(tmp_path / f'log{i}')) for i, run in enumerate(runs)]
    assert [code for code, _ in outs] == [0, 0], outs[1][1][-3000:]
    saved = int(re.search(r'saved the checkpoint of step (\d+)', outs[0][1]).group(1))
    assert 3 <= saved < steps and finished_steps(two) == [saved]
  runs = launch_two(flags, two, tmp_path, env, f'localhost:{free_port()}')
  outs = [finish(run, str(tmp_path / f'log{i}')) for i, run in enumerate(runs)]
  for code, out in outs:
    assert code == 0, out[-3000:]
  code, out = finish(launch(flags, one, str(tmp_path / 'log'), env, devices=4), str(tmp_path / 'log'))
  assert code == 0, out[-3000:]

  # Process 0 alone reports, logs to TensorBoard (an events file per start) and writes the grid; both wrote the
  # checkpoint.
  assert 'final metrics' in outs[0][1] and 'final metrics' not in outs[1][1]
  assert len(glob.glob(os.path.join(two, 'events.out.tfevents.*'))) == (2 if preempt else 1)
  assert len(os.listdir(os.path.join(two, 'samples'))) == 1
  shards = os.listdir(os.path.join(two, 'checkpoints', str(steps), 'default'))
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(shards)
  # The same parameters up to float rounding: the two all-reduce over gloo in another order than one process's.
  # Except where the loss has no gradient: a conv's bias before batch norm is cancelled by it, so its gradient is
  # rounding noise, which Adam scales up to full-size steps (the running mean absorbs it): those are left out.
  a, b = final_params(two, steps), final_params(one, steps)
  compared = 0
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    name = jax.tree_util.keystr(path)
    conv = re.search(r"\['conv(\d+)'\]\['bias'\]", name)
    if not (conv and f'batch_norm{conv.group(1)}' in a[path[0].key]):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=name)
      compared += x.size
  assert compared > 0.99 * sum(x.size for x in jax.tree.leaves(a))
  # The function is the same: both runs report the same held-out metrics.
  metrics = [
    dict(re.findall(r'(eval/\w+)=([-\d.e]+)', re.search('final metrics: (.*)', o).group(1))) for o in (outs[0][1], out)
  ]
  assert metrics[0] and metrics[0].keys() == metrics[1].keys()
  for k in metrics[0]:
    assert float(metrics[0][k]) == pytest.approx(float(metrics[1][k]), rel=1e-3), k
