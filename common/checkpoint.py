"""Orbax checkpoints of the train state in `<workdir>/checkpoints`, and the config they were written with.

A save killed part-way (kill -9, a lost node) leaves only orbax's temporary directory, which the next start deletes:
a step directory exists only once it is complete. A complete checkpoint that cannot be read back (a truncated or
damaged file) is moved to `<workdir>/corrupt_checkpoints/` with a warning and the previous one is restored instead,
so a restarted job never loops on the same failure.
"""

import dataclasses
import json
import os
import re
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from common.errors import UserError

CONFIG_FILE = 'config.json'
CORRUPT_DIR = 'corrupt_checkpoints'


def make_manager(workdir: str, *, keep: int, every_steps: int) -> ocp.CheckpointManager:
  # A fixed interval only: orbax's default policy would also save the first step of every (re)start.
  policy = ocp.checkpoint_managers.FixedIntervalPolicy(every_steps)
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, save_decision_policy=policy, create=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def open_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager to read the checkpoints of an existing run (creates nothing)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise UserError(
      f'{workdir} has no checkpoints/ directory: train first (launch/train.py --workdir={workdir}), '
      'or pass the --workdir of a run that saved checkpoints.'
    )
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  if manager.latest_step() is None:
    raise UserError(
      f'{directory} holds no finished checkpoint yet; wait for the run to save one '
      '(config.checkpoint_every_steps) or train longer.'
    )
  return manager


def _as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def field_defaults(typed: Any) -> dict:
  """The defaults of a dataclass instance's fields, as config.json records values (a method's typed model config:
  what `check_config`'s `model_defaults` takes)."""
  return json.loads(
    json.dumps({f.name: f.default for f in dataclasses.fields(typed) if f.default is not dataclasses.MISSING})
  )


def check_config(
  workdir: str,
  config: ml_collections.ConfigDict,
  sections: tuple[str, ...] = ('method', 'model'),
  *,
  model_defaults: dict | None = None,
  record: bool = True,
):
  """Refuses to resume a workdir whose checkpoints were written by a different model; records the config otherwise
  (unless `record` is False: a read-only check, e.g. before sampling from the run).

  Only `sections` must match: a resumed run may change anything else (steps, logging, data paths). A model field
  added to the library after the run was recorded counts as the run's if it has the field's default (the model the
  run trained is the default's: e.g. `residual`, added with the default that kept the model as it was).
  `model_defaults` holds those defaults: `field_defaults` of the method's typed model config.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = _as_json(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    added = set(new.get('model') or {}) - set(old.get('model') or {})
    if added and isinstance(old.get('model'), dict):
      defaults = model_defaults or {}
      old['model'] = {**{k: defaults[k] for k in added if k in defaults}, **old['model']}
    for section in sections:
      if old.get(section) != new.get(section):
        raise UserError(
          f'{workdir} holds a run with a different config.{section} ({old.get(section)!r} there, '
          f'{new.get(section)!r} now). Use a new --workdir, or the config that run was started with '
          f'(saved in {path}).'
        )
  if record and jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2)
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(
      f'{workdir} has no {CONFIG_FILE}: it is not a training workdir. Pass the --workdir of a run '
      'started with launch/train.py.'
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_latest(
  manager: ocp.CheckpointManager, state: Any, step: int | None = None, *, set_aside: bool = False
) -> Any:
  """The latest readable checkpoint (or `step`'s) restored with `state`'s shapes, dtypes and shardings, or `state`
  if there is none.

  Without `step`, a checkpoint that cannot be read is skipped with a warning, and moved out of the way if
  `set_aside` (a run about to write new checkpoints: see the module docstring), and the one before it is tried.
  One that reads but does not fit `state` (another model) is a UserError, whichever step it is.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  if step is not None:
    if step not in manager.all_steps():
      raise UserError(f'{manager.directory} has no checkpoint {step}; it has {list(manager.all_steps()) or "none"}.')
    try:
      return _restore(manager, step, abstract)
    except Exception as e:  # noqa: BLE001 (tensorstore raises bare Exception for unreadable data)
      raise UserError(
        _misfit(manager, step, abstract)
        or f'Checkpoint {step} in {manager.directory} cannot be '
        f'read ({_short(e)}); pick another with --checkpoint, or restore the file.'
      ) from e
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return _restore(manager, step, abstract)
    except Exception as e:  # noqa: BLE001
      misfit = _misfit(manager, step, abstract)
      if misfit:
        raise UserError(misfit) from e
      logging.warning(
        'Checkpoint %d in %s cannot be read (%s); trying the one before it.', step, manager.directory, _short(e)
      )
      if set_aside:
        _set_aside(manager, step)
  if steps:
    logging.warning('No checkpoint in %s could be read: starting from step 0.', manager.directory)
  return state


def _restore(manager: ocp.CheckpointManager, step: int, abstract: Any) -> Any:
  # A fresh reader per step: after a damaged step directory, a manager's guess at the layout of the others is wrong.
  reader = ocp.CheckpointManager(manager.directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    return reader.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    reader.close()


def _short(error: Exception) -> str:
  """One line of an orbax / tensorstore error; the OS's reason alone where there is one (e.g. a full disk)."""
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  if code:
    return os.strerror(int(code.group(1)))
  return f'{type(error).__name__}: {str(error).split(". See full")[0].splitlines()[0][:200]}'


def _misfit(manager: ocp.CheckpointManager, step: int, abstract: Any) -> str | None:
  """Why checkpoint `step` cannot hold `abstract`, from its metadata; None if it fits or its metadata is unreadable
  (then the checkpoint is damaged, not another model's)."""
  try:
    with ocp.StandardCheckpointer() as reader:
      stored = _shapes(dict(reader.metadata(manager.directory / str(step) / 'default').item_metadata))
  except Exception:  # noqa: BLE001
    return None
  wanted = _shapes(abstract)
  if stored == wanted:
    return None
  where = (sorted(set(stored) ^ set(wanted)) or [k for k in wanted if stored[k] != wanted[k]])[0]
  detail = (
    f'{stored[where]} there, {wanted[where]} now'
    if where in stored and where in wanted
    else 'only in the checkpoint'
    if where in stored
    else 'missing from the checkpoint'
  )
  return (
    f'Checkpoint {step} in {manager.directory} does not fit this model ({where}: {detail}). Use a new '
    '--workdir or the config it was written with.'
  )


def _shapes(tree: Any) -> dict[str, tuple]:
  """{'opt_state.0.nu.prior.head.kernel': (shape, dtype), ...}: orbax stores namedtuples as lists, dataclasses as
  dicts, so leaves are named by their keys alone."""

  def name(path):
    return '.'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path)

  return {
    name(path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves an unreadable checkpoint out of the manager's directory (process 0; the others wait for it), so that
  the step can be saved again."""
  checkpoints = os.fspath(manager.directory)
  target = os.path.join(os.path.dirname(checkpoints), CORRUPT_DIR, f'{step}-{int(time.time())}')
  logging.warning('Moved the unreadable checkpoint %d to %s.', step, target)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(checkpoints, str(step)), target)
  multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  manager.reload()


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and proves it writable before anything is compiled or read."""
  if '://' in workdir:
    raise UserError(
      f'--workdir takes a directory path, not a URL ({workdir}). On a cluster, mount the bucket on every '
      'host (e.g. gcsfuse at /gcs/BUCKET) or use a shared filesystem, and pass that path.'
    )
  probe = os.path.join(workdir, f'.write_test.{jax.process_index()}.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(
      f'Cannot write to --workdir {workdir}: {e.strerror or e}. Pass a --workdir on a writable disk '
      '(on a cluster, storage that every host shares).'
    ) from e


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Saves `state` as checkpoint `step` (in the background) when the policy or `force` says so. A full disk or a
  failed write is a UserError; the checkpoints already written stay as they were."""
  if not (force or manager.should_save(step)):
    return False
  needed = sum(x.nbytes for x in jax.tree.leaves(state))
  free = _free_bytes(manager.directory)
  if free is not None and free < needed:
    raise UserError(
      f'Not enough disk space to save checkpoint {step}: {free / 2**20:.1f} MiB free under '
      f'{manager.directory}, about {needed / 2**20:.1f} MiB needed. Free some space (or lower '
      f'config.keep_checkpoints) and run the same command to resume from {_kept(manager)}.'
    )
  try:
    return manager.save(step, args=ocp.args.StandardSave(state), force=True)
  except Exception as e:  # noqa: BLE001 (orbax re-raises a failed background write here, as ValueError)
    raise _write_error(manager, e) from e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight and closes the manager; a failed write is a UserError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _write_error(manager, e) from e
  finally:
    manager.close()


def _free_bytes(directory) -> int | None:
  try:
    return shutil.disk_usage(os.fspath(directory)).free
  except (OSError, ValueError):  # Cannot be asked (no such directory yet, an exotic filesystem): no check.
    return None


def _kept(manager: ocp.CheckpointManager) -> str:
  steps = manager.all_steps()
  return f'checkpoint {max(steps)}' if steps else 'step 0 (no checkpoint was written)'


def _write_error(manager: ocp.CheckpointManager, error: Exception) -> UserError:
  return UserError(
    f'Writing a checkpoint under {manager.directory} failed ({_short(error)}). Free disk space or fix '
    f'the storage, then run the same command to resume from {_kept(manager)}, which is intact.'
  )
