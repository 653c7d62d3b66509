"""The one table from `config.method` to the module that trains it and to the table launch/evaluate.py writes for
its runs. It sits above `common/`, `pixelsr/` and `imle/`, so that `common/` never imports a method: each module named
here has the names of the contract `common.trainer.Method` writes down."""

import dataclasses
import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Method:
  module: str  # The trainer: check_config, model_config, create_train_state, ..., train_and_evaluate.
  # What launch/evaluate.py writes for a run of it: 'table1' (the pixel recursive paper's table 1, whose Regression
  # row is a regression run), 'srim' (SRIM's table 1, with SRGAN rows), or '' (only a row of another's table).
  table: str


METHODS = {
  'pixelcnn': Method('pixelsr.train', table='table1'),
  'regression': Method('pixelsr.regression', table=''),
  'srim': Method('imle.train', table='srim'),
  'srgan': Method('imle.srgan', table='srim'),
}


def method(name: str) -> Method:
  """`config.method`'s entry, or a UserError naming the methods there are."""
  if name not in METHODS:
    raise UserError(
      f'config.method={name!r} is not a method of this library; use '
      f'{", ".join(repr(m) for m in list(METHODS)[:-1])} or {list(METHODS)[-1]!r}.'
    )
  return METHODS[name]


def module(name: str) -> ModuleType:
  """The module that trains `config.method` = `name`, imported on demand (each method loads only its own code)."""
  return importlib.import_module(method(name).module)


if TYPE_CHECKING:  # The type checker holds each trainer module to common.trainer.Method; nothing runs here.
  from common import trainer
  from imle import srgan
  from imle import train as srim_train
  from pixelsr import regression
  from pixelsr import train as pixelcnn_train

  _CONTRACT: tuple[trainer.Method, ...] = (pixelcnn_train, regression, srim_train, srgan)
