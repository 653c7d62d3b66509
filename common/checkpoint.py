"""Orbax checkpoints of the train state in `<workdir>/checkpoints`, and the config they were written with."""
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from common.errors import UserError

CONFIG_FILE = 'config.json'


def make_manager(workdir: str, *, keep: int, every_steps: int) -> ocp.CheckpointManager:
  # A fixed interval only: orbax's default policy would also save the first step of every (re)start.
  policy = ocp.checkpoint_managers.FixedIntervalPolicy(every_steps)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_decision_policy=policy, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def open_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager to read the checkpoints of an existing run (creates nothing)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise UserError(f'{workdir} has no checkpoints/ directory: train first (launch/train.py --workdir={workdir}), '
                    'or pass the --workdir of a run that saved checkpoints.')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  if manager.latest_step() is None:
    raise UserError(f'{directory} holds no finished checkpoint yet; wait for the run to save one '
                    '(config.checkpoint_every_steps) or train longer.')
  return manager


def _as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def check_config(workdir: str, config: ml_collections.ConfigDict, sections: tuple[str, ...] = ('method', 'model'),
                 *, record: bool = True):
  """Refuses to resume a workdir whose checkpoints were written by a different model; records the config otherwise
  (unless `record` is False: a read-only check, e.g. before sampling from the run).

  Only `sections` must match: a resumed run may change anything else (steps, logging, data paths).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = _as_json(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for section in sections:
      if old.get(section) != new.get(section):
        raise UserError(
            f'{workdir} holds a run with a different config.{section} ({old.get(section)!r} there, '
            f'{new.get(section)!r} now). Use a new --workdir, or the config that run was started with '
            f'(saved in {path}).')
  if record and jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2)
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was started with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(f'{workdir} has no {CONFIG_FILE}: it is not a training workdir. Pass the --workdir of a run '
                    'started with launch/train.py.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_latest(manager: ocp.CheckpointManager, state: Any, step: int | None = None) -> Any:
  """The latest checkpoint (or `step`'s) restored with `state`'s shapes, dtypes and shardings, or `state` if there
  is none."""
  if step is None:
    step = manager.latest_step()
  elif step not in manager.all_steps():
    raise UserError(f'{manager.directory} has no checkpoint {step}; it has {list(manager.all_steps()) or "none"}.')
  if step is None:
    return state
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'Checkpoint {step} in {manager.directory} does not fit this model ({type(e).__name__}: '
                    f'{str(e)[:300]}). Use a new --workdir or the config it was written with.') from e


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)
