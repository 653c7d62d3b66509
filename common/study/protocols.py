"""What a session shows, in order, and which algorithm a new session studies.

Fooled (PRSR section 5.3): `practice_pairs` pairs with feedback (the first examples of the study in a random order
per session, truth against the session's algorithm; not counted), then `main_pairs` pairs of distinct other examples,
`golden_pairs` of them at random positions pitting `golden` (bicubic) against the truth; the rest are counted. No
example appears twice in a session, so a worker never sees the same true image twice. Sides are drawn per pair.

Preference (SRIM Table 2): the tests (A vs B) in a random order per session; for each, `pairs_per_split` classes seen
in training and as many unseen, each pair from a different class (a random example of it), the test's pairs in random
order with seen and unseen mixed, sides drawn per pair; the tests follow one another.
"""

import dataclasses
import math

import numpy as np

from common.study.manifest import FOOLED, TRUTH, Manifest

LEFT, RIGHT = 'left', 'right'
PRACTICE, MAIN = 'practice', 'main'
COUNTED, GOLDEN, PAIR = 'counted', 'golden', 'pair'


@dataclasses.dataclass(frozen=True)
class Trial:
  phase: str  # PRACTICE (feedback, not counted) or MAIN
  kind: str  # PRACTICE, COUNTED, GOLDEN (fooled) or PAIR (preference)
  example: int
  left_label: str  # TRUTH or an algorithm's name
  right_label: str
  left_image: str  # manifest image ids
  right_image: str
  test: str = ''  # preference: 'A vs B'
  split: str = ''  # preference: 'seen' / 'unseen'


def _pair(rng: np.random.Generator, example, a: str, b: str, **fields) -> Trial:
  if rng.random() < 0.5:
    a, b = b, a
  return Trial(
    example=example.index,
    left_label=a,
    right_label=b,
    left_image=example.images[a],
    right_image=example.images[b],
    **fields,
  )


def compose_session(m: Manifest, arm: str, rng: np.random.Generator) -> list[Trial]:
  if m.kind == FOOLED:
    return _fooled(m, arm, rng)
  return _preference(m, rng)


def _fooled(m: Manifest, arm: str, rng: np.random.Generator) -> list[Trial]:
  # The practice examples in an order of their own per session, so that no practice pair's position gives it away.
  practice = [
    _pair(rng, m.examples[i], TRUTH, arm, phase=PRACTICE, kind=PRACTICE) for i in rng.permutation(m.practice_pairs)
  ]
  pool = m.examples[m.practice_pairs :]
  chosen = rng.choice(len(pool), m.main_pairs, replace=False)
  golden = set(rng.choice(m.main_pairs, m.golden_pairs, replace=False).tolist())
  main = [
    _pair(rng, pool[i], TRUTH, m.golden if k in golden else arm, phase=MAIN, kind=GOLDEN if k in golden else COUNTED)
    for k, i in enumerate(chosen)
  ]
  return practice + main


def _preference(m: Manifest, rng: np.random.Generator) -> list[Trial]:
  trials = []
  # The tests in an order of their own per participant: tiredness or learning then weighs on each test alike.
  for t in rng.permutation(len(m.tests)):
    a, b = m.tests[t]
    block = []
    for split in ('seen', 'unseen'):
      by_class = {}
      for e in m.examples:
        if e.split == split and {a, b} <= e.images.keys():
          by_class.setdefault(e.group, []).append(e)
      classes = sorted(by_class)
      for c in rng.choice(len(classes), m.pairs_per_split, replace=False):
        members = by_class[classes[c]]
        block.append(
          _pair(rng, members[rng.integers(len(members))], a, b, phase=MAIN, kind=PAIR, test=f'{a} vs {b}', split=split)
        )
    trials += [block[i] for i in rng.permutation(len(block))]
  return trials


def choose_arm(m: Manifest, valid: dict[str, int], active: dict[str, int], rng: np.random.Generator) -> str | None:
  """The arm for a new session: among arms whose valid plus recently active sessions are short of `workers_per_arm`
  (a session in progress holds its place, so a burst of starts cannot overshoot), one with the fewest (ties at
  random); None when every place is taken."""
  load = {a: valid.get(a, 0) + active.get(a, 0) for a in m.arms}
  open_arms = [a for a in m.arms if load[a] < m.workers_per_arm]
  if not open_arms:
    return None
  loads = np.array([load[a] for a in open_arms])
  return open_arms[rng.choice(np.flatnonzero(loads == loads.min()))]


def truth_side(left_label: str, right_label: str) -> str | None:
  """The side of the true image (None for a preference pair)."""
  return LEFT if left_label == TRUTH else RIGHT if right_label == TRUTH else None


# Seconds a worker spends on a pair beyond its display (loading, choosing), and on a practice pair's feedback:
# the page's own pauses, plus a margin, for the intro's estimate of the duration.
_SECONDS_PER_PAIR, _FEEDBACK_SECONDS = 3.0, 1.5


def num_pairs(m: Manifest) -> int:
  return m.practice_pairs + m.main_pairs if m.kind == FOOLED else 2 * m.pairs_per_split * len(m.tests)


def instructions(m: Manifest) -> str:
  """The intro's text: how many pairs, how each is shown and answered, and about how long it all takes."""
  total = num_pairs(m)
  seconds = total * (m.display_ms / 1000 + _SECONDS_PER_PAIR) + m.practice_pairs * _FEEDBACK_SECONDS
  minutes = max(1, math.ceil(seconds / 60))
  practice = (
    f' (the first {m.practice_pairs} are practice: you are told after each whether you were right)'
    if m.practice_pairs
    else ''
  )
  shown = (
    f'Each pair is shown for {m.display_ms / 1000:g} s and then hidden; then choose'
    if m.display_ms
    else 'Each pair stays on screen until you choose'
  )
  return (
    f'You will see {total} pairs of images, one pair at a time{practice}. {shown} an image with a click or tap, '
    f'or the left and right arrow keys. It takes about {minutes} minutes.'
    # A reload shows the current pair again, which voids a timed session (storage.Store.next_trial).
    + (' Please do not reload the page: a pair shown twice voids the session.' if m.display_ms else '')
  )
