"""SRIM's table 1 and figures 4-6: luminance pSNR and SSIM of bicubic upsampling, SRGAN and SRIM on the same
held-out images.

Rows: Bicubic; SRGAN (imle/srgan.py, one deterministic output per input) when its run is given, a row per run when
several are (SRIM compared two SRGAN implementations; `srgan_row_names`); SRIM scored per sample (the mean over
`num_samples` samples of each input, what a user of one sample gets) when the evaluated run is an SRIM run. Columns:
pSNR and SSIM on Y (common.metrics.psnr_y / ssim_y, and `psnr_y` below) under config.metrics_convention: 'daala'
(SRIM's, xiph/daala's tools) or 'bt601' (MATLAB's rgb2ycbcr); and the diversity of the outputs (mean per-pixel standard
deviation across the samples of an input, on [0, 1]; 0 for the deterministic rows). With `config.data.num_unseen_classes
> 0` (an image folder whose last class subfolders are held out whole), every row is scored on the held-out images of the
training classes ('seen') and on the images of the held-out classes ('unseen'), as the paper's test set.
"""

import collections
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from common import checkpoint, data, images, lpips, metrics, progress, train_loop, user_images
from common.errors import UserError
from imle import models, srgan, srgan_models, train

COLUMNS = ('psnr_y', 'ssim_y', 'diversity')
LPIPS_NET = 'alexnet'  # The official default backbone.
BICUBIC, SRGAN, SRIM = 'Bicubic', 'SRGAN', 'SRIM (per sample)'
DEFAULT_CONVENTION = 'daala'  # SRIM's footnote: "using the daala package".
CONVENTION_NOTES = {
  'daala': "pSNR/SSIM on Y' as xiph/daala's tools compute it (png2y4m, dump_psnr -y, dump_ssim -y -r), SRIM's "
  'convention (common/metrics.py).',
  'bt601': "pSNR/SSIM on BT.601 luminance (MATLAB's rgb2ycbcr; SSIM 11x11, sigma 1.5) (common/metrics.py).",
}
# (lowres uint8 (b, h, w, 3), key) -> uint8 (b, n, H, W, 3): n outputs per input.
Method = Callable[[np.ndarray, jax.Array], np.ndarray]


def psnr_y(a: np.ndarray, b: np.ndarray, convention: str = 'bt601') -> jax.Array:
  """common.metrics.psnr_y with an exact match scored as one pixel off by one level of Y (common.metrics.bounded_psnr,
  as table 1), so that a flat crop that bicubic upsampling reproduces exactly (a black patch of sky) does not make
  the mean infinite."""
  return metrics.bounded_psnr(metrics.luma(a, convention=convention), metrics.luma(b, convention=convention))


def table_convention(config: ml_collections.ConfigDict) -> str:
  """The luma convention of `config`'s tables: config.metrics_convention."""
  return config.get('metrics_convention', DEFAULT_CONVENTION)


def splits(data_cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The eval splits to score, {split: label}: the held-out images, and those of unseen classes if any."""
  if data_cfg.get('num_unseen_classes', 0) > 0:
    return {'eval': 'seen', 'eval_unseen': 'unseen'}
  return {'eval': 'held-out'}


def eval_examples(
  data_cfg: ml_collections.ConfigDict, num_examples: int, split: str = 'eval'
) -> tuple[np.ndarray, np.ndarray]:
  """(lowres, highres) uint8 of the first `num_examples` examples of `split` (0 = all of it)."""
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.num_eval_examples = num_examples
  try:
    batches = list(data.make_dataset(data_cfg, split, batch_size=16, process_index=0, process_count=1))
  except ValueError as e:  # A data module without the split.
    raise UserError(f'The data pipeline cannot make the {split!r} split ({e}).') from e
  if not batches:
    raise UserError(
      f'The {split!r} split of config.data yielded no examples; check config.data.eval_split and '
      'config.data.num_unseen_classes.'
    )
  mask = np.concatenate([b['mask'] for b in batches])
  lowres, highres = (np.concatenate([b[k] for b in batches])[mask] for k in ('lowres', 'highres'))
  return lowres, highres


def srim_method(config: ml_collections.ConfigDict, workdir: str, num_samples: int) -> Method:
  if num_samples < 2:
    raise UserError(f'--num_samples must be >= 2 for the diversity column, got {num_samples}.')
  model, variables = train.restore(config, workdir)
  return lambda x, key: np.asarray(models.sample(model, variables, x, key, num_samples))


def srgan_run_config(data_cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The recorded config of the SRGAN run in `workdir`, checked to map data_cfg's low-res size to its high-res
  size."""
  config = checkpoint.load_config(workdir)
  if config.get('method') != 'srgan':
    raise UserError(
      f'{workdir} holds a config.method={config.get("method")!r} run; --srgan_workdir takes a run of '
      'configs/*_srgan.py.'
    )
  sizes = {k: (config.data[k], data_cfg[k]) for k in ('lowres_size', 'highres_size')}
  if any(a != b for a, b in sizes.values()):
    raise UserError(
      f'The SRGAN run in {workdir} maps {sizes["lowres_size"][0]} -> {sizes["highres_size"][0]} '
      f'pixels, the evaluated data {sizes["lowres_size"][1]} -> {sizes["highres_size"][1]}; train it on '
      "the same data config (configs/imagenet_srgan.py reuses imagenet_srim.py's)."
    )
  return config


def srgan_method(
  data_cfg: ml_collections.ConfigDict, workdir: str, config: ml_collections.ConfigDict | None = None
) -> Method:
  """The generator of the SRGAN run in `workdir` (its recorded `config`, read and checked if not given)."""
  model, variables = srgan.restore(config or srgan_run_config(data_cfg, workdir), workdir)
  return lambda x, key: np.asarray(srgan.predict(model, variables, x))[:, None]


# The networks that tell SRIM's two SRGANs apart (config.model): Ledig et al.'s (srgan_models.SRGANConfig's defaults)
# and tensorlayer/srgan's (configs/imagenet_srgan.py:tensorlayer). Widths, depths and losses vary between a run and
# its demo, so they name no variant.
_VARIANT_FIELDS = (
  'lowres_range',
  'generator_input_kernel',
  'generator_output_kernel',
  'generator_activation',
  'discriminator_layout',
)
SRGAN_VARIANTS = {
  'Ledig': {f: getattr(srgan_models.SRGANConfig(), f) for f in _VARIANT_FIELDS},
  'tensorlayer': dict(
    lowres_range='signed',
    generator_input_kernel=3,
    generator_output_kernel=1,
    generator_activation='relu',
    discriminator_layout='tensorlayer',
  ),
}


def srgan_variant(config: ml_collections.ConfigDict) -> str | None:
  """'Ledig' or 'tensorlayer': the SRGAN whose networks a run's recorded config builds (fields it lacks, recorded
  before they existed, are the paper's); None for a mix of the two."""
  cfg = srgan.model_config(config)
  for name, fields in SRGAN_VARIANTS.items():
    if all(getattr(cfg, f) == v for f, v in fields.items()):
      return name
  return None


def srgan_row_names(configs: dict[str, ml_collections.ConfigDict]) -> dict[str, str]:
  """{workdir: row name} for SRGAN runs {workdir: recorded config}: 'SRGAN' for one run; for several, 'SRGAN
  (<variant>)' (`srgan_variant`), the workdir's name standing for a variant that is neither, and the workdir as given
  added where two runs would share a name."""
  if len(configs) == 1:
    return dict.fromkeys(configs, SRGAN)
  labels = {w: srgan_variant(c) or os.path.basename(os.path.normpath(w)) for w, c in configs.items()}
  shared = {label for label, n in collections.Counter(labels.values()).items() if n > 1}
  return {w: f'{SRGAN} ({label}: {w})' if label in shared else f'{SRGAN} ({label})' for w, label in labels.items()}


def srgan_workdirs(srgan_workdir: str | Sequence[str]) -> list[str]:
  """--srgan_workdir as a list: '' is none, a string one run, a sequence several; a run named twice is refused."""
  workdirs = [srgan_workdir] if isinstance(srgan_workdir, str) else list(srgan_workdir)
  workdirs = [w for w in workdirs if w]
  twice = [w for w, n in collections.Counter(os.path.normpath(w) for w in workdirs).items() if n > 1]
  if twice:
    raise UserError(f'--srgan_workdir names {twice[0]} more than once; give each SRGAN run once.')
  return workdirs


def srgan_rows(data_cfg: ml_collections.ConfigDict, srgan_workdir: str | Sequence[str]) -> dict[str, Method]:
  """The SRGAN rows, one per run, named by `srgan_row_names`. Every run's config is read and checked before any
  generator is restored."""
  configs = {w: srgan_run_config(data_cfg, w) for w in srgan_workdirs(srgan_workdir)}
  return {name: srgan_method(data_cfg, w, configs[w]) for w, name in srgan_row_names(configs).items()}


def methods(
  config: ml_collections.ConfigDict, workdir: str, num_samples: int, srgan_workdir: str | Sequence[str] = ''
) -> dict[str, Method]:
  """The table's rows after Bicubic: for an SRIM run, SRGAN (one row per run of `srgan_workdir`, one or several)
  and SRIM; for an SRGAN run, it."""
  (srgan if config.method == 'srgan' else train).check_config(config)  # Before any run is read.
  if config.method == 'srgan':
    if srgan_workdirs(srgan_workdir):
      raise UserError(
        "--srgan_workdir adds SRGAN rows to an SRIM run's table; with an SRGAN config, --workdir "
        'is already the SRGAN run: drop --srgan_workdir.'
      )
    return {SRGAN: srgan_method(config.data, workdir)}
  rows = srgan_rows(config.data, srgan_workdir)
  rows[SRIM] = srim_method(config, workdir, num_samples)
  return rows


def columns(side: int) -> tuple[str, ...]:
  """The table's columns for images of `side` pixels: LPIPS (common/lpips.py) too when its optional package is
  installed and the images are large enough for its network."""
  return COLUMNS + (('lpips',) if lpips.available() and side >= lpips.MIN_SIDE[LPIPS_NET] else ())


def score(
  rows: dict[str, Method],
  lowres: np.ndarray,
  highres: np.ndarray,
  key: jax.Array,
  batch_size: int = 16,
  figure_rows: int = 0,
  desc: str = 'Scoring',
  convention: str = 'bt601',
) -> tuple[dict[str, dict[str, float]], np.ndarray | None]:
  """Row -> column -> mean over the examples, and the figure input | bicubic | each row's outputs | truth of the
  first `figure_rows` examples (None if 0). Batch `start` of the outputs is drawn with fold_in(key, start). `desc`
  names the progress lines; `convention` is the luma's (common.metrics)."""
  sums = {name: dict.fromkeys(columns(min(highres.shape[1:3])), 0.0) for name in [BICUBIC, *rows]}
  figure = []
  for start in progress.track(range(0, len(lowres), batch_size), desc=desc, unit='batch'):
    x, y = lowres[start : start + batch_size], highres[start : start + batch_size]
    outputs = {BICUBIC: np.asarray(images.quantize(images.bicubic_upsample(x, y.shape[1:3])))[:, None]}
    outputs.update({name: method(x, jax.random.fold_in(key, start)) for name, method in rows.items()})
    for name, out in outputs.items():  # out: (b, n, H, W, 3)
      n = out.shape[1]
      flat, truth = out.reshape(-1, *out.shape[2:]), np.repeat(y, n, axis=0)
      values = {
        'psnr_y': psnr_y(flat, truth, convention) / n,
        'ssim_y': metrics.ssim_y(flat, truth, convention=convention) / n,
        'diversity': metrics.diversity(flat, n) if n > 1 else np.zeros(len(x)),
      }
      if 'lpips' in sums[name]:
        values['lpips'] = lpips.distance(flat, truth, LPIPS_NET) / n
      for column, v in values.items():
        sums[name][column] += float(np.sum(np.asarray(v), dtype=np.float64))
    if start < figure_rows:
      keep = slice(0, figure_rows - start)
      figure.append([x[keep]] + [out[keep, k] for out in outputs.values() for k in range(out.shape[1])] + [y[keep]])
  table = {name: {c: v / len(lowres) for c, v in columns.items()} for name, columns in sums.items()}
  if not figure:
    return table, None
  return table, images.make_grid([np.concatenate(parts) for parts in zip(*figure)])


def table(
  config: ml_collections.ConfigDict,
  workdir: str,
  num_examples: int,
  num_samples: int = 4,
  batch_size: int = 16,
  *,
  srgan_workdir: str | Sequence[str] = '',
  split: str = 'eval',
) -> dict[str, dict[str, float]]:
  """Row -> column -> mean over the first `num_examples` examples of `split` (0 = all of a tfds split)."""
  rows = methods(config, workdir, num_samples, srgan_workdir)
  return score(
    rows,
    *eval_examples(config.data, num_examples, split),
    train_loop.seed_key(config.seed, 'evaluate'),
    batch_size,
    convention=table_convention(config),
  )[0]


def tables(
  config: ml_collections.ConfigDict,
  workdir: str,
  num_examples: int,
  num_samples: int = 4,
  batch_size: int = 16,
  *,
  srgan_workdir: str | Sequence[str] = '',
  figure_rows: int = 8,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, np.ndarray]]:
  """`table` on every split of `splits(config.data)` with the models restored once: ({label: rows},
  {label: figure})."""
  rows = methods(config, workdir, num_samples, srgan_workdir)
  key = train_loop.seed_key(config.seed, 'evaluate')
  results, figures = {}, {}
  for split, label in splits(config.data).items():
    results[label], figure = score(
      rows,
      *eval_examples(config.data, num_examples, split),
      key,
      batch_size,
      figure_rows,
      desc=f'{config.method.upper()} table, {label}',
      convention=table_convention(config),
    )
    if figure is not None:
      figures[label] = figure
  return results, figures


def write(
  results: dict[str, dict[str, dict[str, float]]],
  workdir: str,
  note: str,
  figures: dict[str, np.ndarray] | None = None,
  convention: str | None = None,
) -> list[str]:
  """table_srim.md, table_srim.csv and figure_srim[_<label>].png in `workdir`, all or none. `results` is
  {split label: rows}; with several splits the table has an 'Images' column. The note names `convention`, the luma
  convention the results were scored with."""
  labelled = len(results) > 1
  cols = [c for c in (*COLUMNS, 'lpips') if c in next(iter(next(iter(results.values())).values()))]
  titles = {
    'psnr_y': ('pSNR (Y)', '.2f'),
    'ssim_y': ('SSIM (Y)', '.3f'),
    'diversity': ('Diversity', '.4f'),
    'lpips': ('LPIPS', '.4f'),
  }
  head = '| Method |' + (' Images |' if labelled else '') + ''.join(f' {titles[c][0]} |' for c in cols)
  md = [head, '|---' * head.count(' |') + '|']
  csv = ['method,images,' + ','.join(cols)]
  for name in next(iter(results.values())):
    for label, rows in results.items():
      r = rows[name]
      md.append(
        f'| {name} |' + (f' {label} |' if labelled else '') + ''.join(f' {r[c]:{titles[c][1]}} |' for c in cols)
      )
      csv.append(f'{name},{label},' + ','.join(repr(r[c]) for c in cols))
  if convention:
    note += ' ' + CONVENTION_NOTES[convention]
  if 'lpips' in cols:
    note += f' LPIPS: {LPIPS_NET} v0.1 (lower is closer), per sample for SRIM.'
  elif not lpips.available():
    note += " No LPIPS column: pip install -e '.[lpips]' adds it."
  else:
    note += f' No LPIPS column: {LPIPS_NET} needs images of at least {lpips.MIN_SIDE[LPIPS_NET]} pixels a side.'
  columns = (
    'input | ' + ' | '.join(n.replace(' (per sample)', ' samples') for n in next(iter(results.values()))) + ' | truth'
  )

  def write_files(folder):
    for name, lines in (
      ('table_srim.md', md + ['', f'- {note}', f'- Figure columns: {columns}.']),
      ('table_srim.csv', csv),
    ):
      with open(os.path.join(folder, name), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    for label, figure in (figures or {}).items():
      suffix = '' if label in ('seen', 'held-out') else f'_{label}'
      images.save_png(os.path.join(folder, f'figure_srim{suffix}.png'), figure)

  return [os.path.join(workdir, n) for n in user_images.write_all_or_nothing(workdir, write_files)]
