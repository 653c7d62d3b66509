"""What the launch/ scripts share: one-line user errors, flag parsing that reports them, quiet orbax logs."""
import os
import re
import sys

# Before TensorFlow loads: its C++ warnings would print the whole Python traceback of an unreadable image file
# above the one-line error that names it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags, logging


def fail(error: Exception | str, code: int = 2):
  """One line on stderr and a non-zero exit; config_flags' errors are rewritten without their traceback."""
  if isinstance(error, (KeyError, AttributeError)) and error.args:  # ml_collections: an unknown field
    # ml_collections nests the message in reprs: "'\\'name\\'\\nDid you mean ...'". Keep the name and the hint.
    raw = str(error.args[0])
    name, hint = re.search(r"(\w+)\\?'", raw), re.search(r'Did you mean [^?]*\?', raw)
    error = f"unknown config field '{name.group(1) if name else raw}'" + (f'; {hint.group(0)}' if hint else '')
  elif isinstance(error, OSError):  # config_flags: the config file could not be loaded
    error = f'cannot load the --config file: {str(error).strip().splitlines()[-1].strip()}'
  logging.flush()
  print(f'error: {error}', file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags raises KeyError, TypeError, ValueError or flags.Error by fault.
    fail(e)


def quiet_orbax():
  """Orbax logs every phase of every save at INFO, and a failed write as a dozen ERROR tracebacks that
  common.checkpoint turns into one message: keep only its critical records."""
  class _Filter(logging.logging.Filter):
    def filter(self, record):
      return record.levelno >= logging.logging.CRITICAL or '/orbax/' not in record.pathname
  logging.get_absl_handler().addFilter(_Filter())
