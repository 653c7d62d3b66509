"""launch/corners.py on a machine without the lab's MNIST folder: the tfds fallback, and error messages whose every
suggested flag and command the command accepts (each is run through the real launcher)."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # Launches processes (pyproject.toml's markers).
FLAG = re.compile(r'--[a-z_.]+(?:=[^\s,;()]*[^\s,;().])?')  # a sentence's full stop is not the value's


def run_cli(tmp_path, *flags):
  # An empty TFDS_DATA_DIR: tfds mnist is not prepared there, whatever ~/tensorflow_datasets holds.
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'))
  out = subprocess.run(
    [sys.executable, 'launch/corners.py', '--runlocal', f'--workdir={tmp_path / "run"}', *flags],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    env=env,
  )
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert out.returncode == 1 and len(errors) == 1 and out.stderr.strip().endswith(errors[0]), out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  return errors[0], out.stderr


def suggested_flags(message, tmp_path):
  """The message's --flags for this command (outside `quoted commands`), each <placeholder> value replaced by an
  existing empty folder."""
  (tmp_path / 'empty').mkdir(exist_ok=True)
  text = re.sub(r'=<[^>]*>', f'={tmp_path / "empty"}', re.sub(r'`[^`]*`', '', message))
  return FLAG.findall(text)


def test_missing_folder_falls_back_to_tfds_and_every_suggestion_is_a_flag_of_the_command(tmp_path):
  error, stderr = run_cli(tmp_path, f'--mnist_dir={tmp_path / "nowhere"}')
  assert f"MNIST: {tmp_path / 'nowhere'} (config.data.mnist_dir) does not exist; reading tfds 'mnist'" in stderr
  assert error.startswith(
    f'error: No MNIST digits: {tmp_path / "nowhere"} (config.data.mnist_dir) does not exist, '
    f"and tfds 'mnist', the fallback, is not prepared in {tmp_path / 'tfds'}. "
  )
  assert f'`tfds build mnist --data_dir={tmp_path / "tfds"}`' in error and '--config.' not in error
  flags = suggested_flags(error, tmp_path)
  assert flags == [f'--mnist_dir={tmp_path / "empty"}', f'--tfds_data_dir={tmp_path / "empty"}']
  # Each is taken (a later flag overrides): the run gets past flag parsing to the data, in an empty folder.
  again, _ = run_cli(tmp_path, f'--mnist_dir={tmp_path / "nowhere"}', flags[0])
  assert again.startswith(
    f'error: Cannot read the MNIST digits: [Errno 2] No such file or directory: '
    f"'{tmp_path / 'empty' / 't10k-images-idx3-ubyte.gz'}'"
  )
  again, _ = run_cli(tmp_path, f'--mnist_dir={tmp_path / "nowhere"}', flags[1])
  assert f"tfds 'mnist', the fallback, is not prepared in {tmp_path / 'empty'}. " in again


def test_unreadable_file_suggests_flags_the_command_takes(tmp_path):
  error, _ = run_cli(tmp_path, f'--mnist_dir={tmp_path}')  # the folder exists, without the IDX file
  assert error.startswith('error: Cannot read the MNIST digits: [Errno 2] No such file or directory')
  flags = suggested_flags(error, tmp_path)
  assert flags == [f'--mnist_dir={tmp_path / "empty"}', '--mnist_source=tfds'] and '--config.' not in error
  again, _ = run_cli(tmp_path, '--mnist_source=tfds')
  assert again.startswith("error: tfds dataset 'mnist' is not prepared in") and '--config.' not in again
  assert suggested_flags(again, tmp_path) == [f'--tfds_data_dir={tmp_path / "empty"}']


def test_the_suggested_prepare_commands_run(tmp_path):
  error, _ = run_cli(tmp_path, f'--mnist_dir={tmp_path / "nowhere"}')
  python_form, cli_form = re.findall(r'`([^`]*)`', error)[:2]
  assert python_form.startswith('python -c "') and cli_form.split() == [
    'tfds',
    'build',
    'mnist',
    f'--data_dir={tmp_path / "tfds"}',
  ]
  # The Python form up to the download itself (this machine has no internet): the builder and its method exist.
  code = python_form[len('python -c "') : -1].replace('.download_and_prepare()', '.download_and_prepare; print("ok")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout == 'ok\n', out.stderr[-2000:]
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  out = subprocess.run([tfds_cli, 'build', '--help'], capture_output=True, text=True, timeout=120)
  if out.returncode != 0:  # tfds 4.9's command line without apache-beam, as the message says
    assert "No module named 'apache_beam'" in out.stderr and '`pip install apache-beam`' in error, out.stderr[-2000:]
  else:
    assert '--data_dir' in out.stdout
