"""A study's images from trained runs (`launch/study.py build`). It needs both methods, so it sits above them;
the study app itself (common/study) only reads the images and manifest written here.

Fooled: the rows of table 1 come from pixelsr.evaluate.table1 itself (the same samples, keys and baselines as
`launch/evaluate.py`), asked for a figure of every example, which is then cut into its cells: input | each row |
ground truth. Preference: SRIM (imle.models.sample), SRGAN (imle.srgan.predict) and bicubic outputs of the images of
classes seen in training ('eval') and of held-out classes ('eval_unseen', config.data.num_unseen_classes).
"""

import os

import jax
import ml_collections
import numpy as np

from common import checkpoint, data, progress
from common.errors import UserError
from common.study import manifest as manifest_lib

_GRID_PADDING = 2  # common.images.make_grid's default, which table1's figure uses


def table1_images(
  config: ml_collections.ConfigDict, workdir: str, regression_workdir: str, num_examples: int
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
  """(ground truth (N, H, W, 3), row name -> outputs (N, H, W, 3), notes) of table 1's rows on the first
  `num_examples` eval examples; rows whose run is missing are absent (their reason is in the notes)."""
  from pixelsr import evaluate

  config = ml_collections.ConfigDict(config.to_dict())
  config.evaluate.num_figure_rows = num_examples
  table = evaluate.table1(config, workdir, regression_workdir, num_examples)
  names = list(table.rows)
  grid = table.figure
  side, pad = config.data.highres_size, _GRID_PADDING
  num = (grid.shape[0] - pad) // (side + pad)

  def column(k):
    left = pad + k * (side + pad)
    return np.stack([grid[pad + n * (side + pad) :][:side, left : left + side] for n in range(num)])

  outputs = {name: column(1 + k) for k, name in enumerate(names)}
  notes = [n for n in table.notes if not n.startswith('Figure columns')] + [
    f'Skipped {name}: {reason}.' for name, reason in table.skipped.items()
  ]
  return column(len(names) + 1), outputs, notes


GOLDEN_ARM = (
  '--rows Bicubic: the golden questions pit Bicubic against the truth and a session that misses one is discarded, '
  'so a Bicubic arm would keep only the workers it never fooled (PRSR table 1 has no % Fooled for Bicubic).'
)


def fooled_arms(rows: list[str], made: list[str], notes: list[str]) -> tuple[list[str], list[str]]:
  """(the study's arms, warnings): `rows`, or by default the paper's (section 5.3: Regression and the samples at
  each temperature, not greedy; table 1 shows '-' for Bicubic and NN). build_fooled refuses Bicubic before sampling."""
  arms = rows or [name for name in made if name == 'Regression' or name.startswith('tau=')]
  missing = [r for r in arms if r not in made]
  if missing or not arms:
    raise UserError(f'--rows {missing or "(default)"} are not among the rows made: {made} ({"; ".join(notes)})')
  warnings = []
  if 'NN' in arms:
    warnings.append(
      'Warning: NN outputs are themselves photographs (training images), so % Fooled for NN measures how well '
      'the neighbour matches the input, not how realistic a model draws.'
    )
  return arms, warnings


def build_fooled(
  out: str,
  workdir: str,
  regression_workdir: str,
  *,
  config: ml_collections.ConfigDict | None,
  num_examples: int,
  rows: list[str],
  scale: int | None,
  **protocol,
) -> manifest_lib.Manifest:
  if manifest_lib.GOLDEN in rows:  # before the sampling, which takes a while
    raise UserError(GOLDEN_ARM)
  manifest_lib.check_out(out, scale)
  needed = protocol.get('practice_pairs', 10) + protocol.get('main_pairs', 45)
  if num_examples < needed:
    raise UserError(
      f'--num_examples={num_examples} is fewer than practice_pairs + main_pairs = {needed}: every pair '
      'of a session shows a different example.'
    )
  if config is None:
    config = checkpoint.load_config(workdir)
  if config.get('method') != 'pixelcnn':
    raise UserError(
      f'--workdir {workdir} must be a pixel recursive run (method pixelcnn), not {config.get("method")!r}.'
    )
  truth, outputs, notes = table1_images(config, workdir, regression_workdir, num_examples)
  if manifest_lib.GOLDEN not in outputs:
    raise UserError('The golden questions need the Bicubic row, which table 1 did not produce.')
  arms, warnings = fooled_arms(rows, list(outputs), notes)
  scale, small = manifest_lib.display_scale(*truth.shape[1:3], scale)
  warnings += small
  return manifest_lib.write_fooled(
    out,
    truth,
    outputs,
    scale=scale,
    arms=arms,
    notes=tuple(warnings + notes),
    source={
      'workdir': os.path.abspath(workdir),
      'regression_workdir': os.path.abspath(regression_workdir) if regression_workdir else '',
      # What report checks a table1.md against before merging into it: the examples, NN's database, the models.
      'table1': [n for n in notes if not n.startswith('Skipped ')],
    },
    **protocol,
  )


def _split_by_class(data_cfg: ml_collections.ConfigDict, split: str, per_class: int) -> tuple[np.ndarray, list[str]]:
  """The low-res inputs of the first `per_class` images of each class of an eval split, and their classes: the
  top-level subfolders of the image folder (the only source with held-out classes), whose eval order is the file
  order."""
  files = data.folder_files(data_cfg.folder, data_cfg.eval_fraction, data_cfg.num_unseen_classes)[split]
  classes = [os.path.relpath(f, data_cfg.folder).split(os.sep)[0] for f in files]
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.num_eval_examples = 0  # all of them
  batches = list(data.make_dataset(data_cfg, split, batch_size=16, process_index=0, process_count=1))
  mask = np.concatenate([b['mask'] for b in batches])
  lowres = np.concatenate([b['lowres'] for b in batches])[mask]
  keep, count = [], {}
  for n, c in enumerate(classes):
    count[c] = count.get(c, 0) + 1
    if count[c] <= per_class:
      keep.append(n)
  return lowres[keep], [classes[n] for n in keep]


def build_preference(
  out: str, srim_workdir: str, srgan_workdir: str, *, per_class: int, scale: int | None, seed: int, **protocol
) -> manifest_lib.Manifest:
  """SRIM's Table 2 study: one SRIM sample, the SRGAN output and bicubic for the first `per_class` images of each
  class seen in training ('eval') and each unseen class ('eval_unseen') of the SRIM run's data."""
  manifest_lib.check_out(out, scale)
  from imle import models as imle_models
  from imle import srgan
  from imle import train as imle_train
  from pixelsr import baselines

  config = checkpoint.load_config(srim_workdir)
  if config.get('method') != 'srim':
    raise UserError(f'--workdir {srim_workdir} must be an SRIM run, not {config.get("method")!r}.')
  if not config.data.get('num_unseen_classes', 0):
    raise UserError(
      f'The SRIM run of {srim_workdir} holds out no classes (config.data.num_unseen_classes = 0), so '
      'there are no unseen classes to show; train it with --config.data.num_unseen_classes=N.'
    )
  srgan_config = checkpoint.load_config(srgan_workdir)
  srim_model, srim_vars = imle_train.restore(config, srim_workdir)
  srgan_model, srgan_vars = srgan.restore(srgan_config, srgan_workdir)
  outputs, classes, splits = {'SRIM': [], 'SRGAN': [], 'Bicubic': []}, [], []
  for split, name in progress.track((('eval', 'seen'), ('eval_unseen', 'unseen')), desc='Study images', unit='split'):
    lowres, names = _split_by_class(config.data, split, per_class)
    key = jax.random.fold_in(jax.random.key(seed), len(splits))
    outputs['SRIM'].append(np.asarray(imle_models.sample(srim_model, srim_vars, lowres, key, 1))[:, 0])
    outputs['SRGAN'].append(np.asarray(srgan.predict(srgan_model, srgan_vars, lowres)))
    outputs['Bicubic'].append(np.asarray(baselines.bicubic(lowres, config.data.highres_size, config.data.resize)))
    classes += names
    splits += [name] * len(lowres)
  scale, notes = manifest_lib.display_scale(*outputs['SRIM'][0].shape[1:3], scale)
  notes = (
    *notes,
    f'SRIM: {srim_workdir}; SRGAN: {srgan_workdir}; one SRIM sample per input (seed {seed}); the first '
    f'{per_class} eval images of each class.',
  )
  return manifest_lib.write_preference(
    out,
    {k: np.concatenate(v) for k, v in outputs.items()},
    classes,
    splits,
    scale=scale,
    notes=notes,
    source={'workdir': os.path.abspath(srim_workdir), 'srgan_workdir': os.path.abspath(srgan_workdir)},
    **protocol,
  )
