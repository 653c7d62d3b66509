"""launch/cluster/*.sh: the commands and sbatch script they print with --dry-run, their errors, and that a real run
calls gcloud/sbatch as printed. gcloud, sbatch, srun, scancel and scontrol are fakes on PATH that log their argv."""

import os
import shlex
import signal
import subprocess
import time

import pytest

from tests.helpers import REPO

TPU = os.path.join(REPO, 'launch', 'cluster', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'launch', 'cluster', 'slurm_gpu.sh')
OVERRIDES = ['--config.name=my run', "--config.note=it's $HOME"]  # A space, a quote and a $ to keep literal.

# Each call writes its argv (NUL-separated) to a file under $FAKE_LOG; sbatch also keeps its stdin.
LOG_ARGV = 'log() { : > "$1"; local f=$1; shift; for a in "$@"; do printf "%s\\0" "$a" >> "$f"; done; }\n'
FAKES = {
  'gcloud': 'n=$(ls "$FAKE_LOG" | wc -l); log "$FAKE_LOG/call$n.gcloud" "$@"',
  'sbatch': 'log "$FAKE_LOG/sbatch" "$@"; cat > "$FAKE_LOG/sbatch.stdin"; echo "Submitted batch job 42"',
  # A task of the job: waits for SIGTERM like launch/train.py (saves, exits 0), or exits with $FAKE_SRUN_EXIT.
  'srun': (
    'log "$FAKE_LOG/srun" "$@"; [ -z "${FAKE_SRUN_EXIT:-}" ] || exit "$FAKE_SRUN_EXIT"\n'
    'trap \'touch "$FAKE_LOG/srun.got_term"; exit 0\' TERM; echo $$ > "$FAKE_LOG/srun.pid"\n'
    'while :; do sleep 0.01; done'
  ),
  # Slurm delivers the signal to the step's tasks: here, the fake srun.
  'scancel': 'log "$FAKE_LOG/scancel" "$@"; kill -TERM "$(cat "$FAKE_LOG/srun.pid")"',
  'scontrol': 'log "$FAKE_LOG/scontrol" "$@"',
}


@pytest.fixture
def env(tmp_path):
  bin_dir, log = tmp_path / 'bin', tmp_path / 'log'
  bin_dir.mkdir()
  log.mkdir()
  for name, body in FAKES.items():
    (bin_dir / name).write_text('#!/usr/bin/env bash\n' + LOG_ARGV + body + '\n')
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_LOG=str(log))


def logged(env, name):
  """The argv a fake was called with, or None if it was not called."""
  path = os.path.join(env['FAKE_LOG'], name)
  if not os.path.exists(path):
    return None
  with open(path, 'rb') as f:
    return f.read().decode().split('\0')[:-1]


def run(script, args, env, cwd=REPO):
  # Executed as the README runs them: by path, so the executable bit and the shebang count.
  return subprocess.run([script, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=10)


TPU_ARGS = [
  '--tpu=sr-pod',
  '--zone=us-central2-b',
  '--config=configs/celeba_pixelcnn.py',
  '--workdir=/gcs/bucket/runs/celeba',
]
TRAIN_ARGV = [
  'launch/train.py',
  '--config=configs/celeba_pixelcnn.py',
  '--workdir=/gcs/bucket/runs/celeba',
  '--distributed',
  *OVERRIDES,
]


def ssh_parts(argv):
  """gcloud argv -> (argv before --command, the remote command line split by the remote shell)."""
  assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
  assert argv[-1].startswith('--command=')
  return argv[:-1], shlex.split(argv[-1][len('--command=') :])


def test_tpu_dry_run_prints_the_training_command_for_all_workers(env):
  result = run(TPU, [*TPU_ARGS, '--project=my-proj', '--dry-run', '--', *OVERRIDES], env)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 1
  head, remote = ssh_parts(shlex.split(lines[0]))
  assert head == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    'sr-pod',
    '--zone=us-central2-b',
    '--project=my-proj',
    '--worker=all',
  ]
  assert remote == ['cd', 'probabilistic-sr', '&&', 'python3', *TRAIN_ARGV]
  assert os.listdir(env['FAKE_LOG']) == []  # Nothing ran.


def test_tpu_dry_run_with_setup_clones_and_installs_first(env):
  result = run(
    TPU,
    [
      *TPU_ARGS,
      '--setup',
      '--repo-url=https://example.com/psr.git',
      '--repo-dir=code/psr',
      '--python=/opt/venv/bin/python',
      '--dry-run',
    ],
    env,
  )
  assert result.returncode == 0, result.stderr
  setup, train = [ssh_parts(shlex.split(line)) for line in result.stdout.splitlines()]
  assert setup[0] == train[0] and '--worker=all' in setup[0] and not any('project' in a for a in setup[0])
  assert 'else git clone -q https://example.com/psr.git code/psr; fi' in ' '.join(setup[1])
  assert setup[1][-11:] == [
    '&&',
    'cd',
    'code/psr',
    '&&',
    '/opt/venv/bin/python',
    '-m',
    'pip',
    'install',
    '-q',
    '-e',
    '.[tpu]',
  ]
  assert train[1] == ['cd', 'code/psr', '&&', '/opt/venv/bin/python', *TRAIN_ARGV[:4]]
  assert os.listdir(env['FAKE_LOG']) == []


def test_tpu_runs_gcloud_as_printed(env):
  args = [*TPU_ARGS, '--setup', '--repo-url=https://example.com/psr.git', '--', *OVERRIDES]
  printed = [shlex.split(line) for line in run(TPU, ['--dry-run', *args], env).stdout.splitlines()]
  result = run(TPU, args, env)
  assert result.returncode == 0, result.stderr
  calls = [['gcloud', *logged(env, f'call{i}.gcloud')] for i in range(2)]
  assert calls == printed and len(os.listdir(env['FAKE_LOG'])) == 2
  assert ssh_parts(calls[1])[1] == ['cd', 'probabilistic-sr', '&&', 'python3', *TRAIN_ARGV]
  assert [shlex.split(line[2:]) for line in result.stderr.splitlines()] == calls  # Echoed as `+ command`.


@pytest.mark.parametrize(
  'args, missing',
  [
    ([], '--tpu --zone --config --workdir'),
    (['--tpu=x', '--zone=z', '--workdir=/gcs/b/w'], '--config'),
  ],
)
def test_tpu_missing_options(env, args, missing):
  result = run(TPU, [*args, '--dry-run'], env)
  assert result.returncode == 2 and result.stdout == ''
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f'error: missing required option(s): {missing}']
  assert 'usage: launch/cluster/tpu_pod.sh' in result.stderr
  assert os.listdir(env['FAKE_LOG']) == []


def test_tpu_setup_needs_a_repo_url_and_bad_arguments_fail(env):
  result = run(TPU, [*TPU_ARGS, '--setup'], env)
  assert result.returncode == 2 and result.stderr.startswith('error: --setup needs --repo-url')
  result = run(TPU, [*TPU_ARGS, '--tpu', 'x'], env)
  assert result.returncode == 2 and result.stderr.startswith("error: unknown argument '--tpu'")
  result = run(TPU, [*TPU_ARGS[:-1], '--workdir=gs://bucket/run'], env)
  assert result.returncode == 2 and result.stderr.startswith('error: --workdir takes a path that every worker sees')
  assert os.listdir(env['FAKE_LOG']) == []


SLURM_ARGS = [
  '--nodes=4',
  '--gpus-per-node=8',
  '--config=configs/celeba_pixelcnn.py:big',
  '--workdir=/shared/runs/celeba pcnn',
  '--venv=/shared/envs/psr',
  '--time=48:00:00',
  '--job-name=celeba',
  '--partition=gpu',
]


def slurm_dry_run(env, args, cwd=REPO):
  result = run(SLURM, ['--dry-run', *args], env, cwd=cwd)
  assert result.returncode == 0, result.stderr
  *script, last = result.stdout.splitlines()
  assert last.startswith('# dry run, nothing submitted') and shlex.split(last.split(': ')[-1]) == ['sbatch']
  return script


def srun_argv(script):
  [line] = [line for line in script if line.startswith('srun ')]
  argv = shlex.split(line)
  assert argv[-1] == '&'
  return argv[:-1]


def test_slurm_dry_run_prints_the_sbatch_script(env):
  script = slurm_dry_run(env, [*SLURM_ARGS, '--', *OVERRIDES])
  assert script[0] == '#!/bin/bash'
  directives = [line for line in script if line.startswith('#SBATCH')]
  assert directives == [
    '#SBATCH --job-name=celeba',
    '#SBATCH --nodes=4',
    '#SBATCH --ntasks-per-node=1',
    '#SBATCH --gpus-per-node=8',
    '#SBATCH --cpus-per-task=8',
    '#SBATCH --time=48:00:00',
    '#SBATCH --output=slurm-%x-%j.out',
    '#SBATCH --open-mode=append',
    '#SBATCH --requeue',
    '#SBATCH --signal=B:USR1@120',
    '#SBATCH --partition=gpu',
  ]
  assert script[1 : len(directives) + 1] == directives  # sbatch reads #SBATCH lines only before the first command.
  assert f'cd {REPO}' in script or f'cd {shlex.quote(REPO)}' in script
  assert 'source /shared/envs/psr/bin/activate' in script
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7' in script
  assert """trap 'requeue=1; scancel --signal=TERM "$SLURM_JOB_ID"' USR1""" in script
  assert srun_argv(script) == [
    'srun',
    '--kill-on-bad-exit=1',
    'python',
    'launch/train.py',
    '--config=configs/celeba_pixelcnn.py:big',
    '--workdir=/shared/runs/celeba pcnn',
    '--distributed',
    *OVERRIDES,
  ]
  result = subprocess.run(['bash', '-n'], input='\n'.join(script), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert os.listdir(env['FAKE_LOG']) == []  # Nothing submitted.


def test_slurm_defaults_and_relative_paths(env, tmp_path):
  script = slurm_dry_run(
    env,
    ['--nodes=1', '--gpus-per-node=2', '--config=configs/demo.py', '--workdir=runs/x', '--grace=300', '--account=proj'],
    cwd=tmp_path,
  )
  assert '#SBATCH --signal=B:USR1@300' in script and '#SBATCH --account=proj' in script
  assert not any('activate' in line for line in script)
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1' in script
  assert srun_argv(script)[4:6] == ['--config=configs/demo.py', f'--workdir={tmp_path}/runs/x']


def test_slurm_submits_the_printed_script(env):
  args = [*SLURM_ARGS, '--', *OVERRIDES]
  script = slurm_dry_run(env, args)
  result = run(SLURM, args, env)
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'Submitted batch job 42\n'
  assert logged(env, 'sbatch') == []
  with open(os.path.join(env['FAKE_LOG'], 'sbatch.stdin')) as f:
    assert f.read().splitlines() == script


@pytest.mark.parametrize(
  'args, missing',
  [
    ([], '--nodes --gpus-per-node --config --workdir'),
    (['--nodes=2', '--config=c.py', '--workdir=/w'], '--gpus-per-node'),
  ],
)
def test_slurm_missing_options(env, args, missing):
  result = run(SLURM, [*args, '--dry-run'], env)
  assert result.returncode == 2 and result.stdout == ''
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f'error: missing required option(s): {missing}']
  assert 'usage: launch/cluster/slurm_gpu.sh' in result.stderr
  assert os.listdir(env['FAKE_LOG']) == []


def test_slurm_rejects_a_bad_node_count(env):
  result = run(SLURM, [*SLURM_ARGS, '--nodes=two'], env)
  assert result.returncode == 2 and result.stderr.startswith('error: --nodes must be a positive integer')
  assert os.listdir(env['FAKE_LOG']) == []


@pytest.mark.parametrize('script, args', [(TPU, TPU_ARGS), (SLURM, SLURM_ARGS)])
def test_dry_run_after_the_overrides_is_refused(env, script, args):
  result = run(script, [*args, '--', '--config.x=1', '--dry-run'], env)
  assert result.returncode == 2 and result.stderr.startswith('error: --dry-run goes before --')
  assert os.listdir(env['FAKE_LOG']) == []


def start_job(env, tmp_path, **extra_env):
  """Runs the generated sbatch script as Slurm would, with fake srun/scancel/scontrol."""
  job = tmp_path / 'job.sbatch'
  job.write_text(
    '\n'.join(slurm_dry_run(env, ['--nodes=2', '--gpus-per-node=4', '--config=configs/demo.py', '--workdir=/shared/w']))
    + '\n'
  )
  return subprocess.Popen(
    ['bash', str(job)],
    env=dict(env, SLURM_JOB_ID='42', SLURM_CPUS_PER_TASK='8', **extra_env),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_slurm_job_near_time_limit_stops_training_with_sigterm_and_requeues(env, tmp_path):
  job = start_job(env, tmp_path)
  pid_file = os.path.join(env['FAKE_LOG'], 'srun.pid')
  deadline = time.monotonic() + 5
  while not os.path.exists(pid_file) and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.1)  # Let the batch shell reach `wait`.
  job.send_signal(signal.SIGUSR1)  # What --signal=B:USR1@120 does.
  _, stderr = job.communicate(timeout=5)
  assert job.returncode == 0, stderr
  assert logged(env, 'srun')[:3] == ['--kill-on-bad-exit=1', 'python', 'launch/train.py']
  assert logged(env, 'scancel') == ['--signal=TERM', '42']
  assert os.path.exists(os.path.join(env['FAKE_LOG'], 'srun.got_term'))
  assert logged(env, 'scontrol') == ['requeue', '42']


def test_slurm_job_that_ends_by_itself_is_not_requeued(env, tmp_path):
  job = start_job(env, tmp_path, FAKE_SRUN_EXIT='3')
  _, stderr = job.communicate(timeout=5)
  assert job.returncode == 3, stderr
  assert logged(env, 'srun') is not None
  assert logged(env, 'scancel') is None and logged(env, 'scontrol') is None
