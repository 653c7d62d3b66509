"""Optimisers and learning-rate schedules from `config.optimizer`."""

import dataclasses
from typing import Literal

import ml_collections
import optax

from common.config import from_config


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """config.optimizer; the defaults are appendix A's RMSProp, but for the schedule (a constant rate here)."""

  name: Literal['rmsprop', 'adam'] = 'rmsprop'
  learning_rate: float = 4e-4  # Initial rate, before any halving.
  lr_halve_every: int = 0  # Halve the learning rate every this many steps (staircase); 0 = never.
  lr_halve_at: tuple[int, ...] = ()  # ...and/or at these steps.
  rmsprop_decay: float = 0.95  # Decay of RMSProp's running mean square.
  rmsprop_initial_scale: float = 1.0  # Start of RMSProp's mean square: 1 in TF1's RMSPropOptimizer (the paper's).
  momentum: float = 0.9  # RMSProp momentum; Adam's b1.
  adam_b2: float = 0.999  # Adam's second-moment decay.
  eps: float = 1e-8  # RMSProp: inside the square root, as TF's; Adam: outside.
  grad_clip_norm: float = 0.0  # Clip gradients to this global norm; 0 = off.


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  boundaries = {step: 0.5 for step in cfg.lr_halve_at}
  schedule = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
  if cfg.lr_halve_every:
    every = optax.exponential_decay(1.0, cfg.lr_halve_every, 0.5, staircase=True)
    return lambda step: schedule(step) * every(step)
  return schedule


def make_optimizer(section: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  cfg = from_config(OptimizerConfig, section, 'config.optimizer')
  schedule = make_schedule(cfg)
  if cfg.name == 'rmsprop':
    tx = optax.rmsprop(
      schedule, decay=cfg.rmsprop_decay, eps=cfg.eps, initial_scale=cfg.rmsprop_initial_scale, momentum=cfg.momentum
    )
  else:
    tx = optax.adam(schedule, b1=cfg.momentum, b2=cfg.adam_b2, eps=cfg.eps)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx, schedule
