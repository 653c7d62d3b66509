"""Table 1 of the pixel recursive paper: baselines and samples scored against the ground truth (`launch/evaluate.py`).

Rows: Bicubic, NN (nearest neighbour in the downsampled training set), Regression (the L2 baseline of a
`--regression_workdir`), tau = each of config.evaluate.temperatures, and greedy (tau = inf); columns: pSNR, SSIM,
MS-SSIM (common.metrics' conventions), consistency (section 5.2) and the negative log-likelihood of the row's output
under the pixel recursive model in bits per sub-pixel (figure 6). Every value is a mean over the first
config.evaluate.num_examples examples of the eval split. A row whose model is missing is skipped with its reason.
"""

import csv
import dataclasses
import functools
import io
import os
from collections.abc import Callable
from typing import Any, cast

import jax
import ml_collections
import numpy as np
from absl import logging

from common import checkpoint, data, images, metrics, progress, sharding, train_loop
from common.errors import UserError
from pixelsr import baselines, regression, sampling, train

COLUMNS = {
  'psnr': 'pSNR',
  'ssim': 'SSIM',
  'ms_ssim': 'MS-SSIM',
  'consistency': 'Consistency',
  'nll_bits_per_dim': 'NLL (bits/dim)',
}
_FORMATS = {'psnr': '.2f', 'ssim': '.3f', 'ms_ssim': '.3f', 'consistency': '.4f', 'nll_bits_per_dim': '.3f'}


@dataclasses.dataclass
class Table:
  """Scored rows in table order, name -> column -> mean; `skipped` gives each missing row's reason."""

  rows: dict[str, dict[str, float]]
  skipped: dict[str, str]
  figure: np.ndarray  # uint8 grid: input | each scored row | ground truth, for num_figure_rows examples.
  notes: list[str]


@dataclasses.dataclass(frozen=True)
class _Restored:
  model: Any
  variables: dict
  step: int


def _restore(workdir: str, method: str, data_cfg: ml_collections.ConfigDict) -> _Restored | str:
  """The latest checkpoint of a `method` run in `workdir`, or why there is none to use."""
  if not os.path.isdir(workdir):
    return f'{workdir} does not exist'
  if not os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    return f'{workdir} holds no training run (no {checkpoint.CONFIG_FILE})'
  saved = checkpoint.load_config(workdir)
  if saved.method != method:
    raise UserError(
      f'{workdir} holds a {saved.method!r} run where a {method!r} run was expected; check --workdir '
      'and --regression_workdir.'
    )
  for field in ('lowres_size', 'highres_size', 'resize'):
    if saved.data[field] != data_cfg[field]:
      raise UserError(
        f'{workdir} was trained with data.{field}={saved.data[field]}, but --config has '
        f'{data_cfg[field]}; evaluate with the config the run was trained with.'
      )
  try:
    manager = checkpoint.open_manager(workdir)
  except UserError as e:  # No checkpoint (yet): the row is skipped, with the reason.
    return str(e).rstrip('.')
  step = manager.latest_step()
  manager.close()
  assert step is not None  # open_manager refuses a run without a finished checkpoint.
  model, variables = (train.restore if method == 'pixelcnn' else regression.restore)(saved, workdir, step)
  logging.info('Restored the %s model of %s at step %d.', method, workdir, step)
  return _Restored(model, variables, step)


def _eval_examples(data_cfg: ml_collections.ConfigDict, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `num_examples` examples of the eval split (0: all of a tfds split), as host arrays."""
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.num_eval_examples = num_examples
  batches = list(data.make_dataset(data_cfg, 'eval', batch_size=256, process_index=0, process_count=1))
  if not batches:
    raise UserError(f'The eval split {data_cfg.eval_split!r} yielded no examples; check config.data.eval_split.')
  mask = np.concatenate([b['mask'] for b in batches])
  lowres, highres = (np.concatenate([b[k] for b in batches])[mask] for k in ('lowres', 'highres'))
  return lowres, highres


def _nearest_neighbours(
  config: ml_collections.ConfigDict, cfg: train.EvaluateConfig, queries: np.ndarray
) -> np.ndarray:
  """High-res counterparts of the queries' nearest low-res images among the first nn_database_size training
  examples (config.seed's training order), streamed once."""
  stream = data.make_dataset(
    config.data, 'train', batch_size=cfg.nn_chunk_size, seed=config.seed, process_index=0, process_count=1
  )

  def chunks():
    for start in range(0, cfg.nn_database_size, cfg.nn_chunk_size):
      batch, count = next(stream), min(cfg.nn_chunk_size, cfg.nn_database_size - start)
      yield batch['lowres'][:count], batch['highres'][:count]

  found = baselines.nearest_neighbours(queries, chunks(), cfg.nn_chunk_size)
  return np.asarray(found.highres)


@functools.partial(jax.jit, static_argnames='resize')
def _scores(lowres: jax.Array, output: jax.Array, highres: jax.Array, *, resize: str) -> dict[str, jax.Array]:
  return {
    'psnr': metrics.bounded_psnr(output, highres),
    'ssim': metrics.ssim(output, highres),
    'ms_ssim': metrics.ms_ssim(output, highres),
    'consistency': metrics.consistency(lowres, output, method=resize),
  }


def table1(
  config: ml_collections.ConfigDict, workdir: str, regression_workdir: str = '', num_examples: int | None = None
) -> Table:
  """Scores every row of table 1 on the eval split of `config.data`.

  Args:
    config: a pixel recursive config (configs/*_pixelcnn.py, demo.py): its data and `evaluate` sections.
    workdir: the pixel recursive run (rows tau = ..., greedy and the NLL column need its checkpoint).
    regression_workdir: the regression baseline's run ('' = none: the row is skipped).
    num_examples: overrides config.evaluate.num_examples.
  """
  train.check_config(config)
  cfg = train.evaluate_config(config, num_examples)
  mesh = sharding.data_mesh(jax.local_devices())
  sharding.check_batch_size(cfg.batch_size, mesh, 'config.evaluate.batch_size')
  pixelcnn = _restore(workdir, 'pixelcnn', config.data)
  regressor = (
    _restore(regression_workdir, 'regression', config.data) if regression_workdir else ('no --regression_workdir given')
  )
  lowres, highres = _eval_examples(config.data, cfg.num_examples)
  num = lowres.shape[0]
  logging.info('Scoring %d eval examples.', num)
  nn_highres = _nearest_neighbours(config, cfg, lowres)
  # Padded to whole batches, so nothing compiles twice; the padding rows are dropped from every sum.
  lowres_padded, highres_padded, nn_padded = (
    np.pad(a, [(0, -num % cfg.batch_size)] + [(0, 0)] * 3) for a in (lowres, highres, nn_highres)
  )
  put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
  base_key = train_loop.seed_key(config.seed, 'evaluate')

  def sampler(tau: float) -> Callable[[jax.Array, int], jax.Array]:
    # Every temperature draws batch b with the same key, so the rows differ by tau only.
    restored = cast(_Restored, pixelcnn)  # Called only when the run was restored.
    return lambda x, b: sampling.sample(restored.model, restored.variables, x, jax.random.fold_in(base_key, b), tau)

  # Row name -> (low-res batch, batch number) -> uint8 output, or the reason the row is skipped.
  methods: dict[str, Callable[[jax.Array, int], jax.Array] | str] = {
    'Bicubic': lambda x, b: baselines.bicubic(x, config.data.highres_size, config.data.resize),
    'NN': lambda x, b: put(nn_padded[b * cfg.batch_size : (b + 1) * cfg.batch_size]),
    'Regression': regressor
    if isinstance(regressor, str)
    else (lambda x, b: regression.predict(regressor.model, regressor.variables, x)),
  }
  for name, tau in cfg.sampled_rows().items():
    methods[name] = pixelcnn if isinstance(pixelcnn, str) else sampler(tau)
  skipped = {name: reason for name, reason in methods.items() if isinstance(reason, str)}
  for name, reason in skipped.items():
    logging.warning('Table 1: skipping row %s: %s.', name, reason)
  scored = {name: fn for name, fn in methods.items() if not isinstance(fn, str)}

  num_fig = min(cfg.num_figure_rows, num)
  sums = {name: {} for name in scored}
  figure_rows = {name: [] for name in scored}
  for b in progress.track(range(len(lowres_padded) // cfg.batch_size), desc='Table 1', unit='batch'):
    rows = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
    count = min(cfg.batch_size, num - rows.start)
    x, y = put(lowres_padded[rows]), put(highres_padded[rows])
    for name, method in scored.items():
      output = method(x, b)
      scores = _scores(x, output, y, resize=config.data.resize)
      if not isinstance(pixelcnn, str):
        scores['nll_bits_per_dim'] = sampling.bits_per_dim(
          sampling.log_prob(pixelcnn.model, pixelcnn.variables, x, output), output.shape[1:]
        )
      for column, values in jax.device_get(scores).items():
        sums[name][column] = sums[name].get(column, 0.0) + float(np.sum(values[:count], dtype=np.float64))
      if rows.start < num_fig:
        figure_rows[name].append(np.asarray(output[:count]))

  columns = [lowres[:num_fig]] + [np.concatenate(figure_rows[n])[:num_fig] for n in scored] + [highres[:num_fig]]
  notes = [
    f'{num} examples of the {config.data.eval_split!r} split of {_data_name(config.data)}; '
    f'NN searched {cfg.nn_database_size} training examples.',
    'Figure columns: input | ' + ' | '.join(scored) + ' | ground truth.',
  ]
  if not isinstance(pixelcnn, str):
    notes.append(f'Samples and NLL from the pixel recursive model of {workdir} at step {pixelcnn.step}.')
  if not isinstance(regressor, str):
    notes.append(f'Regression from {regression_workdir} at step {regressor.step}.')
  means = {name: {c: v / num for c, v in s.items()} for name, s in sums.items()}
  return Table(rows=means, skipped=skipped, figure=images.make_grid(columns), notes=notes)


def _data_name(data_cfg: ml_collections.ConfigDict) -> str:
  return {'tfds': data_cfg.name, 'folder': data_cfg.folder, 'embedded': 'the embedded photos'}[data_cfg.source]


def markdown(table: Table) -> str:
  lines = ['| Method | ' + ' | '.join(COLUMNS.values()) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
  for name, row in table.rows.items():
    cells = [format(row[c], _FORMATS[c]) if c in row else 'n/a' for c in COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  notes = table.notes + [f'Skipped {name}: {reason}.' for name, reason in table.skipped.items()]
  notes += [
    'pSNR, SSIM and MS-SSIM on RGB (common/metrics.py: 11x11 SSIM window; MS-SSIM over 3 scales with a 7x7 '
    'window); consistency: MSE on [0, 1] between the input and the bicubic downsample of the output; NLL: '
    '-log2 p(output | input) per sub-pixel under the model.'
  ]
  return '\n'.join(lines + [''] + [f'- {note}' for note in notes]) + '\n'


def csv_text(table: Table) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['method'] + list(COLUMNS))
  for name, row in table.rows.items():
    writer.writerow([name] + [repr(row[c]) if c in row else '' for c in COLUMNS])
  return out.getvalue()


def _write_text(path: str, text: str) -> None:
  """Atomically, like images.save_png: a reader sees the old file or the whole new one."""
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write(table: Table, workdir: str) -> list[str]:
  """table1.md, table1.csv and table1.png in `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = [os.path.join(workdir, f'table1.{ext}') for ext in ('md', 'csv', 'png')]
  _write_text(paths[0], markdown(table))
  _write_text(paths[1], csv_text(table))
  images.save_png(paths[2], table.figure)
  return paths
