"""Range checks of the config's values, run before anything is built, read or written.

`common.config.from_config` checks types and enums (Literal fields) of the sections that become dataclasses; the
dataclasses check what only they know. What no dataclass owns (the data section, the top-level fields, the numeric
ranges of the optimiser) is listed here, one rule per field, so that every bad value ends in one UserError naming the
field (tests/launch/test_config_walk.py walks every field of every experiment config). A path a config does not have is
skipped: the table serves every method.
"""

import math
from collections.abc import Callable
from typing import Any, cast

import ml_collections

from common.errors import UserError

Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, 'positive')
NON_NEGATIVE: Rule = (lambda v: v >= 0, '>= 0')
DECAY: Rule = (lambda v: 0 <= v < 1, 'in [0, 1)')
FRACTION: Rule = (lambda v: 0 <= v < 1, 'in [0, 1)')


def one_of(*choices: str) -> Rule:
  return (lambda v: v in choices, f'one of {list(choices)}')


def between(low: float, high: float) -> Rule:
  return (lambda v: low <= v <= high, f'in [{low}, {high}]')


# Values: a rule for the field, or ('each', rule) for every item of a tuple field.
RULES: dict[str, Rule | tuple[str, Rule]] = {
  'batch_size': POSITIVE,
  'train_batch_parts': NON_NEGATIVE,
  'num_sample_images': POSITIVE,
  'num_samples_per_image': POSITIVE,
  'sample_temperature': (lambda v: v > 0 and not math.isnan(v), '> 0 (inf = greedy)'),
  'method': one_of('pixelcnn', 'regression', 'srim', 'srgan'),
  'metrics_convention': one_of('daala', 'bt601'),
  'loss_reduction': one_of('sum', 'mean'),
  'data.source': one_of('tfds', 'folder', 'embedded', 'mnist_corners'),
  'data.crop': one_of('celeba', 'centre', 'random', 'none'),
  'data.resize': one_of('antialiased', 'no_antialias', 'tf1'),
  'data.augment': one_of('none', 'flip_rot90'),
  'data.mnist_source': one_of('idx', 'tfds'),
  'data.highres_size': POSITIVE,
  'data.lowres_size': POSITIVE,
  'data.eval_fraction': FRACTION,
  'data.num_eval_examples': NON_NEGATIVE,
  'data.celeba_crop_box': ('each', NON_NEGATIVE),
  'data.random_crop_min': POSITIVE,
  'data.random_crop_max': POSITIVE,
  'data.num_unseen_classes': NON_NEGATIVE,
  'data.shuffle_buffer': POSITIVE,
  'data.mnist_eval_digits': POSITIVE,
  'data.corner_digit_size': POSITIVE,
  'data.mnist_grey_levels': between(2, 256),
  'optimizer.learning_rate': POSITIVE,
  'optimizer.lr_halve_every': NON_NEGATIVE,
  'optimizer.lr_halve_at': ('each', POSITIVE),
  'optimizer.rmsprop_decay': DECAY,
  'optimizer.rmsprop_initial_scale': NON_NEGATIVE,
  'optimizer.momentum': DECAY,
  'optimizer.adam_b2': DECAY,
  'optimizer.eps': POSITIVE,
  'optimizer.grad_clip_norm': NON_NEGATIVE,
  'model.init_stddev': POSITIVE,
  'model.leaky_relu_slope': DECAY,
  'model.batch_norm_momentum': DECAY,
  'model.batch_norm_epsilon': POSITIVE,
  'srgan.adam_b1': DECAY,
  'srgan.adam_b2': DECAY,
  'srgan.adam_eps': POSITIVE,
  'srgan.adversarial_weight': NON_NEGATIVE,
}

# Every int field of config.model is a size or a count: positive (upsample_factor 1 = no upsampling, MNIST corners).
_MODEL_INT: Rule = POSITIVE


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
  node = config
  for part in path.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False, None
    node = node[part]
  return True, node


def _check(path: str, value: Any, rule: Rule, each: bool = False) -> None:
  test, what = rule
  if each and not isinstance(value, (tuple, list)):
    raise UserError(f'config.{path} must be a tuple, got {value!r}.')
  for v in value if each else (value,):
    try:
      ok = not isinstance(v, bool) and test(v)
    except TypeError:  # A string where a number belongs, or the reverse.
      ok = False
    if not ok:
      raise UserError(f'config.{path} must be {"all " if each else ""}{what}, got {value!r}.')


def check_values(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field of `config` whose value is out of its range, or whose value does not
  fit another's (random_crop_min <= random_crop_max, lowres_size <= highres_size)."""
  for path, rule in RULES.items():
    present, value = _lookup(config, path)
    if present:
      each = rule[0] == 'each'
      _check(path, value, cast(Rule, rule[1] if each else rule), each)
  present, model = _lookup(config, 'model')
  if present:
    for name, value in model.items():
      if isinstance(value, int) and not isinstance(value, bool):
        _check(f'model.{name}', value, _MODEL_INT)
      elif isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
        _check(f'model.{name}', value, _MODEL_INT, each=True)
  d = config.get('data')
  if d is not None:
    if d.random_crop_min > d.random_crop_max:
      raise UserError(
        f'config.data.random_crop_min={d.random_crop_min} is above config.data.random_crop_max='
        f'{d.random_crop_max}; make min <= max.'
      )
    if d.lowres_size > d.highres_size:
      raise UserError(
        f'config.data.lowres_size={d.lowres_size} is above config.data.highres_size={d.highres_size}; '
        'the low-res input is the smaller image.'
      )
    if len(d.celeba_crop_box) != 3 or not d.celeba_crop_box[2]:
      raise UserError(f'config.data.celeba_crop_box must be (top, left, size) with size > 0, got {d.celeba_crop_box}.')
    if d.num_unseen_classes and d.source != 'folder':
      raise UserError(
        f'config.data.num_unseen_classes={d.num_unseen_classes} holds out class subfolders of an image '
        f'folder, but config.data.source is {d.source!r}: use --config.data.source=folder, or set '
        '--config.data.num_unseen_classes=0.'
      )
    if d.augment != 'none' and d.source == 'mnist_corners':
      raise UserError(
        "config.data.augment must be 'none' with source='mnist_corners': a vertical flip or a rotation "
        'would move the digit into a lower corner, which the task never shows.'
      )
    if d.source == 'mnist_corners' and not d.corner_digit_size <= d.highres_size // 2:
      raise UserError(
        f'config.data.corner_digit_size must be in [1, highres_size // 2 = {d.highres_size // 2}] so '
        f'that the digit stays in its upper quadrant, got {d.corner_digit_size}.'
      )


def check_common(config: ml_collections.ConfigDict) -> None:
  """What every method's config shares: the values above, the loop's fields and the optimiser (for the methods that
  use config.optimizer). Whether the batch splits over the devices is the trainer's check: it depends on the host."""
  from common import optim, train_loop  # Here: importing them loads JAX, which the rules do not need.

  check_values(config)
  train_loop.LoopConfig.from_config(config)
  if 'optimizer' in config:
    optim.make_optimizer(config.optimizer)


def check_sizes_agree(data: ml_collections.ConfigDict, factor: int, factor_field: str) -> None:
  """config.data.highres_size is config.data.lowres_size x the model's upsampling `factor` (named by `factor_field`,
  as a user sets it), or a UserError naming the three fields."""
  if data.highres_size != data.lowres_size * factor:
    raise UserError(
      f'config.data.highres_size={data.highres_size} is not config.data.lowres_size={data.lowres_size} x '
      f'{factor_field}={factor}; make the three agree.'
    )
