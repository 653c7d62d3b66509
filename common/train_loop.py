"""The one generic training loop: resume, step, log, evaluate, draw samples, checkpoint, stop on SIGTERM.

Methods (pixelsr, imle) supply a jitted pure step `(state, batch, rng) -> (state, metrics)` and callbacks; the loop
owns everything with side effects. The step folds the step number into `rng` itself, so a resumed run draws exactly
what an uninterrupted one would, and the data stream restarts at `start_step` through `train_batches(start_step)`:
a run stopped at any point (SIGTERM, kill -9) and resumed reaches the same parameters, bit for bit, as one that was
never stopped. On SIGTERM the loop finishes the step in flight, saves it and raises `preemption.Preempted`.
"""

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from common import checkpoint, images, preemption, sharding
from common.config import from_config
from common.errors import UserError

Batch = dict[str, np.ndarray]


# One stream per use of the seed, each `fold_in(key(seed), constant)`, so that no key is drawn from twice (the init's
# split must not share a key with the loop's step keys, nor SRIM's fixed evaluation noises with its pools).
# 'evaluate' keys the samples of launch/evaluate.py's tables (pixelsr/evaluate.py, imle/evaluate.py).
SEED_STREAMS = {'init': 1, 'train': 2, 'samples': 3, 'eval': 4, 'evaluate': 5, 'sr_space': 6}


def seed_key(seed: int, stream: str) -> jax.Array:
  """The key of `stream` (a name in SEED_STREAMS) for `config.seed`."""
  return jax.random.fold_in(jax.random.key(seed), SEED_STREAMS[stream])


class TrainingDivergedError(UserError):
  """The loss or gradient norm stopped being finite."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The loop's fields of the top-level config (see configs/defaults.py)."""

  num_train_steps: int
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  sample_every_steps: int
  profile_steps: tuple[int, ...]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'LoopConfig':
    loop = from_config(cls, {f.name: config[f.name] for f in dataclasses.fields(cls)}, 'config')
    for f in dataclasses.fields(cls):
      never_ok = f.name in ('eval_every_steps', 'sample_every_steps')
      if f.type is int and getattr(loop, f.name) < (0 if never_ok or f.name == 'num_train_steps' else 1):
        raise UserError(
          f'config.{f.name} must be {"non-negative (0 = never)" if never_ok else "positive"}, '
          f'got {getattr(loop, f.name)}.'
        )
    first_last = loop.profile_steps
    if first_last and (len(first_last) != 2 or not 1 <= first_last[0] <= first_last[1]):
      raise UserError(
        f'config.profile_steps must be () (off) or (first, last) with 1 <= first <= last, got {first_last}.'
      )
    return loop


def _due(step: int, every: int, last_step: int) -> bool:
  """Every `every` steps and at the last one; never if `every` is 0."""
  return every > 0 and (step % every == 0 or step == last_step)


class _Profiler:
  """A jax.profiler trace of the steps config.profile_steps = (first, last) into <workdir>/profile, for TensorBoard's
  profile plugin or Perfetto. A run resumed inside the range traces its remaining steps."""

  def __init__(self, workdir: str, steps: tuple[int, ...]):
    self._dir = os.path.join(workdir, 'profile')
    self._first, self._last = steps or (0, -1)
    self._active = False

  def before(self, step: int):
    if not self._active and self._first <= step <= self._last:
      jax.profiler.start_trace(self._dir, create_perfetto_trace=True)  # Also a file ui.perfetto.dev opens.
      self._active = True

  def after(self, step: int, outputs: Any):
    if self._active and step >= self._last:
      self.stop(outputs)

  def stop(self, outputs: Any = None):
    """Ends the trace once the traced steps' device work is done, so that the trace holds all of it."""
    if self._active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._active = False
      logging.info('Profile of steps %d..%d written to %s.', self._first, self._last, self._dir)


class _MetricWindow:
  """Per-step metrics kept on device until a log or checkpoint step, then checked for NaN/Inf and averaged."""

  def __init__(self):
    self._steps: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]):
    self._steps.append((step, metrics))

  def flush(self, checked: tuple[str, ...]) -> dict[str, float]:
    fetched = jax.device_get(self._steps)
    self._steps = []
    for step, metrics in fetched:
      bad = [k for k in checked if k in metrics and not math.isfinite(float(metrics[k]))]
      if bad:
        raise TrainingDivergedError(
          f'{bad[0]} is {float(metrics[bad[0]])} at step {step}; training stopped and the last good checkpoint '
          'was left untouched. Lower config.optimizer.learning_rate or enable config.optimizer.grad_clip_norm.'
        )
    if not fetched:
      return {}
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}


def save_grid(workdir: str, step: int, name: str, grid: np.ndarray):
  path = os.path.join(workdir, 'samples', f'{name}_{step:08d}.png')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  images.save_png(path, grid)


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  state: Any,
  mesh: jax.sharding.Mesh,
  train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]],
  train_batches: Callable[[int], Iterator[Batch]],
  evaluate: Callable[[Any], dict[str, float]] | None = None,
  make_grids: Callable[[Any, int], dict[str, np.ndarray]] | None = None,
  checked_metrics: tuple[str, ...] = ('loss', 'grad_norm'),
  model_defaults: dict | None = None,
) -> tuple[Any, dict[str, float]]:
  """Trains `state` up to `config.num_train_steps`, resuming from the latest checkpoint in `workdir`.

  `make_grids(state, step)` returns named uint8 (H, W, 3) images, written as PNG under `<workdir>/samples` and to
  TensorBoard. `model_defaults` (checkpoint.check_config's) are the defaults of the method's typed model config.
  Returns the final state and the last train and eval metrics ('train/...', 'eval/...').
  """
  loop = LoopConfig.from_config(config)
  checkpoint.check_workdir(workdir)
  checkpoint.check_config(workdir, config, model_defaults=model_defaults)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  manager = checkpoint.make_manager(workdir, keep=loop.keep_checkpoints, every_steps=loop.checkpoint_every_steps)
  state = checkpoint.restore_latest(manager, state, set_aside=True)
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
  last_step = loop.num_train_steps
  base_rng = seed_key(config.seed, 'train')
  profiler = _Profiler(workdir, loop.profile_steps)
  report = periodic_actions.ReportProgress(num_train_steps=last_step, writer=writer, every_steps=loop.log_every_steps)
  window, final = _MetricWindow(), {}
  batches = train_batches(start_step)

  def evaluate_and_draw(step: int):
    if evaluate is not None and _due(step, loop.eval_every_steps, last_step):
      eval_metrics = {f'eval/{k}': v for k, v in evaluate(state).items()}
      writer.write_scalars(step, eval_metrics)
      final.update(eval_metrics)
    if make_grids is not None and _due(step, loop.sample_every_steps, last_step):
      grids = make_grids(state, step)
      if jax.process_index() == 0:
        for name, grid in grids.items():
          save_grid(workdir, step, name, grid)
      writer.write_images(step, {name: grid[None] for name, grid in grids.items()})

  t0, stopped_at = time.time(), None
  try:
    with preemption.Watcher() as watcher:
      for step in range(start_step + 1, last_step + 1):
        batch = sharding.to_global(next(batches), mesh)
        profiler.before(step)
        state, metrics = train_step(state, batch, base_rng)
        profiler.after(step, metrics)
        window.add(step, metrics)
        report(step)
        log_now, stop = _due(step, loop.log_every_steps, last_step), watcher.reached(step)
        if log_now or stop or manager.should_save(step):
          means = window.flush(checked_metrics)
          if log_now:
            final.update({f'train/{k}': v for k, v in means.items()})
            writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
          checkpoint.save(manager, step, state, force=step == last_step or stop)
        if stop:
          stopped_at = step
          break
        evaluate_and_draw(step)
  finally:  # Whatever stopped the loop, saves already started hold good states: let them finish.
    profiler.stop()
    getattr(batches, 'close', lambda: None)()  # Now, not at interpreter exit (see common.data._numpy_batches).
    checkpoint.finish(manager)
    writer.flush()
  if stopped_at is not None:
    raise preemption.Preempted(stopped_at, workdir)
  if start_step >= last_step:
    logging.info('Nothing to train: the checkpoint in %s is at step %d >= %d.', workdir, start_step, last_step)
  logging.info('Trained steps %d..%d in %.1f s.', start_step + 1, last_step, time.time() - t0)
  return state, final
