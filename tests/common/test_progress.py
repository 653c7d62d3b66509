"""common.progress: plain lines with count, rate and ETA in a log; tqdm's bar on a terminal."""

import io
import itertools

from common import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_plain_lines_every_tenth_with_rate_and_eta():
  stream, ticks = io.StringIO(), itertools.count()  # The clock advances 1 s per call: 2 s per item (below).
  clock = lambda: 2.0 * next(ticks)  # noqa: E731
  items = list(progress.track(range(20), desc='Table 1', unit='batch', every=0.25, stream=stream, clock=clock))
  assert items == list(range(20))
  # The clock is read at the start and at each printed line: line k is at 2k s, after 5k items.
  assert stream.getvalue().splitlines() == [
    'Table 1: 5/20 batch (25%), 2.5 batch/s, ETA 0:06',
    'Table 1: 10/20 batch (50%), 2.5 batch/s, ETA 0:04',
    'Table 1: 15/20 batch (75%), 2.5 batch/s, ETA 0:02',
    'Table 1: 20/20 batch in 0:08, 2.5 batch/s',
  ]


def test_plain_slow_rate_in_seconds_per_item_and_hours():
  stream, ticks = io.StringIO(), itertools.count()
  clock = lambda: 1800.0 * next(ticks)  # noqa: E731  (30 minutes per line)
  list(progress.track(['a', 'b', 'c'], desc='pool', unit='image', stream=stream, clock=clock))
  assert stream.getvalue().splitlines() == [
    'pool: 1/3 image (33%), 1.8e+03 s/image, ETA 1:00:00',
    'pool: 2/3 image (67%), 1.8e+03 s/image, ETA 30:00',  # at 3600 s after 2 items
    'pool: 3/3 image in 1:30:00, 1.8e+03 s/image',
  ]


def test_terminal_gets_tqdm_bar():
  stream = _Terminal()
  assert list(progress.track(range(7), desc='Samples', unit='batch', stream=stream)) == list(range(7))
  text = stream.getvalue()
  assert '\r' in text and 'Samples: 100%' in text and '7/7' in text and 'batch/s' in text
  assert 'ETA' not in text  # tqdm's own format, not the plain lines


def test_empty_loop_reports_zero():
  stream = io.StringIO()
  assert list(progress.track([], desc='none', stream=stream, clock=lambda: 0.0)) == []
  assert stream.getvalue() == 'none: 0/0 it in 0:00, 0 it/s\n'
