"""Sampling from p(y | x) = prod_i softmax(tau * (A_i(x) + B_i(y_<i))), in raster order, R, G, B in turn.

Randomness: row r of the (B * num_samples) output batch draws sub-pixel i (raster index over H, W, C) with
`fold_in(split(key, B * num_samples)[r], i)`, so a sample does not depend on the batch it was drawn in, and every
sampler of this module returns the same image for the same key. `temperature` is the paper's tau (an inverse
temperature: it multiplies the logits); tau = inf is greedy decoding (argmax).
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _draw(keys_R: jax.Array, logits_RK: jax.Array, index: jax.Array, temperature: float) -> jax.Array:
  if math.isinf(temperature):
    return jnp.argmax(logits_RK, axis=-1).astype(jnp.int32)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, index)
  return jax.vmap(jax.random.categorical)(step_keys, temperature * logits_RK).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'temperature', 'num_samples'))
def sample_naive(model: nn.Module, variables: dict, lowres: jax.Array, key: jax.Array, temperature: float = 1.0,
                 num_samples: int = 1) -> jax.Array:
  """The reference sampler: the whole prior re-run for each of the H * W * C sub-pixels.

  lowres: uint8 (B, h, w, C). Returns uint8 (B * num_samples, H, W, C); samples of input b are rows
  b * num_samples ... (b + 1) * num_samples - 1.
  """
  lowres = jnp.repeat(lowres, num_samples, axis=0)
  cond_logits = model.apply(variables, lowres, method='condition')
  rows, height, width, colours, _ = cond_logits.shape
  keys = jax.random.split(key, rows)

  def body(i, y):
    r, c, ch = i // (width * colours), (i // colours) % width, i % colours
    prior_logits = model.apply(variables, y, method='prior_logits')
    logits = cond_logits[:, r, c, ch] + prior_logits[:, r, c, ch]
    return y.at[:, r, c, ch].set(_draw(keys, logits, i, temperature))

  y = jax.lax.fori_loop(0, height * width * colours, body, jnp.zeros((rows, height, width, colours), jnp.int32))
  return y.astype(jnp.uint8)
