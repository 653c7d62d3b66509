"""The space of super-resolutions scored as the NTIRE 2021 challenge "Learning the Super-Resolution Space" does
(common/sr_space.py), for every run `launch/evaluate.py --sr_space` is given: sr_space.{md,csv,png}.

Each run is a row (a pixel recursive run, a row per temperature of its config.evaluate and greedy), beside Bicubic;
all draw `num_samples` samples of the same inputs with the same keys: the pixel recursive model with its cached
sampler, SRIM with its noise, the regression, SRGAN and bicubic their one output (the challenge's deterministic
methods: diversity 0). The inputs are the first examples of the eval split of the evaluated config's data, cut at a
low-res side of `lowres_size` (random crops scaled alike): the models are fully convolutional, so a run trained on
8x8 -> 32x32 crops super-resolves 12x12 -> 48x48 ones as a whole image (`launch/sample.py --whole_image`), where
AlexNet's last layers see 2x2 positions, not the single one of a 32-pixel image. Runs that do not share the
evaluated data's scale factor and downsampling operator are refused: their inputs would not be what they were
trained on.
"""

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from common import checkpoint, images, lpips, progress, sr_space, train_loop, user_images
from common.errors import UserError

# Default high-res side: AlexNet's conv3-5 see 2x2 positions (1x1 at 32). Noise of 40 levels on four crops of a
# photograph scored 0.16-0.45 at 32 pixels, 0.51-0.92 at 48 and 0.65-1.04 at 96 (docs/evaluation.md).
MIN_HIGHRES = 48
IMAGES_PER_CALL = 40  # Samples drawn per sampler call (inputs x samples): bounds the sampler's caches.
FIGURE_SAMPLES = 4  # Samples shown per row of sr_space.png.
FIGURE_CELL = 128  # Smallest side of a cell of sr_space.png, in pixels (nearest-neighbour enlargement).
# The published numbers of the challenge's 4x track, for orientation only: DIV2K photographs, not these inputs.
REFERENCE = (
  'Published for orientation, on another dataset (DIV2K validation, 4x, 10 samples; NTIRE 2021 report): SRFlow '
  'diversity 25.36, LR-PSNR 49.91 dB; ESRGAN (deterministic) diversity 0, LR-PSNR 39.01 dB.'
)
# (lowres uint8 (b, h, w, 3), key) -> uint8 (b, n, H, W, 3).
Draw = Callable[[np.ndarray, jax.Array], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  draw: Draw
  source: str  # The run and step it came from, for the notes.


@dataclasses.dataclass(frozen=True)
class Result:
  scores: dict[str, sr_space.Scores]  # Row name -> the mean over the inputs.
  samples: dict[str, int]  # Row name -> samples per input (1: deterministic).
  figure: np.ndarray
  heat_max: float  # Levels at the heat map's brightest colour.
  notes: list[str]


def default_lowres_size(data_cfg: ml_collections.ConfigDict) -> int:
  """The config's own low-res side if its high-res side reaches MIN_HIGHRES, else the side that does."""
  scale = data_cfg.highres_size // data_cfg.lowres_size
  return data_cfg.lowres_size if data_cfg.highres_size >= MIN_HIGHRES else math.ceil(MIN_HIGHRES / scale)


def _check_run(config: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict, workdir: str) -> None:
  scale = lambda d: d.highres_size / d.lowres_size
  if scale(config.data) != scale(data_cfg) or config.data.resize != data_cfg.resize:
    raise UserError(
      f'{workdir} was trained at {scale(config.data):g}x with data.resize={config.data.resize!r}; the evaluated '
      f'data are {scale(data_cfg):g}x with {data_cfg.resize!r}. Score runs of one scale and downsampling together.'
    )


def _step(workdir: str) -> int:
  manager = checkpoint.open_manager(workdir)  # No finished checkpoint: a UserError naming the workdir.
  step = manager.latest_step()
  manager.close()
  return int(step or 0)


def run_rows(
  workdir: str, num_samples: int, data_cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict | None = None
) -> list[Row]:
  """The rows of the run in `workdir`, restored from its recorded config (`config`'s evaluate section, when given,
  sets the pixel recursive temperatures, as --config does for table 1)."""
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist; pass the workdir of a run of launch/train.py.')
  saved = checkpoint.load_config(workdir)
  _check_run(saved, data_cfg, workdir)
  step = _step(workdir)
  source = f'{workdir} at step {step}'
  if saved.method == 'pixelcnn':
    from pixelsr import sampling, train

    model, variables = train.restore(saved, workdir)
    eval_cfg = train.evaluate_config(config if config is not None and 'evaluate' in config else saved)

    def pixelcnn(tau: float) -> Draw:
      n = 1 if math.isinf(tau) else num_samples

      def draw(x: np.ndarray, key: jax.Array) -> np.ndarray:
        out = np.asarray(sampling.sample(model, variables, x, key, tau, n))  # (b * n, H, W, 3), input-major.
        return out.reshape(len(x), n, *out.shape[1:])

      return draw

    return [Row(f'Pixel recursive, {name}', pixelcnn(tau), source) for name, tau in eval_cfg.sampled_rows().items()]
  if saved.method == 'regression':
    from pixelsr import regression

    model, variables = regression.restore(saved, workdir)
    return [Row('Regression', lambda x, key: np.asarray(regression.predict(model, variables, x))[:, None], source)]
  if saved.method == 'srim':
    from imle import models, train

    model, variables = train.restore(saved, workdir)
    draw = lambda x, key: np.asarray(models.sample(model, variables, x, key, num_samples))
    return [Row('SRIM', draw, source)]
  if saved.method == 'srgan':
    from imle import evaluate, srgan

    model, variables = srgan.restore(saved, workdir)
    name = f'SRGAN ({evaluate.srgan_variant(saved) or os.path.basename(os.path.normpath(workdir))})'
    return [Row(name, lambda x, key: np.asarray(srgan.predict(model, variables, x))[:, None], source)]
  raise UserError(f'{workdir} holds a config.method={saved.method!r} run, which has no super-resolution to score.')


def rows(config: ml_collections.ConfigDict, workdir: str, others: Sequence[str], num_samples: int) -> list[Row]:
  """Bicubic, then the rows of the run in `workdir` and of each of `others`, in that order; two rows of one name
  are told apart by their workdirs."""
  if num_samples < 2:
    raise UserError(f'--sr_space_samples must be >= 2: the diversity score compares samples; got {num_samples}.')
  named = [workdir, *others]
  twice = {os.path.normpath(w) for w in named if [os.path.normpath(v) for v in named].count(os.path.normpath(w)) > 1}
  if twice:
    raise UserError(
      f'{sorted(twice)[0]} is named twice among --workdir, --regression_workdir, --srgan_workdir '
      'and --runs; give each run once.'
    )
  scale = _scale(config.data)
  bicubic = lambda x, key: np.asarray(
    images.quantize(images.bicubic_upsample(x, (x.shape[1] * scale, x.shape[2] * scale), method=config.data.resize))
  )[:, None]
  found = [Row('Bicubic', bicubic, 'bicubic upsampling')]
  for w in named:
    found += run_rows(w, num_samples, config.data, config if w == workdir else None)
  names = [r.name for r in found]
  return [
    dataclasses.replace(r, name=f'{r.name} ({r.source.split(" at step")[0]})') if names.count(r.name) > 1 else r
    for r in found
  ]


def _scale(data_cfg: ml_collections.ConfigDict) -> int:
  return data_cfg.highres_size // data_cfg.lowres_size


def inputs(config: ml_collections.ConfigDict, num_examples: int, lowres_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(lowres, highres) uint8 of the first `num_examples` eval examples at a low-res side of `lowres_size`."""
  from imle import evaluate

  scale = _scale(config.data)
  if lowres_size * scale < lpips.MIN_SIDE[sr_space.NET]:
    raise UserError(
      f'--sr_space_size={lowres_size} gives {lowres_size * scale}-pixel outputs; LPIPS ({sr_space.NET}) needs at '
      f'least {lpips.MIN_SIDE[sr_space.NET]}: raise it (default {default_lowres_size(config.data)}).'
    )
  if num_examples < 1:
    raise UserError(f'--sr_space_examples must be >= 1, got {num_examples}.')
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  zoom = lowres_size * scale / data_cfg.highres_size
  # Random crops grow with the side, so that a pixel covers as much of the photograph as in training.
  data_cfg.update(
    lowres_size=lowres_size,
    highres_size=lowres_size * scale,
    random_crop_min=round(data_cfg.random_crop_min * zoom),
    random_crop_max=round(data_cfg.random_crop_max * zoom),
  )
  return evaluate.eval_examples(data_cfg, num_examples)


def evaluate(
  config: ml_collections.ConfigDict,
  rows: list[Row],
  lowres: np.ndarray,
  highres: np.ndarray,
  num_samples: int,
  figure_inputs: int = 2,
) -> Result:
  """Draws every row's samples of every input, batch by batch with the same keys, and scores them."""
  scale = highres.shape[1] // lowres.shape[1]
  per_call = max(1, IMAGES_PER_CALL // num_samples)
  key = train_loop.seed_key(config.seed, 'sr_space')
  scores: dict[str, list[sr_space.Scores]] = {r.name: [] for r in rows}
  samples: dict[str, int] = {}
  shown: dict[str, list[np.ndarray]] = {r.name: [] for r in rows}
  work = [(r, start) for r in rows for start in range(0, len(lowres), per_call)]
  for row, start in progress.track(work, desc='SR space', unit='batch'):
    out = row.draw(lowres[start : start + per_call], jax.random.fold_in(key, start))
    samples[row.name] = out.shape[1]
    for i, sample_set in enumerate(out):
      scores[row.name].append(sr_space.score(sample_set, highres[start + i], scale))
      if start + i < figure_inputs:
        shown[row.name].append(sample_set)
  figure, heat_max = _figure(rows, shown, lowres[:figure_inputs], highres[:figure_inputs])
  notes = [
    f'{len(lowres)} inputs of {lowres.shape[1]}x{lowres.shape[2]} pixels -> {highres.shape[1]}x{highres.shape[2]} '
    f'({scale}x), the first examples of the eval split; each row drew its samples of all of them with the same keys.',
  ]
  sources: dict[str, list[str]] = {}
  for r in rows[1:]:  # After Bicubic, each run's rows, named once.
    sources.setdefault(r.source, []).append(r.name)
  notes += [f'{", ".join(names)}: {source}.' for source, names in sources.items()]
  for name, per_input in scores.items():
    exact = sum(math.isinf(s.lr_psnr_mean) for s in per_input)
    if exact:  # The toolkit's mean is then inf too; say how many inputs made it so.
      notes.append(
        f"{name}: on {exact} of {len(per_input)} inputs a sample downscales to exactly the truth's downscale (a flat "
        'crop, say): LR-PSNR inf there, so its mean is inf, as in the toolkit.'
      )
  return Result({n: sr_space.mean(s) for n, s in scores.items()}, samples, figure, heat_max, notes)


def _figure(
  rows: list[Row], shown: dict[str, list[np.ndarray]], lowres: np.ndarray, highres: np.ndarray
) -> tuple[np.ndarray, float]:
  """A row per (input, method), named on the left: input | FIGURE_SAMPLES samples (a deterministic method: its one
  output, then blanks) | per-pixel standard deviation across all its samples | truth; columns named on top, cells
  enlarged to FIGURE_CELL pixels or more. One heat scale for the whole figure."""
  from pixelsr import summary

  stds = {n: [sr_space.uncertainty(s) for s in sets] for n, sets in shown.items()}
  heat_max = max([float(np.percentile(m, 99)) for ms in stds.values() for m in ms] + [1.0])
  names = ['input', *[f'sample {k + 1}' for k in range(FIGURE_SAMPLES)], 'std dev', 'truth']
  cells: list[list[np.ndarray]] = []
  for i in range(len(lowres)):
    for r in rows:
      sample_set = shown[r.name][i]
      blank = np.full_like(sample_set[0], 255)
      picks = [sample_set[k] if k < len(sample_set) else blank for k in range(FIGURE_SAMPLES)]
      cells.append([lowres[i], *picks, sr_space.heat_map(stds[r.name][i], heat_max), highres[i]])
  zoom = max(1, math.ceil(FIGURE_CELL / highres.shape[1]))
  grid = summary.labelled_grid({n: np.stack(c) for n, c in zip(names, zip(*cells))}, scale=zoom)
  labels = _row_labels([r.name for _ in range(len(lowres)) for r in rows], zoom * highres.shape[1], grid.shape[0])
  return np.concatenate([labels, grid], axis=1), heat_max


def _row_labels(names: list[str], cell: int, height: int, padding: int = 2) -> np.ndarray:
  """A white strip, as tall as the grid, with each name beside its row (the grid's header above the first)."""
  from PIL import Image, ImageDraw, ImageFont

  font = ImageFont.load_default()
  width = max(int(font.getlength(n)) for n in names) + 4 * padding
  strip = Image.new('RGB', (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  top = height - len(names) * (cell + padding) - padding  # Where the grid starts, below its header.
  for k, name in enumerate(names):
    draw.text(
      (width - 2 * padding, top + padding + k * (cell + padding) + cell / 2),
      name,
      fill=(0, 0, 0),
      font=font,
      anchor='rm',
    )
  return np.asarray(strip)


COLUMNS = {  # field -> (title, format)
  'lpips': ('LPIPS (lower: closer)', '.4f'),
  'diversity': ('Diversity % (higher: spans more)', '.2f'),
  'lr_psnr_mean': ('LR-PSNR mean (dB)', '.2f'),
  'lr_psnr_worst': ('LR-PSNR worst (dB)', '.2f'),
}


def markdown(result: Result) -> str:
  head = '| Method | Samples | ' + ' | '.join(t for t, _ in COLUMNS.values()) + ' |'
  lines = [head, '|---' * (len(COLUMNS) + 2) + '|']
  for name, s in result.scores.items():
    cells = [format(getattr(s, f), fmt) for f, (_, fmt) in COLUMNS.items()]
    lines.append(f'| {name} | {result.samples[name]} | ' + ' | '.join(cells) + ' |')
  notes = result.notes + [
    'The NTIRE 2021 "Learning the Super-Resolution Space" scores (common/sr_space.py), each the mean over the inputs: '
    'LPIPS (AlexNet) of each sample against the truth; diversity = (global best - local best) / global best x 100 '
    'over the spatial LPIPS maps of the samples; LR-PSNR between sample and truth downscaled by MATLAB bicubic '
    f'imresize, mean and worst over the samples (the challenge asks for {sr_space.LR_PSNR_TARGET:g} dB; inf: the '
    'downscales are equal). A deterministic row draws one output: diversity 0.',
    REFERENCE,
    f'sr_space.png: a row per input and method: input | {FIGURE_SAMPLES} samples | per-pixel standard deviation '
    f'across the samples (black 0, pale yellow {result.heat_max:.0f} levels or more) | truth.',
  ]
  return '\n'.join(lines + [''] + [f'- {n}' for n in notes]) + '\n'


def csv_text(result: Result) -> str:
  lines = ['method,samples,' + ','.join(COLUMNS)]
  for name, s in result.scores.items():
    lines.append(f'"{name}",{result.samples[name]},' + ','.join(repr(getattr(s, f)) for f in COLUMNS))
  return '\n'.join(lines) + '\n'


def write(result: Result, workdir: str) -> list[str]:
  """sr_space.md, sr_space.csv and sr_space.png in `workdir`, all or none; returns their paths."""

  def write_files(folder):
    for name, text in (('sr_space.md', markdown(result)), ('sr_space.csv', csv_text(result))):
      with open(os.path.join(folder, name), 'w') as f:
        f.write(text)
    images.save_png(os.path.join(folder, 'sr_space.png'), result.figure)

  return [os.path.join(workdir, n) for n in user_images.write_all_or_nothing(workdir, write_files)]
