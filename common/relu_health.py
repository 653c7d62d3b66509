"""Dead ReLU channels: a health signal a person wants to see early, because a network whose units die stops
learning from its input long before its loss says so.

A `ReLU` layer records, when its module is applied with `mutable=[COLLECTION]`, the fraction of positive values of
each channel per example; applied without it (training, sampling) or in `init`, it is a plain ReLU and records
nothing, so the variables `init` returns are the parameters alone. A channel
is dead at a site when it is never positive on any position of any evaluated example: it passes no signal and gets
no gradient, so it never comes back by itself.

  (out, stats) = model.apply(variables, x, mutable=[relu_health.COLLECTION])
  sums = relu_health.channel_sums(stats, mask)   # per site: (C,) sums over the real examples, jit-able
  figures = relu_health.summarise(means)         # the sums over an eval set / its examples -> dead fractions
"""

from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

COLLECTION = 'relu_stats'
_PREFIX = 'relu_active/'  # Keys of `channel_sums`, so they travel beside other eval sums.


class ReLU(nn.Module):
  """max(x, 0) over (B, ..., C), recording each example's fraction of positive values per channel, (B, C) float32,
  under `COLLECTION` when that collection is mutable outside `init`."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(x)
    if self.is_mutable_collection(COLLECTION) and not self.is_initializing():
      positive = (y > 0).astype(jnp.float32)
      self.sow(COLLECTION, 'active', positive.mean(axis=tuple(range(1, y.ndim - 1))))
    return y


def channel_sums(stats: dict, mask: jax.Array) -> dict[str, jax.Array]:
  """{'relu_active/<site>': (C,) sum over the real (mask == True) examples of each channel's positive fraction}, one
  entry per `ReLU` applied; <site> is its module path below the collection, e.g. 'conditioning/stage0_block1/out'."""
  weights = mask.astype(jnp.float32)[:, None]
  flat = traverse_util.flatten_dict(dict(stats.get(COLLECTION, {})), sep='/')
  flat = cast(dict[str, Any], flat)
  return {_PREFIX + path.removesuffix('/active'): (values[0] * weights).sum(axis=0) for path, values in flat.items()}


def summarise(means: dict[str, np.ndarray]) -> dict[str, float]:
  """From `channel_sums` added over an eval set and divided by its examples: 'relu_dead/<site>' (the fraction of the
  site's channels never positive), 'relu_dead_worst' (the largest of those), 'relu_dead_mean' (their mean over sites)
  and 'relu_active' (the fraction of positive values, every channel of every site weighing the same). Other keys of
  `means` are ignored; no ReLU recorded gives {}."""
  sites = {k[len(_PREFIX) :]: np.asarray(v, np.float64) for k, v in means.items() if k.startswith(_PREFIX)}
  if not sites:
    return {}
  dead = {site: float(np.mean(active <= 0)) for site, active in sites.items()}
  figures = {f'relu_dead/{site}': value for site, value in dead.items()}
  figures.update(
    relu_dead_worst=max(dead.values()),
    relu_dead_mean=float(np.mean(list(dead.values()))),
    relu_active=float(np.mean(np.concatenate(list(sites.values())))),
  )
  return figures


def split(means: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
  """(the scalar means, `summarise` of the ReLU sums) of `trainer.masked_means`'s output: floats, and (C,) arrays
  under the ReLU sums' keys."""
  return {k: v for k, v in means.items() if not k.startswith(_PREFIX)}, summarise(means)


def worst_site(figures: dict[str, float]) -> tuple[str, float] | None:
  """(site, dead fraction) of the site with the most dead channels among `summarise`'s keys (with or without a
  prefix such as 'eval/'); ties go to the first in network order. None if no site is recorded."""
  dead = [(k.split('relu_dead/', 1)[1], v) for k, v in figures.items() if 'relu_dead/' in k]
  return max(dead, key=lambda item: item[1]) if dead else None


def describe(figures: dict[str, float]) -> str:
  """One line for the logs: the worst site, its dead fraction, and the mean over sites."""
  worst = worst_site(figures)
  if worst is None:
    return 'no ReLU recorded'
  mean = next(v for k, v in figures.items() if k.endswith('relu_dead_mean'))
  return f'worst site {worst[0]}: {worst[1]:.0%} of its channels dead (mean over sites {mean:.0%})'
