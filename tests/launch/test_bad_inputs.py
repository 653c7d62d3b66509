"""The rows of the README's "What happens when ..." table that no other test file covers: a batch that does not
split over the devices, a workdir that cannot be written, a full disk. Each ends in one message naming the problem
and the fix, and leaves what was there intact."""

import builtins
import errno
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from common.errors import UserError
from pixelsr import train
from tests.helpers import REPO, checkpoint_params, tiny_config

pytestmark = pytest.mark.usefixtures('compile_once')  # tests/conftest.py


def shell_env():
  """The environment of a user's shell: importing jax here set TF_CPP_MIN_LOG_LEVEL=1, under which TensorFlow logs
  the image error's traceback as a warning; launch scripts set 2 when it is unset (common/cli.py)."""
  return {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_devices(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      'launch/train.py',
      '--config=configs/demo.py:runlocal',
      '--config.batch_size=8',
      f'--workdir={tmp_path / "run"}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3'),
  )
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
    'error: config.batch_size=8 does not split over 3 devices; set '
    'config.batch_size to a positive multiple of 3 (or run on fewer '
    'devices).'
  )
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.slow
def test_an_unreadable_image_in_a_training_folder_stops_the_run_naming_it(tmp_path):
  folder = tmp_path / 'photos'
  folder.mkdir()
  for i in range(4):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f'{i}.png')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff not a jpeg')
  # The timeout guards a hang seen here: TF's iterator, deleted at interpreter exit, waited forever on its
  # in-flight image decodes.
  out = subprocess.run(
    [
      sys.executable,
      'launch/train.py',
      '--config=configs/demo.py:runlocal',
      '--config.data.source=folder',
      f'--config.data.folder={folder}',
      '--config.eval_every_steps=0',
      '--config.sample_every_steps=0',
      f'--workdir={tmp_path / "run"}',
    ],
    capture_output=True,
    text=True,
    timeout=240,
    cwd=REPO,
    env=shell_env(),
  )
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: Cannot read image file '{folder / 'broken.jpg'}'")
  assert 'Traceback' not in out.stderr


def test_a_workdir_that_cannot_be_written(tmp_path, monkeypatch):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(UserError, match=r'Cannot write to --workdir .*a_file/run: Not a directory\. Pass a --workdir'):
    train.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path / 'a_file' / 'run'))
  with pytest.raises(UserError, match='takes a directory path, not a URL'):
    train.train_and_evaluate(tiny_config(num_train_steps=1), 'gs://bucket/run')

  # A read-only filesystem, simulated: root would write through file permissions.
  workdir = tmp_path / 'readonly'
  workdir.mkdir()
  real_open = builtins.open

  def read_only(path, mode='r', *args, **kwargs):
    if str(path).startswith(str(workdir)) and any(c in mode for c in 'wax+'):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', read_only)
  with pytest.raises(UserError, match=r'Cannot write to --workdir .*readonly: Read-only file system'):
    train.train_and_evaluate(tiny_config(num_train_steps=1), str(workdir))
  assert os.listdir(workdir) == []


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(num_train_steps=5), workdir)
  good = checkpoint_params(workdir, 5)

  # Not enough room for the next checkpoint: stopped before writing it.
  real_usage = shutil.disk_usage
  monkeypatch.setattr(shutil, 'disk_usage', lambda p: real_usage(p)._replace(free=1000))
  with pytest.raises(
    UserError,
    match=r'Not enough disk space to save checkpoint 10: 0.0 MiB free under .*, about '
    r'0.\d MiB needed.* resume from checkpoint 5',
  ):
    train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  monkeypatch.undo()

  # The disk fills during the write: orbax's background thread fails and re-raises at the next save or the end.
  real_save = ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if step == 10:
      raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.kernel" in OCDBT database at local file '
        f'"{workdir}/checkpoints/10.orbax-checkpoint-tmp/": Failed to write 4096 bytes: No space left '
        "on device [os_error_code='28']"
      )
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  with pytest.raises(
    UserError,
    match=r'Writing a checkpoint under .* failed \(No space left on device\)\. Free disk '
    r'space .* resume from checkpoint 5, which is intact\.',
  ):
    train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  monkeypatch.undo()

  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['5']
  jax.tree.map(np.testing.assert_array_equal, checkpoint_params(workdir, 5), good)
  final = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)  # Room again: it resumes.
  assert np.isfinite(final['train/loss']) and sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '5']


@pytest.mark.slow
@pytest.mark.parametrize('config', ['configs/demo.py:runlocal', 'configs/demo_regression.py:runlocal'])
def test_an_impossible_model_value_ends_in_one_error_line(tmp_path, config):
  """A well-typed value that the model's dataclass refuses in __post_init__ (not only ill-typed ones)."""
  out = subprocess.run(
    [
      sys.executable,
      'launch/train.py',
      f'--config={config}',
      '--config.model.upsample_factor=3',
      f'--workdir={tmp_path / "run"}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == 'error: config.model.upsample_factor must be a power of two, got 3.'
  assert not os.path.exists(tmp_path / 'run')
