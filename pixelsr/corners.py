"""Figure 2 of the pixel recursive paper on MNIST corners (`launch/corners.py`): do the models pick one mode?

The mode measure. The ink of an output image is the sum of its grey levels / 255 (one white pixel = 1). The corner
regions are the upper-left quadrant (rows < H/2, columns < W/2) and the upper-right one (rows < H/2, the last W/2
columns), where the data puts the digit. An output is
  'left' / 'right': that corner holds >= 90% of the ink of the two corners together (single-mode);
  'both':           neither does (the modes averaged, or a digit drawn in each corner);
  'blank':          the two corners hold less than 1 unit of ink together (the faintest 8x8 test digit holds 3.1),
                    so their shares would be noise. Blank outputs are not single-mode.
Ink outside the corner regions is not counted.
"""

import csv
import dataclasses
import io
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from common import data, images, progress
from pixelsr import evaluate, regression, sampling, train

SINGLE_MODE_SHARE = 0.9  # The share of the corners' ink that one corner must hold.
BLANK_INK = 1.0  # Corner ink (white pixels' worth) below which an output counts as blank.
MODES = ('left', 'right', 'both', 'blank')


def corner_ink(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (N, H, W, 1) -> the ink of the upper-left and upper-right quadrants, each float (N,)."""
  grey = np.asarray(outputs, np.float64)[..., 0] / 255.0
  half_h, half_w = grey.shape[1] // 2, grey.shape[2] // 2
  return grey[:, :half_h, :half_w].sum((1, 2)), grey[:, :half_h, -half_w:].sum((1, 2))


def classify(outputs: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W, 1) -> each output's mode, one of MODES (str array (N,))."""
  left, right = corner_ink(outputs)
  total = left + right
  return np.select(
    [total < BLANK_INK, left >= SINGLE_MODE_SHARE * total, right >= SINGLE_MODE_SHARE * total],
    ['blank', 'left', 'right'],
    'both',
  )


@dataclasses.dataclass(frozen=True)
class ModeCounts:
  """How many outputs of a row fell in each mode."""

  left: int
  right: int
  both: int
  blank: int

  @classmethod
  def of(cls, outputs: np.ndarray) -> 'ModeCounts':
    modes = classify(outputs)
    return cls(**{m: int(np.sum(modes == m)) for m in MODES})

  @property
  def total(self) -> int:
    return self.left + self.right + self.both + self.blank

  @property
  def single_mode(self) -> float:
    """The fraction of outputs with one corner holding >= 90% of the corners' ink."""
    return (self.left + self.right) / self.total

  @property
  def left_share(self) -> float:
    """Of the single-mode outputs, the fraction in the left corner (nan if there are none)."""
    single = self.left + self.right
    return self.left / single if single else float('nan')


def held_out_pairs(data_cfg: ml_collections.ConfigDict, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `num_examples` test pairs (0 = all), in order, as host arrays (lowres, highres)."""
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.num_eval_examples = num_examples
  batches = list(data.make_dataset(data_cfg, 'eval', batch_size=250, process_index=0, process_count=1))
  mask = np.concatenate([b['mask'] for b in batches])
  lowres, highres = (np.concatenate([b[k] for b in batches])[mask] for k in ('lowres', 'highres'))
  return lowres, highres


def train_all(configs: dict[str, ml_collections.ConfigDict], workdir: str) -> dict[str, float]:
  """Trains (or resumes) each model in <workdir>/<name>; returns the seconds each took."""
  seconds = {}
  for name, config in configs.items():
    start = time.time()
    (regression if config.method == 'regression' else train).train_and_evaluate(config, os.path.join(workdir, name))
    seconds[name] = time.time() - start
    logging.info('Trained %s in %.0f s.', name, seconds[name])
  return seconds


def model_outputs(
  configs: dict[str, ml_collections.ConfigDict],
  workdir: str,
  lowres: np.ndarray,
  *,
  num_samples: int,
  batch_size: int = 200,
) -> dict[str, np.ndarray]:
  """Each row's uint8 outputs for the inputs `lowres`: 'L2 regression' (N, ...); 'Cross-entropy, per-pixel mode'
  (N, ...); 'Cross-entropy, samples' and 'PixelCNN, samples' (N * num_samples, ...), the samples of input n in rows
  n * num_samples ... (tau = 1, batch b drawn with the key fold_in(key(seed), b))."""
  l2_model, l2_variables = regression.restore(configs['l2'], os.path.join(workdir, 'l2'))
  ce_model, ce_variables = train.restore(configs['ce'], os.path.join(workdir, 'ce'))
  pixelcnn, pixelcnn_variables = train.restore(configs['pixelcnn'], os.path.join(workdir, 'pixelcnn'))
  key = jax.random.key(configs['pixelcnn'].seed)
  methods = {
    'L2 regression': lambda x, k: regression.predict(l2_model, l2_variables, x),
    'Cross-entropy, per-pixel mode': lambda x, k: sampling.sample(ce_model, ce_variables, x, k, float('inf')),
    'Cross-entropy, samples': lambda x, k: sampling.sample(ce_model, ce_variables, x, k, 1.0, num_samples),
    'PixelCNN, samples': lambda x, k: sampling.sample(pixelcnn, pixelcnn_variables, x, k, 1.0, num_samples),
  }
  outputs = {name: [] for name in methods}
  starts = progress.track(range(0, len(lowres), batch_size), desc='Figure 2 outputs', unit='batch')
  for b, start in enumerate(starts):
    x = lowres[start : start + batch_size]
    for name, method in methods.items():
      outputs[name].append(np.asarray(method(x, jax.random.fold_in(key, b))))
  return {name: np.concatenate(parts) for name, parts in outputs.items()}


def figure(
  lowres: np.ndarray, outputs: dict[str, np.ndarray], num_rows: int, num_samples: int, scale: int = 4
) -> np.ndarray:
  """Figure 2's bottom half: one row per input: input | L2 | CE mode | CE sample | the PixelCNN samples, enlarged."""
  sampled = lambda name, k: outputs[name][k::num_samples][:num_rows]
  columns = [
    lowres[:num_rows],
    outputs['L2 regression'][:num_rows],
    outputs['Cross-entropy, per-pixel mode'][:num_rows],
    sampled('Cross-entropy, samples', 0),
  ]
  columns += [sampled('PixelCNN, samples', k) for k in range(num_samples)]
  grid = images.make_grid(columns, pad_value=128)
  return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def table(highres: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, ModeCounts]:
  """Mode counts per row, the test targets first (a check of the data: all single-mode, about 50/50)."""
  return {'Ground truth': ModeCounts.of(highres)} | {name: ModeCounts.of(o) for name, o in outputs.items()}


def markdown(rows: dict[str, ModeCounts], notes: list[str]) -> str:
  lines = ['| Output | n | single-mode | left : right (of single-mode) | both corners | blank |', '|---' * 6 + '|']
  for name, c in rows.items():
    split = 'n/a' if c.left + c.right == 0 else f'{100 * c.left_share:.0f} : {100 - 100 * c.left_share:.0f}'
    lines.append(
      f'| {name} | {c.total} | {100 * c.single_mode:.1f}% | {split} | {100 * c.both / c.total:.1f}% | '
      f'{100 * c.blank / c.total:.1f}% |'
    )
  return '\n'.join(lines + [''] + [f'- {note}' for note in notes]) + '\n'


def csv_text(rows: dict[str, ModeCounts]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['output', 'n', *MODES, 'single_mode', 'left_share'])
  for name, c in rows.items():
    writer.writerow([name, c.total, c.left, c.right, c.both, c.blank, repr(c.single_mode), repr(c.left_share)])
  return out.getvalue()


def reproduce(
  configs: dict[str, ml_collections.ConfigDict],
  workdir: str,
  *,
  num_examples: int = 0,
  num_samples: int = 4,
  figure_rows: int = 8,
) -> tuple[dict[str, ModeCounts], list[str]]:
  """Trains (or resumes) the 'l2', 'ce' and 'pixelcnn' runs of `configs` in <workdir>/<name>, measures their outputs
  on the first `num_examples` test inputs (0 = all), and writes corners.md, corners.csv and figure2.png (the first
  `figure_rows` inputs) into `workdir`, each atomically. Returns the table's rows and the paths written."""
  seconds = train_all(configs, workdir)
  lowres, highres = held_out_pairs(configs['pixelcnn'].data, num_examples)
  start = time.time()
  outputs = model_outputs(configs, workdir, lowres, num_samples=num_samples)
  rows = table(highres, outputs)
  steps = ', '.join(f'{name} {configs[name].num_train_steps}' for name in configs)
  notes = [
    f'{len(lowres)} test inputs (held-out digits, fixed corners); {num_samples} samples per input at tau = 1 '
    'for the sampled rows; "per-pixel mode" is the argmax of each sub-pixel\'s softmax (greedy decoding).',
    f"Single-mode: one upper corner holds >= {SINGLE_MODE_SHARE:.0%} of the two corners' ink; blank: the "
    f'corners hold < {BLANK_INK:g} white pixel of ink together (pixelsr/corners.py).',
    f'Training steps: {steps}; this run trained for '
    + ', '.join(f'{n} {s:.0f} s' for n, s in seconds.items())
    + f' (0 s: already trained), and sampled and measured in {time.time() - start:.0f} s.',
    f'Figure columns: input | L2 | CE per-pixel mode | CE sample | {num_samples} PixelCNN samples.',
  ]
  grid = figure(lowres, outputs, min(figure_rows, len(lowres)), num_samples)
  paths = [os.path.join(workdir, name) for name in ('corners.md', 'corners.csv', 'figure2.png')]
  evaluate._write_text(paths[0], markdown(rows, notes))
  evaluate._write_text(paths[1], csv_text(rows))
  images.save_png(paths[2], grid)
  return rows, paths
