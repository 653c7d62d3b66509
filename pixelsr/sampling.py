"""Sampling from p(y | x) = prod_i softmax(tau * (A_i(x) + B_i(y_<i))), in raster order, R, G, B in turn, and the
exact log-likelihood log p(y | x) of given images.

`sample` is the fast sampler: A(x) once per image, then one `lax.scan` over rows and, inside it, one over the
pixels of the row, with per-layer caches (`cached_prior`): the vertical stack is computed once per row, and each
sub-pixel costs the horizontal stack at one position and the 1x1 head for its colour. `sample_naive` re-runs the
whole network for every sub-pixel; it is the reference the fast sampler is tested against.

Randomness: row r of the (B * num_samples) output batch draws sub-pixel i (raster index over H, W, C) with
`fold_in(split(key, B * num_samples)[r], i)`, so a sample does not depend on the batch it was drawn in, and both
samplers return the same image for the same key (their logits differ only by float rounding, which changes a draw
only at an exact tie). `temperature` is the paper's tau (an inverse temperature: it multiplies the logits, section
4); tau = inf is greedy decoding (argmax).
"""

import functools
import math
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pixelsr import cached_prior


def _check_temperature(temperature: float) -> tuple[float, bool]:
  """(tau for the jitted code, greedy)."""
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0 (it multiplies the logits; inf = greedy), got {temperature}.')
  return (1.0, True) if math.isinf(temperature) else (float(temperature), False)


def _draw(keys_R: jax.Array, logits_RK: jax.Array, index: jax.Array, temperature: jax.Array, greedy: bool) -> jax.Array:
  if greedy:
    return jnp.argmax(logits_RK, axis=-1).astype(jnp.uint8)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, index)
  return jax.vmap(jax.random.categorical)(step_keys, temperature * logits_RK).astype(jnp.uint8)


def _row_noise(keys_R: jax.Array, first_index: jax.Array, width: int, colours: int, levels: int) -> jax.Array:
  """(W, R, C, K): the Gumbel noise `jax.random.categorical` adds to the logits of each sub-pixel of an image row
  (raster indices first_index ...), drawn for the whole row at once: one large vectorised threefry call instead of
  one small call per sub-pixel. argmax(noise + tau * logits) is then exactly `_draw`'s categorical draw."""
  indices = first_index + jnp.arange(width * colours)
  noise = lambda key, i: jax.random.gumbel(jax.random.fold_in(key, i), (levels,))
  noise_RIK = jax.vmap(lambda key: jax.vmap(lambda i: noise(key, i))(indices))(keys_R)
  return jnp.moveaxis(noise_RIK.reshape(len(keys_R), width, colours, levels), 1, 0)


def _condition(model: nn.Module, variables: dict, lowres: jax.Array, key: jax.Array, num_samples: int):
  lowres = jnp.repeat(lowres, num_samples, axis=0)
  cond_logits = cast(jax.Array, model.apply(variables, lowres, method='condition'))
  return cond_logits, jax.random.split(key, cond_logits.shape[0])


def sample(
  model: nn.Module,
  variables: dict,
  lowres: jax.Array | np.ndarray,
  key: jax.Array,
  temperature: float = 1.0,
  num_samples: int = 1,
) -> jax.Array:
  """Exact samples with cached activations.

  lowres: uint8 (B, h, w, C), on one device or sharded over the batch. Returns uint8 (B * num_samples, H, W, C);
  the samples of input b are rows b * num_samples ... (b + 1) * num_samples - 1. Compiled once per
  (model, shapes, num_samples, greedy); the temperature is a traced value.
  """
  temperature, greedy = _check_temperature(temperature)
  return _sample_cached(model, variables, lowres, key, jnp.float32(temperature), greedy=greedy, num_samples=num_samples)


@functools.partial(jax.jit, static_argnames=('model', 'greedy', 'num_samples'))
def _sample_cached(model, variables, lowres, key, temperature, *, greedy, num_samples):
  cond_logits, keys = _condition(model, variables, lowres, key, num_samples)
  rows, height, width, colours, levels = cond_logits.shape
  draw = functools.partial(_draw, keys, temperature=temperature, greedy=greedy)
  if not model.cfg.use_prior:  # Sub-pixels are independent given x: draw them all at once.
    flat = cond_logits.reshape(rows, height * width * colours, -1)
    y = jax.vmap(draw, in_axes=(1, 0), out_axes=1)(flat, jnp.arange(height * width * colours))
    return y.reshape(rows, height, width, colours)

  prior = cached_prior.CachedPrior(variables['params']['prior'], model.cfg)

  def row_step(row_cache, xs):
    r, cond_row_RWCK = xs
    noise_WRCK = None if greedy else _row_noise(keys, r * width * colours, width, colours, levels)

    def pixel_step(pixel_cache, xs):
      c, cond_pixel_RCK, noise_RCK = xs
      pixel = jnp.zeros((rows, colours), jnp.uint8)
      start = prior.pixel_start(row_cache, c, pixel_cache)
      inputs: Any = None  # Each colour's pass sets it; there is at least one colour.
      for colour in range(colours):
        logits, inputs = prior.pixel_logits(row_cache, c, pixel_cache, start, pixel, colour)
        logits = cond_pixel_RCK[:, colour] + logits
        if not greedy:
          logits = noise_RCK[:, colour] + temperature * logits
        pixel = pixel.at[:, colour].set(jnp.argmax(logits, axis=-1).astype(jnp.uint8))
      # The last colour's pass saw every colour its inputs may depend on: they are final for this pixel.
      return prior.advance_pixel(pixel_cache, pixel, inputs), pixel

    _, row_WRC = jax.lax.scan(
      pixel_step, prior.init_pixel_cache(rows), (jnp.arange(width), jnp.moveaxis(cond_row_RWCK, 1, 0), noise_WRCK)
    )
    row_RWC = jnp.moveaxis(row_WRC, 0, 1)
    return prior.advance_row(row_cache, row_RWC), row_RWC

  _, y_HRWC = jax.lax.scan(
    row_step, prior.init_row_cache(rows, width), (jnp.arange(height), jnp.moveaxis(cond_logits, 1, 0))
  )
  return jnp.moveaxis(y_HRWC, 0, 1)


def sample_naive(
  model: nn.Module,
  variables: dict,
  lowres: jax.Array,
  key: jax.Array,
  temperature: float = 1.0,
  num_samples: int = 1,
  num_subpixels: int | None = None,
) -> jax.Array:
  """The reference sampler: the whole network re-run for each of the H * W * C sub-pixels.

  Same arguments and result as `sample`. `num_subpixels` stops after that many sub-pixels in raster order (the
  rest stay 0), to time or test a prefix of the image.
  """
  temperature, greedy = _check_temperature(temperature)
  return _sample_naive(
    model,
    variables,
    lowres,
    key,
    jnp.float32(temperature),
    greedy=greedy,
    num_samples=num_samples,
    num_subpixels=num_subpixels,
  )


@functools.partial(jax.jit, static_argnames=('model', 'greedy', 'num_samples', 'num_subpixels'))
def _sample_naive(model, variables, lowres, key, temperature, *, greedy, num_samples, num_subpixels):
  cond_logits, keys = _condition(model, variables, lowres, key, num_samples)
  rows, height, width, colours, _ = cond_logits.shape

  def body(i, y):
    r, c, ch = i // (width * colours), (i // colours) % width, i % colours
    prior_logits = cast(jax.Array, model.apply(variables, y, method='prior_logits'))
    logits = cond_logits[:, r, c, ch] + prior_logits[:, r, c, ch]
    return y.at[:, r, c, ch].set(_draw(keys, logits, i, temperature, greedy))

  total = height * width * colours if num_subpixels is None else min(num_subpixels, height * width * colours)
  return jax.lax.fori_loop(0, total, body, jnp.zeros((rows, height, width, colours), jnp.uint8))


@functools.partial(jax.jit, static_argnames=('model',))
def log_prob(model: nn.Module, variables: dict, lowres: jax.Array, highres: jax.Array) -> jax.Array:
  """log p(y | x) in nats (eq. 5 with eq. 6's factors, tau = 1), per image: float32 (B,). One forward pass.

  lowres: uint8 (B, h, w, C); highres: uint8 (B, H, W, C), any images (samples, ground truth, a baseline's output).
  """
  cond_logits, prior_logits = model.apply(variables, lowres, highres)
  log_probs = jax.nn.log_softmax(cond_logits + prior_logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, highres[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked.sum(axis=(1, 2, 3))


def bits_per_dim(log_prob_B: jax.Array, image_shape: tuple[int, ...]) -> jax.Array:
  """-log2 p(y | x) per sub-pixel, from `log_prob`'s nats; image_shape is (H, W, C)."""
  return -log_prob_B / (math.prod(image_shape) * math.log(2))
