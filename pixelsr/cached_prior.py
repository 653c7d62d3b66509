"""The PixelCNN prior computed incrementally, for sampling: each step computes only what a new sub-pixel changes.

In the spirit of Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models". With the
stacks of `layers.FirstLayer` and `layers.GatedLayer`:

- the vertical stack of row r depends on image rows <= r only, so it is computed once per row, when row r is
  complete (`advance_row`), from windows of the last few rows of each layer's input;
- the horizontal stack at (r, c) depends on the vertical stack of row r - 1 (fixed while row r is drawn) and on row
  r, columns <= c. What comes from columns < c is fixed while pixel c is drawn: `pixel_start` computes it once per
  pixel for every layer in one batched product, and `pixel_logits` adds the current column's tap;
- colour c's logits depend only on the channels of colour groups <= c of every layer (the masks zero the rest),
  and groups are contiguous channel ranges: the pass for colour c computes only those prefixes (about 1/9, 4/9 and
  9/9 of each layer for R, G, B) and the head only for its colour.

To make each colour's prefix of a gate's input contiguous, the sampler stores the tanh and sigmoid halves of every
horizontal-stack pre-activation interleaved (channel i of each half at 2i and 2i + 1), in its weights and caches.

It reads the parameters of `models.PixelCNNPrior` (names and masks as there) and does the same arithmetic per
position, so its logits equal the full network's up to float rounding in the order of the sums.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common import images
from pixelsr import fused_pixel, layers


class RowCache(NamedTuple):
  """What drawing row r needs from the rows above it, and what computing row r's vertical stack needs."""

  image_rows: jax.Array  # (R, k1//2 - 1, W, C): signed rows r-k1//2+1 .. r-1, the first vertical conv's window.
  vertical_rows: tuple[jax.Array, ...]  # Per gated layer: (R, k//2, W, P) rows r-k//2 .. r-1 of its vertical input.
  first_above: jax.Array  # (R, W, P): the first layer's vertical stack at row r-1, down-shifted into row r.
  gated_above: jax.Array  # (L, R, W, 2P): each gated layer's vertical_to_horizontal of row r-1 (interleaved).


class PixelCache(NamedTuple):
  """What drawing pixel (r, c) needs from the pixels left of it in row r."""

  image_cols: jax.Array  # (R, k1//2, C): signed pixels c-k1//2 .. c-1.
  horizontal_cols: jax.Array  # (L, R, k//2, P): each gated layer's horizontal input at c-k//2 .. c-1.


def _push(window: jax.Array, new: jax.Array, axis: int) -> jax.Array:
  """Drops the oldest entry of `window` along `axis` and appends `new` (no axis) as the latest."""
  if window.shape[axis] == 0:
    return window
  return jnp.concatenate([jax.lax.slice_in_dim(window, 1, None, axis=axis), jnp.expand_dims(new, axis)], axis=axis)


class CachedPrior:
  """The prior of a `models.PixelRecursiveSR`, evaluated one row / one position at a time. Build inside jit."""

  def __init__(self, params: dict, cfg):
    self.cfg, self.dtype = cfg, jnp.dtype(cfg.dtype)
    nc = cfg.num_colours
    first = params['first']
    self.first_vertical = first['vertical']
    self.first_horizontal = dict(
      kernel=layers.masked_kernel(first['horizontal']['kernel'], 'A', nc)[0], bias=first['horizontal']['bias']
    )
    p = cfg.prior_channels
    interleave = np.stack([np.arange(p), p + np.arange(p)], axis=1).reshape(-1)  # [a0, b0, a1, b1, ...]
    gated = [params[f'gated{i}'] for i in range(cfg.prior_layers)]
    self.vertical = [g['vertical'] for g in gated]
    self.vertical_to_horizontal = [
      dict(
        kernel=g['vertical_to_horizontal']['kernel'][0, 0][:, interleave],
        bias=g['vertical_to_horizontal']['bias'][interleave],
      )
      for g in gated
    ]
    horizontal = jnp.stack(
      [layers.masked_kernel(g['horizontal']['kernel'], 'B', nc, out_chunks=2)[0][..., interleave] for g in gated]
    )  # (L, k//2 + 1, P, 2P)
    # Per layer, one (k//2 * P + 2P + 1, 2P) matrix: the taps on columns c-k//2 .. c-1, an identity that adds the
    # row above's term and the bias (`pixel_start`).
    num_layers = len(gated)
    self.horizontal_earlier = jnp.concatenate(
      [
        horizontal[:, :-1].reshape(num_layers, -1, 2 * p),
        jnp.broadcast_to(jnp.eye(2 * p), (num_layers, 2 * p, 2 * p)),
        jnp.stack([g['horizontal']['bias'][interleave] for g in gated])[:, None],
      ],
      axis=1,
    )
    current = horizontal[:, -1]
    out = [
      dict(kernel=layers.masked_kernel(g['horizontal_out']['kernel'], 'B', nc)[0, 0], bias=g['horizontal_out']['bias'])
      for g in gated
    ]
    head = dict(kernel=layers.masked_kernel(params['head']['kernel'], 'B', nc)[0, 0], bias=params['head']['bias'])
    logits = dict(kernel=layers.masked_kernel(params['logits']['kernel'], 'B', nc)[0, 0], bias=params['logits']['bias'])
    k = cfg.num_levels  # Output channel o of the last layer is level o % K of colour o // K.
    # Channels of colour groups <= c: a prefix of every feature map (groups are contiguous, in order). Each colour's
    # slices of the weights are taken here, once, not in every step of the sampling loop.
    prefix = lambda channels: [int((layers.channel_groups(channels, nc) <= c).sum()) for c in range(nc)]
    self.prior_prefix = prefix(p)
    self.by_colour: list[dict[str, Any]] = [
      dict(
        current=[current[i, :m, : 2 * m] for i in range(num_layers)],
        out=[dict(kernel=o['kernel'][:m, :m], bias=o['bias'][:m]) for o in out],
        head=dict(kernel=head['kernel'][:m, :n], bias=head['bias'][:n]),
        logits=dict(kernel=logits['kernel'][:n, c * k : (c + 1) * k], bias=logits['bias'][c * k : (c + 1) * k]),
      )
      for c, (m, n) in enumerate(zip(self.prior_prefix, prefix(cfg.prior_head_channels)))
    ]
    self.fused = [fused_pixel.prepare(**w) for w in self.by_colour] if cfg.pixel_kernel == 'pallas' else None

  def _cast(self, *xs):
    return [x.astype(self.dtype) for x in xs]

  def _dense(self, x: jax.Array, p: dict) -> jax.Array:
    x, kernel, bias = self._cast(x, p['kernel'], p['bias'])
    return jnp.einsum('...c,cd->...d', x, kernel) + bias

  def _row_kernel(self, window_RWC: jax.Array, p: dict) -> jax.Array:
    """A masked row kernel at one position from its window of the last `width` columns."""
    x, kernel, bias = self._cast(window_RWC, p['kernel'], p['bias'])
    return jnp.einsum('rwc,wcd->rd', x, kernel) + bias

  def _vertical_row(self, window_RHWC: jax.Array, p: dict) -> jax.Array:
    """A vertical-stack conv at the last row of its window: (R, kh, W, C) -> (R, W, F)."""
    x, kernel, bias = self._cast(window_RHWC, p['kernel'], p['bias'])
    kw = kernel.shape[1]
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((0, 0), (kw // 2, kw // 2)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return (y + bias)[:, 0]

  def init_row_cache(self, rows: int, width: int) -> RowCache:
    """The cache before row 0: zeros, as the full network's padding and down shifts."""
    cfg, dt = self.cfg, self.dtype
    p, k, k1 = cfg.prior_channels, cfg.prior_kernel, cfg.prior_first_kernel
    zeros = lambda *shape: jnp.zeros((rows, *shape), dt)
    gated_above = jnp.stack([self._dense(zeros(width, 2 * p), w) for w in self.vertical_to_horizontal])
    return RowCache(
      image_rows=zeros(k1 // 2 - 1, width, cfg.num_colours),
      vertical_rows=tuple(zeros(k // 2, width, p) for _ in self.vertical),
      first_above=zeros(width, p),
      gated_above=gated_above,
    )

  def advance_row(self, cache: RowCache, image_row: jax.Array) -> RowCache:
    """The cache for row r + 1, given the completed uint8 row r (R, W, C): the vertical stack of row r."""
    signed = images.uint8_to_signed(image_row).astype(self.dtype)
    v = self._vertical_row(jnp.concatenate([cache.image_rows, signed[:, None]], axis=1), self.first_vertical)
    image_rows = _push(cache.image_rows, signed, axis=1)
    first_above, vertical_rows, gated_above = v, [], []
    for vertical, to_horizontal, rows in zip(self.vertical, self.vertical_to_horizontal, cache.vertical_rows):
      v_pre = self._vertical_row(jnp.concatenate([rows, v[:, None]], axis=1), vertical)
      vertical_rows.append(_push(rows, v, axis=1))
      gated_above.append(self._dense(v_pre, to_horizontal))
      v = layers.gate(v_pre)
    return RowCache(image_rows, tuple(vertical_rows), first_above, jnp.stack(gated_above))

  def init_pixel_cache(self, rows: int) -> PixelCache:
    """The cache before column 0 of a row: zeros, as the horizontal kernels' left padding."""
    cfg = self.cfg
    zeros = lambda *shape: jnp.zeros(shape, self.dtype)
    return PixelCache(
      image_cols=zeros(rows, cfg.prior_first_kernel // 2, cfg.num_colours),
      horizontal_cols=zeros(cfg.prior_layers, rows, cfg.prior_kernel // 2, cfg.prior_channels),
    )

  def pixel_start(self, row: RowCache, col: jax.Array, cache: PixelCache) -> jax.Array:
    """(L, R, 2P): every gated layer's horizontal pre-activation at column `col` without its current-column tap,
    which is what the pixels to the left and the rows above contribute, fixed while the pixel is drawn."""
    num_layers, rows = cache.horizontal_cols.shape[:2]
    # The row above's term and the bias go through the matmul too (an identity block and a column of ones): added
    # after it, XLA:CPU fuses the sum into each of the 3L gates that read it, which makes those loops slower.
    inputs = jnp.concatenate(
      [
        cache.horizontal_cols.reshape(num_layers, rows, -1),
        row.gated_above[:, :, col],
        jnp.ones((num_layers, rows, 1), self.dtype),
      ],
      axis=-1,
    )
    inputs, kernel = self._cast(inputs, self.horizontal_earlier)
    return jnp.einsum('lrc,lcd->lrd', inputs, kernel)

  def pixel_logits(
    self, row: RowCache, col: jax.Array, cache: PixelCache, start: jax.Array, pixel: jax.Array, colour: int
  ) -> tuple[jax.Array, jax.Array]:
    """Logits (R, K) of `colour` at column `col` of the current row, whose pixel so far is `pixel` (uint8 (R, C);
    later colours are ignored by the masks), from `pixel_start`'s (L, R, 2P). Also returns (L, R, m): each gated
    layer's horizontal input at this position, in its first m channels (colour groups <= `colour`; all for the
    last colour). The horizontal stream is summed in float32 whatever the dtype, as in `layers.GatedLayer`."""
    m, weights = self.prior_prefix[colour], self.by_colour[colour]
    signed = images.uint8_to_signed(pixel).astype(self.dtype)
    h = self._row_kernel(jnp.concatenate([cache.image_cols, signed[:, None]], axis=1), self.first_horizontal)
    h = (h.astype(jnp.float32) + row.first_above[:, col].astype(jnp.float32))[:, :m]  # f32 as the model's stream
    if self.fused:
      return fused_pixel.colour_pass(h, start[:, :, : 2 * m], self.fused[colour])
    inputs = []
    for i, (current, out) in enumerate(zip(weights['current'], weights['out'])):
      inputs.append(h)
      h_pre = start[i, :, : 2 * m] + jnp.einsum('rc,cd->rd', *self._cast(h, current))
      h = h + self._dense(jnp.tanh(h_pre[:, 0::2]) * jax.nn.sigmoid(h_pre[:, 1::2]), out).astype(jnp.float32)
    out = jax.nn.relu(self._dense(jax.nn.relu(h), weights['head']))
    return self._dense(out, weights['logits']).astype(jnp.float32), jnp.stack(inputs)

  def advance_pixel(self, cache: PixelCache, pixel: jax.Array, inputs: jax.Array) -> PixelCache:
    """The cache for column c + 1, given the completed pixel c and the (L, R, P) horizontal inputs computed with it
    (by the last colour's `pixel_logits`)."""
    signed = images.uint8_to_signed(pixel).astype(self.dtype)
    return PixelCache(
      _push(cache.image_cols, signed, axis=1), _push(cache.horizontal_cols, inputs.astype(self.dtype), axis=2)
    )
