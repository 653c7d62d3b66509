"""SRIM's evaluation (section 4): luminance pSNR and SSIM of its samples against bicubic upsampling, on the eval split.

Rows: Bicubic, and SRIM scored per sample (the mean over `num_samples` samples of each input, what a user of one
sample gets). Columns: pSNR and SSIM on Y (common.metrics.psnr_y / ssim_y: ITU-R BT.601, as MATLAB's rgb2ycbcr),
and the diversity of the samples (mean per-pixel standard deviation across the samples of an input, on [0, 1]).
"""
import os

import jax
import ml_collections
import numpy as np

from common import data, images, metrics, user_images
from common.errors import UserError
from imle import models, train

COLUMNS = ('psnr_y', 'ssim_y', 'diversity')


def eval_examples(data_cfg: ml_collections.ConfigDict, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.num_eval_examples = num_examples
  batches = list(data.make_dataset(data_cfg, 'eval', batch_size=16, process_index=0, process_count=1))
  if not batches:
    raise UserError(f'The eval split {data_cfg.eval_split!r} yielded no examples; check config.data.eval_split.')
  mask = np.concatenate([b['mask'] for b in batches])
  return tuple(np.concatenate([b[k] for b in batches])[mask] for k in ('lowres', 'highres'))


def table(config: ml_collections.ConfigDict, workdir: str, num_examples: int, num_samples: int = 4,
          batch_size: int = 16) -> dict[str, dict[str, float]]:
  """Row -> column -> mean over the first `num_examples` eval examples (0 = all of a tfds split)."""
  if num_samples < 2:
    raise UserError(f'--num_samples must be >= 2 for the diversity column, got {num_samples}.')
  model, variables = train.restore_for_sampling(config, workdir)
  lowres, highres = eval_examples(config.data, num_examples)
  key = jax.random.key(config.seed)
  sums = {'Bicubic': dict.fromkeys(COLUMNS, 0.0), 'SRIM (per sample)': dict.fromkeys(COLUMNS, 0.0)}
  for start in range(0, len(lowres), batch_size):
    x, y = lowres[start:start + batch_size], highres[start:start + batch_size]
    bicubic = images.quantize(images.bicubic_upsample(x, y.shape[1:3]))
    samples = models.sample(model, variables, x, jax.random.fold_in(key, start), num_samples)  # (b, n, H, W, 3)
    flat = samples.reshape(-1, *samples.shape[2:])
    truth = np.repeat(y, num_samples, axis=0)
    scores = {'Bicubic': {'psnr_y': metrics.psnr_y(bicubic, y), 'ssim_y': metrics.ssim_y(bicubic, y),
                          'diversity': np.zeros(len(x))},
              'SRIM (per sample)': {'psnr_y': metrics.psnr_y(flat, truth) / num_samples,
                                    'ssim_y': metrics.ssim_y(flat, truth) / num_samples,
                                    'diversity': metrics.diversity(flat, num_samples)}}
    for row, columns in scores.items():
      for column, values in columns.items():
        sums[row][column] += float(np.sum(np.asarray(values), dtype=np.float64))
  return {row: {c: v / len(lowres) for c, v in columns.items()} for row, columns in sums.items()}


def write(rows: dict[str, dict[str, float]], workdir: str, note: str) -> list[str]:
  """table_srim.md and table_srim.csv in `workdir`, both or neither."""
  md = ['| Method | pSNR (Y) | SSIM (Y) | Diversity |', '|---|---|---|---|']
  md += [f'| {name} | {r["psnr_y"]:.2f} | {r["ssim_y"]:.3f} | {r["diversity"]:.4f} |' for name, r in rows.items()]
  csv = ['method,' + ','.join(COLUMNS)] + [f'{name},' + ','.join(repr(r[c]) for c in COLUMNS)
                                          for name, r in rows.items()]

  def write_files(folder):
    for name, lines in (('table_srim.md', md + ['', f'- {note}']), ('table_srim.csv', csv)):
      with open(os.path.join(folder, name), 'w') as f:
        f.write('\n'.join(lines) + '\n')

  return [os.path.join(workdir, n) for n in user_images.write_all_or_nothing(workdir, write_files)]
