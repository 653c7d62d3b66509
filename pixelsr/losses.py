"""The paper's objectives and the metrics logged beside them (nats per sub-pixel whatever the objective's scale).

O1 (eq. 7) is the cross-entropy of softmax(A + B); O2 (eq. 8) adds the cross-entropy of softmax(A) so the
conditioning network cannot be ignored. Eq. 8 sums over every sub-pixel of every image; a minibatch step optimises
`reduction='sum'`: each image's sub-pixels summed, the images averaged (the batch size stays out of the scale), or
`'mean'`: averaged over sub-pixels too, 1 / (H W C) of it. The scale is not neutral: TF1's RMSProp, the paper's,
starts its mean square at 1, so its first updates are ~lr x gradient until the mean square has caught up with the
squared gradients, and the mean's gradients are 3072 times smaller at 32x32x3.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


Objective = Literal['O1', 'O2']  # Eq. 7, eq. 8.


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sub-pixel -log softmax(logits)[label]; logits (..., K), integer labels (...)."""
  label_logits = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - label_logits


def per_example_losses(cond_logits: jax.Array, prior_logits: jax.Array, highres: jax.Array) -> dict[str, jax.Array]:
  """Mean over each example's sub-pixels of CE(A + B) and CE(A), shaped (B,)."""
  reduce = lambda ce: ce.reshape(ce.shape[0], -1).mean(axis=1)
  return {
    'ce_joint': reduce(cross_entropy(cond_logits + prior_logits, highres)),
    'ce_cond': reduce(cross_entropy(cond_logits, highres)),
  }


Reduction = Literal['sum', 'mean']


def objective(ce_joint: jax.Array, ce_cond: jax.Array, kind: Objective) -> jax.Array:
  return ce_joint + ce_cond if kind == 'O2' else ce_joint


def loss_and_metrics(
  cond_logits: jax.Array,
  prior_logits: jax.Array,
  highres: jax.Array,
  kind: Objective,
  weights: jax.Array | None = None,
  reduction: Reduction = 'mean',
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective to optimise, averaged over examples (weighted by `weights`, e.g. an eval padding mask) and summed
  or averaged over each example's sub-pixels by `reduction`; and its parts in nats per sub-pixel."""
  per_example = per_example_losses(cond_logits, prior_logits, highres)
  per_example[kind] = objective(per_example['ce_joint'], per_example['ce_cond'], kind)
  if weights is None:
    weights = jnp.ones_like(per_example['ce_joint'])
  total = jnp.maximum(weights.sum(), 1.0)
  metrics = {name: (value * weights).sum() / total for name, value in per_example.items()}
  metrics['bits_per_dim'] = metrics['ce_joint'] / LN2
  sub_pixels = math.prod(highres.shape[1:]) if reduction == 'sum' else 1
  return metrics[kind] * sub_pixels, metrics
