"""What the launch/ scripts share: one-line user errors, flag parsing that reports them, quiet library logs."""

import logging as std_logging
import os
import re
import sys
from typing import NoReturn

# Before TensorFlow loads: its C++ warnings would print the whole Python traceback of an unreadable image file
# above the one-line error that names it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags, logging

# glibc's malloc (>= 2.35) asks for transparent huge pages for its large blocks; older and other C libraries ignore it.
HUGE_PAGES = 'glibc.malloc.hugetlb=1'


def use_huge_pages() -> None:
  """Restarts this process (same pid, same arguments) with HUGE_PAGES added to GLIBC_TUNABLES, unless the variable
  already sets glibc.malloc.hugetlb (=0 keeps 4 KiB pages). Call it first thing in a launcher's __main__.

  XLA:CPU allocates a step's temporaries afresh at every call (2.3 GB for the CelebA train step), which the kernel
  maps and zeroes page by page; in 2 MiB pages it takes two orders of magnitude fewer page faults, and the step runs
  faster (benchmarks/README.md, "The batch in parts, and huge pages"). The tunable is read once, when the process
  starts, hence the restart. Where the kernel disables transparent huge pages
  (/sys/kernel/mm/transparent_hugepage/enabled = never) nothing changes."""
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if sys.platform != 'linux' or 'glibc.malloc.hugetlb' in tunables:
    return
  env = dict(os.environ, GLIBC_TUNABLES=f'{tunables}:{HUGE_PAGES}' if tunables else HUGE_PAGES)
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def fail(error: Exception | str, code: int = 2) -> NoReturn:
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


_OWN = tuple(
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
  for d in ('common', 'pixelsr', 'imle', 'launch', 'configs')
)
# clu writes the run's metrics and its steps/s and ETA ("Setting work unit notes"): the run's own progress.
_PROGRESS_LIBRARIES = (os.sep + 'clu' + os.sep,)
# TensorFlow's C++ INFO lines at import ("oneDNN custom operations are on", twice, each after "WARNING: All log
# messages before absl::InitializeLog() ..."): absl's C++ logging ignores TF_CPP_MIN_LOG_LEVEL before it is set up.
_NATIVE_INFO = re.compile(r'^(I\d{4} .*|WARNING: All log messages before absl::InitializeLog\(\) is called .*)$')


def quiet_logs(imports_tensorflow: bool = True):
  """The run's own log lines only: INFO records of the libraries (JAX's "Unable to initialize backend 'tpu'", orbax's
  every save phase, TensorFlow's oneDNN notice, when the command `imports_tensorflow`) are dropped unless
  --verbosity >= 1 (absl's flag; -v 1 shows them, and DEBUG lines too). Orbax's failed writes, a dozen ERROR
  tracebacks that common.checkpoint turns into one message, are dropped whatever the verbosity: only its critical
  records stay."""
  everything = logging.get_verbosity() >= 1

  class _Filter(std_logging.Filter):
    def filter(self, record):
      if '/orbax/' in record.pathname:
        return record.levelno >= std_logging.CRITICAL
      return (
        everything
        or record.levelno >= std_logging.WARNING
        or record.pathname.startswith(_OWN)
        or any(lib in record.pathname for lib in _PROGRESS_LIBRARIES)
      )

  logging.get_absl_handler().addFilter(_Filter())
  if imports_tensorflow and not everything:
    _import_tensorflow_quietly()


def _import_tensorflow_quietly():
  """Imports TensorFlow with the C++ stderr (fd 2) caught, and writes back all but its INFO lines."""
  if 'tensorflow' in sys.modules:
    return
  import tempfile

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+') as caught:
    os.dup2(caught.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      sys.stderr.writelines(line for line in caught if not _NATIVE_INFO.match(line.rstrip('\n')))
      sys.stderr.flush()
