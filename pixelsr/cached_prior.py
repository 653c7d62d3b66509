"""The PixelCNN prior computed incrementally, for sampling: each step computes only what a new sub-pixel changes.

In the spirit of Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models". With the
stacks of `layers.FirstLayer` and `layers.GatedLayer`:

- the vertical stack of row r depends on image rows <= r only, so it is computed once per row, when row r is
  complete (`advance_row`), from windows of the last few rows of each layer's input;
- the horizontal stack at (r, c) depends on the vertical stack of row r - 1 (fixed while row r is drawn) and on row
  r, columns <= c: `pixel_logits` computes it at one position from windows of the last few columns of each layer's
  input, and the 1x1 head only for the colour being drawn.

It reads the parameters of `models.PixelCNNPrior` (names and masks as there) and does the same arithmetic per
position, so its logits equal the full network's up to float rounding in the order of the sums.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common import images
from pixelsr import layers


class RowCache(NamedTuple):
  """What drawing row r needs from the rows above it, and what computing row r's vertical stack needs."""
  image_rows: jax.Array  # (R, k1//2 - 1, W, C): signed rows r-k1//2+1 .. r-1, the first vertical conv's window.
  vertical_rows: tuple[jax.Array, ...]  # Per gated layer: (R, k//2, W, P) rows r-k//2 .. r-1 of its vertical input.
  first_above: jax.Array  # (R, W, P): the first layer's vertical stack at row r-1, down-shifted into row r.
  gated_above: tuple[jax.Array, ...]  # Per gated layer: (R, W, 2P) its vertical_to_horizontal of row r-1.


class PixelCache(NamedTuple):
  """What drawing pixel (r, c) needs from the pixels left of it in row r."""
  image_cols: jax.Array  # (R, k1//2, C): signed pixels c-k1//2 .. c-1.
  horizontal_cols: tuple[jax.Array, ...]  # Per gated layer: (R, k//2, P) its horizontal input at c-k//2 .. c-1.


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
    self.first_horizontal = dict(kernel=layers.masked_kernel(first['horizontal']['kernel'], 'A', nc)[0],
                                 bias=first['horizontal']['bias'])
    self.gated = []
    for i in range(cfg.prior_layers):
      p = params[f'gated{i}']
      self.gated.append(dict(
          vertical=p['vertical'],
          horizontal=dict(kernel=layers.masked_kernel(p['horizontal']['kernel'], 'B', nc, out_chunks=2)[0],
                          bias=p['horizontal']['bias']),
          vertical_to_horizontal=dict(kernel=p['vertical_to_horizontal']['kernel'][0, 0],
                                      bias=p['vertical_to_horizontal']['bias']),
          horizontal_out=dict(kernel=layers.masked_kernel(p['horizontal_out']['kernel'], 'B', nc, in_chunks=1)[0, 0],
                              bias=p['horizontal_out']['bias'])))
    self.head = dict(kernel=layers.masked_kernel(params['head']['kernel'], 'B', nc)[0, 0], bias=params['head']['bias'])
    logits = layers.masked_kernel(params['logits']['kernel'], 'B', nc)[0, 0]
    k = cfg.num_levels  # Output channel o of the last layer is level o % K of colour o // K.
    self.logits = [dict(kernel=logits[:, c * k:(c + 1) * k], bias=params['logits']['bias'][c * k:(c + 1) * k])
                   for c in range(nc)]

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
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((0, 0), (kw // 2, kw // 2)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return (y + bias)[:, 0]

  def init_row_cache(self, rows: int, width: int) -> RowCache:
    """The cache before row 0: zeros, as the full network's padding and down shifts."""
    cfg, dt = self.cfg, self.dtype
    p, k, k1 = cfg.prior_channels, cfg.prior_kernel, cfg.prior_first_kernel
    zeros = lambda *shape: jnp.zeros((rows, *shape), dt)
    gated_above = tuple(self._dense(zeros(width, 2 * p), g['vertical_to_horizontal']) for g in self.gated)
    return RowCache(image_rows=zeros(k1 // 2 - 1, width, cfg.num_colours),
                    vertical_rows=tuple(zeros(k // 2, width, p) for _ in self.gated),
                    first_above=zeros(width, p), gated_above=gated_above)

  def advance_row(self, cache: RowCache, image_row: jax.Array) -> RowCache:
    """The cache for row r + 1, given the completed uint8 row r (R, W, C): the vertical stack of row r."""
    signed = images.uint8_to_signed(image_row).astype(self.dtype)
    v = self._vertical_row(jnp.concatenate([cache.image_rows, signed[:, None]], axis=1), self.first_vertical)
    image_rows = _push(cache.image_rows, signed, axis=1)
    first_above, vertical_rows, gated_above = v, [], []
    for g, rows in zip(self.gated, cache.vertical_rows):
      v_pre = self._vertical_row(jnp.concatenate([rows, v[:, None]], axis=1), g['vertical'])
      vertical_rows.append(_push(rows, v, axis=1))
      gated_above.append(self._dense(v_pre, g['vertical_to_horizontal']))
      v = layers.gate(v_pre)
    return RowCache(image_rows, tuple(vertical_rows), first_above, tuple(gated_above))

  def init_pixel_cache(self, rows: int) -> PixelCache:
    """The cache before column 0 of a row: zeros, as the horizontal kernels' left padding."""
    cfg = self.cfg
    zeros = lambda *shape: jnp.zeros((rows, *shape), self.dtype)
    return PixelCache(image_cols=zeros(cfg.prior_first_kernel // 2, cfg.num_colours),
                      horizontal_cols=tuple(zeros(cfg.prior_kernel // 2, cfg.prior_channels) for _ in self.gated))

  def pixel_logits(self, row: RowCache, col: jax.Array, cache: PixelCache, pixel: jax.Array,
                   colour: int) -> tuple[jax.Array, list[jax.Array]]:
    """Logits (R, K) of `colour` at column `col` of the current row, whose pixel so far is `pixel` (uint8 (R, C);
    later colours are ignored by the masks). Also returns each gated layer's horizontal input at this position."""
    signed = images.uint8_to_signed(pixel).astype(self.dtype)
    h = self._row_kernel(jnp.concatenate([cache.image_cols, signed[:, None]], axis=1), self.first_horizontal)
    h = h + row.first_above[:, col]
    inputs = []
    for g, cols, above in zip(self.gated, cache.horizontal_cols, row.gated_above):
      inputs.append(h)
      h_pre = self._row_kernel(jnp.concatenate([cols, h[:, None]], axis=1), g['horizontal']) + above[:, col]
      h = h + self._dense(layers.gate(h_pre), g['horizontal_out'])
    out = jax.nn.relu(self._dense(jax.nn.relu(h), self.head))
    return self._dense(out, self.logits[colour]).astype(jnp.float32), inputs

  def advance_pixel(self, cache: PixelCache, pixel: jax.Array, inputs: list[jax.Array]) -> PixelCache:
    """The cache for column c + 1, given the completed pixel c and the horizontal inputs computed with it."""
    signed = images.uint8_to_signed(pixel).astype(self.dtype)
    return PixelCache(_push(cache.image_cols, signed, axis=1),
                      tuple(_push(cols, h, axis=1) for cols, h in zip(cache.horizontal_cols, inputs)))
