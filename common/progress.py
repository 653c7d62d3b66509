"""Progress of long loops: a tqdm bar (rate, ETA) on a terminal; in a log or a pipe, a plain line every 10%.

tqdm's bar redraws one line with carriage returns, which a log file or CI console keeps as one ever-growing line;
so when the stream is not a terminal, `track` writes whole lines instead: the count, the percentage, the rate and
the ETA, then the total time.
"""

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import IO, TextIO, TypeVar, cast

import tqdm

T = TypeVar('T')


def track(
  items: Iterable[T],
  *,
  desc: str,
  total: int | None = None,
  unit: str = 'it',
  every: float = 0.1,
  stream: IO[str] | None = None,
  clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
  """Yields `items`, reporting progress on `stream` (default stderr, so stdout stays the command's results).

  Args:
    items: what the loop walks; `total` defaults to len(items).
    desc: the stage's name, the first word of each line.
    unit: what one item is ('batch', 'image'), for the rate.
    every: the fraction of `total` between two plain lines.
    clock: seconds, for the rate and the ETA (tests pass a fake one).
  """
  stream = cast(IO[str], stream or sys.stderr)
  total = len(cast(Sized, items)) if total is None else total
  if _is_terminal(stream):
    yield from tqdm.tqdm(items, desc=desc, total=total, unit=unit, file=stream, dynamic_ncols=True)
    return
  start, reported, done = clock(), 0, 0
  for item in items:
    yield item
    done += 1
    # The number of `every` steps passed; a line each time it grows, so a loop shorter than 1/every prints each item.
    step = int(done / total / every) if total else 0
    if done < total and step > reported:
      reported = step
      elapsed = clock() - start
      rate = _per_second(done, elapsed)
      print(
        f'{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), {_rate(rate, unit)}, '
        f'ETA {_duration((total - done) / rate)}',
        file=stream,
        flush=True,
      )
  elapsed = clock() - start
  rate = _per_second(done, elapsed)
  print(f'{desc}: {done}/{total} {unit} in {_duration(elapsed)}, {_rate(rate, unit)}', file=stream, flush=True)


def _is_terminal(stream: IO[str] | TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False


def _per_second(done: int, elapsed: float) -> float:
  if elapsed > 0:
    return done / elapsed
  return float('inf') if done else 0.0


def _rate(rate: float, unit: str) -> str:
  return f'{rate:.3g} {unit}/s' if rate >= 1 or rate == 0 else f'{1 / rate:.3g} s/{unit}'


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60}:{rest % 60:02d}'
