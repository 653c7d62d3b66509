"""The launchers restart themselves with glibc's malloc asking for transparent huge pages (common/cli.py,
`use_huge_pages`): the same pid and arguments, the tunable set, a user's own setting kept, and, where the kernel
allows them, a large array touched in far fewer page faults than in 4 KiB pages."""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import REPO

THP = '/sys/kernel/mm/transparent_hugepage/enabled'

# Prints the pid before and after the call (the restart runs the script again from the top), the tunables, and the
# page faults of touching 512 MiB from malloc.
SCRIPT = """
import ctypes, os, resource, sys
sys.path.insert(0, sys.argv[1])
print('pid', os.getpid(), flush=True)
from common.cli import use_huge_pages
use_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(1 << 29)  # as XLA's buffers: malloc, not numpy's allocator (which asks for huge pages itself)
ctypes.memset(block, 1, 1 << 29)
print('tunables', os.environ.get('GLIBC_TUNABLES'), 'args', sys.argv[2:], 'faults',
      resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(tmp_path, env):
  script = tmp_path / 'script.py'
  script.write_text(SCRIPT)
  out = subprocess.run(
    [sys.executable, str(script), REPO, '--flag=1'], capture_output=True, text=True, timeout=120, env=env
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.split()


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc tunables are Linux only')
def test_the_restart_keeps_the_pid_and_arguments_and_sets_the_tunable(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  words = run(tmp_path, env)
  pids = [words[i + 1] for i, w in enumerate(words) if w == 'pid']
  assert len(pids) == 2 and pids[0] == pids[1]  # exec: the script ran twice in one process
  assert words[words.index('tunables') + 1] == 'glibc.malloc.hugetlb=1'
  assert words[words.index('args') + 1] == "['--flag=1']"
  huge_faults = int(words[words.index('faults') + 1])

  kept = run(tmp_path, dict(env, GLIBC_TUNABLES='glibc.malloc.hugetlb=0'))
  assert kept.count('pid') == 1 and kept[kept.index('tunables') + 1] == 'glibc.malloc.hugetlb=0'
  small_faults = int(kept[kept.index('faults') + 1])
  # The kernel's policy decides what the tunable can change: 'madvise' (the usual default) grants huge pages to
  # those who ask, 'always' to everyone, 'never' to no one.
  policy = pathlib.Path(THP).read_text() if os.path.exists(THP) else '[never]'
  if '[madvise]' in policy:
    assert small_faults > (1 << 29) // 4096 // 2  # 4 KiB pages: ~131,000 faults for 512 MiB
    assert huge_faults < small_faults / 20, (huge_faults, small_faults)
