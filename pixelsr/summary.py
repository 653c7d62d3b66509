"""What a pixel recursive run shows a newcomer: a labelled sample grid and where the model stands against bicubic.

`grid_columns` / `labelled_grid`: per example, the input (enlarged with nearest neighbour, so it stays visible), the
bicubic upsample, samples at tau = 1.0 and the sharper tau = 1.2, the greedy decoding (tau = inf) and the truth, under
a header row naming each column (Pillow's built-in font). The samples of one example share their key, so the
tau = 1.2 and greedy columns are the same draw as the tau = 1.0 one, made sharper (sampling.py: tau multiplies the
logits before the same Gumbel noise).

`heldout_figures`: bits per sub-pixel (-log2 p per colour value, 8 = a uniform guess over 256 levels) on the held-out
crops of
  - the true images under the model (the model's NLL, as eval/bits_per_dim),
  - the bicubic upsample (uint8, rounded) under the model: how likely the model finds the blurry answer,
  - the true images under a bicubic-centred discretised Laplace whose scale is the best for these very crops: what
    "the truth is the bicubic image plus noise" costs. A model below it predicts the images better than bicubic,
  - the true images under the conditioning network A alone (softmax(A_i(x)), every colour value on its own given the
    input): the same kind of predictor as bicubic + Laplace, so A below that figure has learned more from the input
    than bicubic knows. A model that beats bicubic while A does not leans on its prior (it may ignore the input: the
    greedy column of the grid then looks alike for every input);
and the consistency of tau = 1.0 samples with their input (table 1's column: MSE on [0, 1] between the input and the
sample's bicubic downsample), which says whether samples keep the input's colours and shapes.
`summary_lines` turns them into the few lines launch/train.py prints, with the command that continues the run.
"""

import functools
import math
import shlex
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common import images, metrics, relu_health, sharding
from pixelsr import baselines, sampling

COLUMNS = ('input', 'bicubic', 'tau=1.0', 'tau=1.2', 'greedy', 'truth')  # with the default temperatures
TEMPERATURES = (1.0, 1.2, math.inf)
# Scales (in 0..255 grey levels) tried for the bicubic-centred Laplace: geometric, 0.25 .. ~90, 2% apart.
_LAPLACE_SCALES = 0.25 * 1.02 ** np.arange(300)


def column_name(tau: float) -> str:
  """'tau=1.0', 'tau=1.25', 'greedy' (tau = inf)."""
  return 'greedy' if math.isinf(tau) else f'tau={tau:.1f}' if round(tau, 1) == tau else f'tau={tau:g}'


def grid_columns(
  model,
  variables: dict,
  lowres: jax.Array | np.ndarray,
  highres: np.ndarray,
  key: jax.Array,
  *,
  temperatures: Sequence[float] = TEMPERATURES,
  resize_method: str = 'antialiased',
) -> dict[str, np.ndarray]:
  """Column name -> uint8 (N, H, W, C) (the input at its own size), COLUMNS by default: what `labelled_grid` lays
  out. Every temperature samples with the same `key`.

  lowres: uint8 (N, h, w, C), on the host or sharded over the batch; highres: uint8 (N, H, W, C).
  """
  highres = np.asarray(highres)
  columns = {
    'input': np.asarray(lowres),
    'bicubic': np.asarray(baselines.bicubic(lowres, highres.shape[1], resize_method)),
  }
  for tau in temperatures:
    columns[column_name(tau)] = np.asarray(sampling.sample(model, variables, lowres, key, temperature=tau))
  columns['truth'] = highres
  return columns


def _header(names: Sequence[str], cell: int, padding: int, width: int) -> np.ndarray:
  """A white strip with each name centred over its column, in Pillow's built-in font."""
  font = ImageFont.load_default()
  height = max(font.getbbox(n)[3] for n in names) + 2 * padding
  strip = Image.new('RGB', (width, int(height)), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for k, name in enumerate(names):
    left = padding + k * (cell + padding)
    draw.text((left + cell / 2, padding), name, fill=(0, 0, 0), font=font, anchor='mt')
  return np.asarray(strip)


def labelled_grid(columns: dict[str, np.ndarray], scale: int = 2, padding: int = 2) -> np.ndarray:
  """uint8 (header + grid, W, 3): one row per example, one column per entry of `columns` (in order), every image
  enlarged with nearest neighbour to `scale` x the largest one (so the names fit above 32-pixel images)."""
  size = scale * max(c.shape[1] for c in columns.values())
  cells = [np.repeat(np.repeat(c, size // c.shape[1], axis=1), size // c.shape[2], axis=2) for c in columns.values()]
  grid = images.make_grid(cells, padding=padding)
  return np.concatenate([_header(list(columns), size, padding, grid.shape[1]), grid], axis=0)


def _residual_counts(truth: np.ndarray, centre: np.ndarray) -> np.ndarray:
  """int64 (3, 511): how often truth - centre (uint8 both) is each of -255..255, for truth 0 / 1..254 / 255."""
  diff = truth.astype(np.int64).reshape(-1) - centre.astype(np.int64).reshape(-1) + 255
  edge = np.where(truth.reshape(-1) == 0, 0, np.where(truth.reshape(-1) == 255, 2, 1))
  return np.bincount(edge * 511 + diff, minlength=3 * 511).reshape(3, 511)


def _laplace_nll_bits(counts: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """Total -log2 p(truth) of the sub-pixels `counts` describes, for each scale, under a Laplace(centre, scale)
  discretised to the integers 0..255 (the mass below 0.5 goes to 0, above 254.5 to 255)."""

  def cdf(x):  # Laplace CDF, shape (S, 511).
    z = x[None] / scales[:, None]
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))

  diff = np.arange(-255, 256, dtype=np.float64)
  mass = {0: cdf(diff + 0.5), 1: cdf(diff + 0.5) - cdf(diff - 0.5), 2: 1 - cdf(diff - 0.5)}
  return np.sum([-(np.log2(np.maximum(mass[e], 1e-300)) * counts[e]).sum(axis=1) for e in range(3)], axis=0)


@functools.partial(jax.jit, static_argnames=('model',))
def _cond_log_prob(model, variables: dict, lowres: jax.Array, highres: jax.Array) -> jax.Array:
  """log prod_i softmax(A_i(x))[y_i] in nats, per image: the conditioning network alone."""
  log_probs = jax.nn.log_softmax(model.apply(variables, lowres, method='condition'), axis=-1)
  picked = jnp.take_along_axis(log_probs, highres[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked.sum(axis=(1, 2, 3))


def heldout_figures(
  model,
  variables: dict,
  eval_batches: Iterable[dict[str, np.ndarray]],
  *,
  mesh: jax.sharding.Mesh | None = None,
  resize_method: str = 'antialiased',
  sample_key: jax.Array | None = None,
) -> dict[str, float]:
  """Bits per sub-pixel over the real (mask == True) examples of `eval_batches` (see the module docstring):
  'bits_per_dim' (the truth under the model), 'bicubic_bits_per_dim' (the bicubic upsample under the model) and
  'bicubic_laplace_bits_per_dim' (the truth under the best bicubic-centred Laplace), with 'bicubic_laplace_scale',
  and 'cond_bits_per_dim' (the truth under the conditioning network alone). With `sample_key`, also
  'sample_consistency': the mean consistency of one tau = 1.0 sample per example (batch i drawn with
  fold_in(sample_key, i)), and 'bicubic_consistency', the bicubic upsample's.

  eval_batches: this process's rows (trainer.eval_batches); with several processes, every process gathers the global
  batches and computes the same figures, over the whole eval set, on `mesh` (where `variables` live).
  """
  put = (lambda x: x) if mesh is None else (lambda x: sharding.replicate(x, mesh))
  model_bits, bicubic_bits, cond_bits = [0.0], [0.0], [0.0]  # Running sums, in bits.
  consistency = {'sample_consistency': [], 'bicubic_consistency': []}
  residuals = np.zeros((3, 511), np.int64)
  dims = 0
  for index, batch in enumerate(eval_batches):
    batch = sharding.gather(batch)
    keep = np.asarray(batch['mask'], bool)
    if not keep.any():
      continue
    # Whole (padded) batches through the model, so that the last one compiles nothing new; padding dropped after.
    lowres, truth = put(batch['lowres']), put(batch['highres'])
    bicubic = baselines.bicubic(lowres, truth.shape[1], resize_method)
    for total, log_prob, image in (
      (model_bits, sampling.log_prob, truth),
      (bicubic_bits, sampling.log_prob, bicubic),
      (cond_bits, _cond_log_prob, truth),
    ):
      nats = np.asarray(log_prob(model, variables, lowres, image), np.float64)[keep]
      total[0] -= nats.sum() / math.log(2)
    if sample_key is not None:
      draws = sampling.sample(model, variables, lowres, jax.random.fold_in(sample_key, index), temperature=1.0)
      for name, image in (('sample_consistency', draws), ('bicubic_consistency', bicubic)):
        consistency[name].append(np.asarray(metrics.consistency(lowres, image, method=resize_method))[keep])
    truth, bicubic = np.asarray(batch['highres'])[keep], np.asarray(bicubic)[keep]
    residuals += _residual_counts(truth, bicubic)
    dims += truth.size
  if not dims:
    raise ValueError('heldout_figures: the eval batches hold no real examples.')
  laplace_bits = _laplace_nll_bits(residuals, _LAPLACE_SCALES)
  best = int(np.argmin(laplace_bits))
  figures = {
    'bits_per_dim': model_bits[0] / dims,
    'bicubic_bits_per_dim': bicubic_bits[0] / dims,
    'bicubic_laplace_bits_per_dim': float(laplace_bits[best]) / dims,
    'bicubic_laplace_scale': float(_LAPLACE_SCALES[best]),
    'cond_bits_per_dim': cond_bits[0] / dims,
  }
  figures.update({name: float(np.concatenate(values).mean()) for name, values in consistency.items() if values})
  return figures


def continue_command(argv: Sequence[str], workdir: str, num_train_steps: int) -> str:
  """The command line `argv` (sys.argv of launch/train.py) with --workdir=`workdir` and
  --config.num_train_steps=`num_train_steps`, every other flag kept: the run resumes and trains on."""
  args, rest = [], list(argv[1:])
  while rest:
    arg = rest.pop(0)
    for name in ('--workdir', '--config.num_train_steps'):
      if arg == name and rest:  # The two-token form, `--workdir DIR`.
        rest.pop(0)
        break
      if arg.startswith(name + '='):
        break
    else:
      args.append(arg)
  return shlex.join(['python', argv[0], *args, f'--workdir={workdir}', f'--config.num_train_steps={num_train_steps}'])


def summary_lines(figures: dict[str, float], num_train_steps: int, command: str) -> list[str]:
  """What launch/train.py prints at the end of a pixelcnn run: `figures` as `heldout_figures` names them (with or
  without a prefix such as 'heldout/'), and optionally the eval metrics of `relu_health.summarise`."""
  f = {k.rsplit('/', 1)[-1]: v for k, v in figures.items() if 'relu_dead/' not in k}
  model, laplace, bicubic = f['bits_per_dim'], f['bicubic_laplace_bits_per_dim'], f['bicubic_bits_per_dim']
  cond = f['cond_bits_per_dim']
  lines = [
    f'Held-out crops after {num_train_steps} steps, in bits per colour value (lower is better; 8 = a uniform guess):',
    f'  the true images: model {model:.3f} vs. bicubic + the best Laplace noise {laplace:.3f} (scale '
    f'{f["bicubic_laplace_scale"]:.1f} grey levels): the model is '
    f'{"better" if model < laplace else "not better yet"}.',
    f'  from the input alone (the conditioning network, each value on its own): {cond:.3f}: it has '
    f'{"learned more than" if cond < laplace else "not yet learned what"} bicubic knows.',
    f'  the bicubic upsample under the model: {bicubic:.3f} ({"less" if bicubic > model else "more"} likely than '
    'the truth).',
  ]
  if 'sample_consistency' in f:
    lines.append(
      f'tau = 1.0 samples against their input (consistency, MSE on [0, 1] of their bicubic downsample; '
      f'table 1: 0.008 faces, 0.016 bedrooms): {f["sample_consistency"]:.4f} (bicubic '
      f'{f["bicubic_consistency"]:.4f}).'
    )
  worst = relu_health.worst_site(figures)
  if worst is not None:
    lines.append(
      f'Conditioning network: {worst[1]:.0%} of the ReLU channels of its worst site ({worst[0]}) never '
      f'fire on these crops (mean over sites {f["relu_dead_mean"]:.0%}).'
    )
  return [*lines, f'Continue training from step {num_train_steps}: {command}']
