"""One colour pass of the cached sampler as a single Pallas kernel (`config.model.pixel_kernel='pallas'`).

Below a few hundred images per call the GPU sampler is bound by kernel launches, not arithmetic: XLA compiles one
pixel (three colour passes through 20 gated layers and the head) into ~190-275 kernels (benchmarks/README.md,
"Sampling"). This kernel runs a colour's whole pass, every gated layer of the horizontal stack, the head and the
logits, in one launch, with the stream kept on chip between layers.

It computes what `cached_prior.CachedPrior.pixel_logits` computes after the first layer, from the same inputs, up
to float rounding in the order of the sums. Shapes are padded with zeros to powers of two (Triton's blocks): padded
channels stay exactly zero through the gates (tanh(0) * sigmoid(0) = 0) and contribute nothing. The batch is split
into blocks of ROWS, one program each. On a CPU the kernel runs in Pallas' interpret mode (the tests); in float32
only. It is meant for small batches on one GPU, where launches dominate; XLA has no rule to split a Triton call
over devices, so a batch sharded over several GPUs is not what it is for (untried).

Status: exact against the naive sampler (interpreted) and lowered to Triton for CUDA in the tests; not yet compiled
or timed on a GPU (benchmarks/gpu.sh times it beside XLA's passes).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

ROWS = 16  # Rows of the batch per program: the smallest matrix side Triton's dot takes.
HEAD_CHUNK = 64  # Head channels per step of the head's loop: bounds the head and logits blocks in shared memory.


def _pow2(n: int, least: int = 1) -> int:
  return max(least, 1 << (n - 1).bit_length())


def _pad(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape)])


def prepare(current: list[jax.Array], out: list[dict], head: dict, logits: dict) -> dict:
  """The weights of one colour's pass, stacked and padded, from `CachedPrior.by_colour[c]`: per layer the
  current-column tap (m, 2m), tanh and sigmoid halves interleaved, and the output 1x1 (m, m); the head (m, n) and
  the colour's logits (n, K)."""
  layers, m, n = len(current), current[0].shape[0], head['kernel'].shape[1]
  lp, mp, np_ = _pow2(layers), _pow2(m, 16), _pow2(n, HEAD_CHUNK)
  stack = lambda xs: _pad(jnp.stack(xs), (lp, mp, mp))
  return dict(
    tanh=stack([w[:, 0::2] for w in current]),
    sigmoid=stack([w[:, 1::2] for w in current]),
    out=stack([o['kernel'] for o in out]),
    out_bias=_pad(jnp.stack([o['bias'] for o in out])[:, None], (lp, 1, mp)),
    head=_pad(head['kernel'], (mp, np_)),
    head_bias=_pad(head['bias'][None], (1, np_)),
    logits=_pad(logits['kernel'], (np_, logits['kernel'].shape[1])),
    logits_bias=logits['bias'][None],
    layers=layers,
  )


def _kernel(
  h_ref,
  start_tanh_ref,
  start_sigmoid_ref,
  tanh_ref,
  sigmoid_ref,
  out_ref,
  out_bias_ref,
  head_ref,
  head_bias_ref,
  logits_w_ref,
  logits_bias_ref,
  logits_ref,
  inputs_ref,
  *,
  layers: int,
):
  h = h_ref[...]
  for i in range(layers):
    inputs_ref[i] = h
    a = start_tanh_ref[i] + jnp.dot(h, tanh_ref[i], preferred_element_type=jnp.float32)
    b = start_sigmoid_ref[i] + jnp.dot(h, sigmoid_ref[i], preferred_element_type=jnp.float32)
    gated = jnp.tanh(a) * jax.nn.sigmoid(b)
    h = h + jnp.dot(gated, out_ref[i], preferred_element_type=jnp.float32) + out_bias_ref[i]
  h = jax.nn.relu(h)

  def head_chunk(j, acc):
    cols = pl.ds(pl.multiple_of(j * HEAD_CHUNK, HEAD_CHUNK), HEAD_CHUNK)
    out = jax.nn.relu(jnp.dot(h, head_ref[:, cols], preferred_element_type=jnp.float32) + head_bias_ref[:, cols])
    return acc + jnp.dot(out, logits_w_ref[cols, :], preferred_element_type=jnp.float32)

  acc = jnp.zeros(logits_ref.shape, jnp.float32)
  logits_ref[...] = jax.lax.fori_loop(0, head_ref.shape[1] // HEAD_CHUNK, head_chunk, acc) + logits_bias_ref[...]


def colour_pass(
  h_RM: jax.Array, start_LR2M: jax.Array, w: dict, interpret: bool | None = None
) -> tuple[jax.Array, jax.Array]:
  """Logits (R, K) of one colour and each gated layer's horizontal input (L, R, m), from the first layer's output
  h (R, m, float32) and `pixel_start`'s (L, R, 2m) (interleaved halves) cut to the colour's channels. `interpret`:
  None = on a CPU only."""
  if interpret is None:
    backend = jax.default_backend()
    if backend not in ('cpu', 'gpu'):
      raise ValueError(
        f"config.model.pixel_kernel='pallas' is a Triton kernel for GPUs (interpreted on CPUs), not "
        f"for {backend}: use pixel_kernel='xla'."
      )
    interpret = backend == 'cpu'
  rows, m = h_RM.shape
  lp, mp = w['tanh'].shape[:2]
  layers, levels = w['layers'], w['logits'].shape[1]
  rp = -(-rows // ROWS) * ROWS
  padded = lambda x: _pad(x.astype(jnp.float32), (lp, rp, mp))
  operands = [
    _pad(h_RM, (rp, mp)),
    padded(start_LR2M[..., 0::2]),
    padded(start_LR2M[..., 1::2]),
    w['tanh'],
    w['sigmoid'],
    w['out'],
    w['out_bias'],
    w['head'],
    w['head_bias'],
    w['logits'],
    w['logits_bias'],
  ]
  whole = lambda x: pl.BlockSpec(x.shape, lambda r, n=x.ndim: (0,) * n)
  by_rows = pl.BlockSpec((lp, ROWS, mp), lambda r: (0, r, 0))
  logits, inputs = pl.pallas_call(
    functools.partial(_kernel, layers=layers),
    grid=(rp // ROWS,),
    in_specs=[pl.BlockSpec((ROWS, mp), lambda r: (r, 0)), by_rows, by_rows] + [whole(x) for x in operands[3:]],
    out_specs=[pl.BlockSpec((ROWS, levels), lambda r: (r, 0)), by_rows],
    out_shape=[jax.ShapeDtypeStruct((rp, levels), jnp.float32), jax.ShapeDtypeStruct((lp, rp, mp), jnp.float32)],
    compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),  # Triton, not Mosaic GPU
    interpret=interpret,
  )(*operands)
  return logits[:rows], inputs[:layers, :rows, :m]
