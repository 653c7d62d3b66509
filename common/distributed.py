"""Several processes (hosts) on JAX's own distributed runtime.

`initialize` calls `jax.distributed.initialize` before anything touches a device. With no coordinates given it uses
JAX's cluster auto-detection (Cloud TPU pods, SLURM, Open MPI, ...); explicit coordinates come from the arguments or
from the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). After it, `jax.devices()` lists
every process's devices, the data mesh spans them all, each process feeds its own rows of every batch
(common.data), orbax writes checkpoints from all processes, and only process 0 logs and writes files.
"""

import os

import jax
from absl import logging

from common.errors import UserError


def initialize(
  enabled: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int = 300,
) -> None:
  """Joins the other processes of the job, if there is one: when `enabled` (auto-detection for what is not given),
  or when any coordinate is given here or in the environment. Call before any other JAX use."""
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = _int_or_env(num_processes, 'JAX_NUM_PROCESSES')
  process_id = _int_or_env(process_id, 'JAX_PROCESS_ID')
  given = [coordinator_address, num_processes, process_id]
  if not enabled and all(v is None for v in given):
    return
  if any(v is not None for v in given) and None in given:
    raise UserError(
      'Multi-process training needs all of --coordinator_address, --num_processes and --process_id '
      '(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or none of them with '
      '--distributed on a cluster JAX detects (Cloud TPU, SLURM).'
    )
  # CPU processes exchange gradients through gloo; GPU and TPU backends ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s)
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(
      f'Could not join the other processes ({str(e).splitlines()[0]}). Check the coordinator '
      'address (host:port of process 0, reachable from every process, the same on all), that process '
      'ids run 0 .. num_processes - 1, and that every process was started.'
    ) from e
  logging.info(
    'Process %d of %d; %d local and %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _int_or_env(value: int | None, variable: str) -> int | None:
  if value is not None or os.environ.get(variable) is None:
    return value
  try:
    return int(os.environ[variable])
  except ValueError:
    raise UserError(f'{variable}={os.environ[variable]!r} is not an integer.') from None
