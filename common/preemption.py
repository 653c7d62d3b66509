"""Preemption: SIGTERM asks the training loop to stop after the current step, save, and exit cleanly.

Cluster schedulers (SLURM, Cloud TPU spot VMs, Kubernetes) send SIGTERM some seconds before they kill a job. With one
process, our handler records it. With several (jax.distributed), JAX's own preemption service catches the signal on
whichever process gets it and picks the next step that every process will reach, so they all save the same step;
`multihost_utils.reached_preemption_sync_point` must then be asked at every step.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Training stopped on SIGTERM after saving the checkpoint of `step`; running the same command resumes it."""

  def __init__(self, step: int, workdir: str):
    super().__init__(
      f'Preempted (SIGTERM): saved the checkpoint of step {step} in {workdir}; run the same command to resume.'
    )
    self.step = step


class Watcher:
  """`reached(step)` is True at the step where the loop must save and stop. A context manager: the previous SIGTERM
  handler is put back on exit."""

  def __init__(self):
    self._signalled = False
    self._previous = None

  def __enter__(self) -> 'Watcher':
    # Several processes: JAX's service owns SIGTERM. Outside the main thread Python cannot install handlers.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if not self._signalled:
      logging.warning('SIGTERM: stopping after the current step to save a checkpoint.')
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
