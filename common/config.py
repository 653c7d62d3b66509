"""Typed, frozen model configs built from `ml_collections` sections, with errors that name the field."""

import dataclasses
import typing
from typing import Any, TypeVar, cast

import ml_collections

from common.errors import UserError

T = TypeVar('T')


def _check_type(value: Any, annotation: Any, where: str) -> Any:
  """Returns `value` as `annotation`, or raises UserError naming the field `where`."""
  origin = typing.get_origin(annotation)
  if origin is tuple:
    item_type = typing.get_args(annotation)[0]
    if not isinstance(value, (tuple, list)):
      raise UserError(f'{where} must be a tuple of {item_type.__name__}, got {value!r}.')
    return tuple(_check_type(v, item_type, f'{where}[{i}]') for i, v in enumerate(value))
  if origin is typing.Literal:
    choices = typing.get_args(annotation)
    if value not in choices:
      raise UserError(f'{where} must be one of {list(choices)}, got {value!r}.')
    return value
  # bool is an int in Python; an int field given True is almost surely a mistake, and vice versa.
  if annotation is bool and not isinstance(value, bool):
    raise UserError(f'{where} must be a bool (True/False), got {value!r}.')
  if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise UserError(f'{where} must be an int, got {value!r}.')
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UserError(f'{where} must be a number, got {value!r}.')
    return float(value)
  if annotation is str and not isinstance(value, str):
    raise UserError(f'{where} must be a string, got {value!r}.')
  return value


def from_config(cls: type[T], section: ml_collections.ConfigDict | dict, where: str) -> T:
  """Builds the frozen dataclass `cls` from a config section; unknown or ill-typed fields raise UserError.

  `where` is the section's path as a user writes it on the command line (e.g. 'config.model').
  """
  values = dict(section)
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cast(Any, cls))}
  unknown = sorted(set(values) - names)
  if unknown:
    raise UserError(f'Unknown field {where}.{unknown[0]}; {where} accepts: {", ".join(sorted(names))}.')
  kwargs = {k: _check_type(v, hints[k], f'{where}.{k}') for k, v in values.items()}
  return cls(**kwargs)  # A dataclass's own check (__post_init__) raises UserError for an impossible value.
