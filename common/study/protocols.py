"""What a session shows, in order, and which algorithm a new session studies.

Fooled (PRSR section 5.3): `practice_pairs` pairs with feedback (the first examples of the study, truth against the
session's algorithm; not counted), then `main_pairs` pairs of distinct other examples, `golden_pairs` of them at
random positions pitting `golden` (bicubic) against the truth; the rest are counted. No example appears twice in a
session, so a worker never sees the same true image twice. Sides are drawn per pair.

Preference (SRIM Table 2): for each test (A vs B), `pairs_per_split` classes seen in training and as many unseen, each
pair from a different class (a random example of it), the test's pairs in random order with seen and unseen mixed,
sides drawn per pair; the tests follow one another.
"""

import dataclasses

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
  practice = [_pair(rng, e, TRUTH, arm, phase=PRACTICE, kind=PRACTICE) for e in m.examples[: m.practice_pairs]]
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
  for a, b in m.tests:
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
  """The arm for a new session: among arms short of `workers_per_arm` valid sessions, one with the fewest valid plus
  recently active sessions (ties at random); None when every arm has enough, and the study is full."""
  open_arms = [a for a in m.arms if valid.get(a, 0) < m.workers_per_arm]
  if not open_arms:
    return None
  load = np.array([valid.get(a, 0) + active.get(a, 0) for a in open_arms])
  return open_arms[rng.choice(np.flatnonzero(load == load.min()))]


def truth_side(left_label: str, right_label: str) -> str | None:
  """The side of the true image (None for a preference pair)."""
  return LEFT if left_label == TRUTH else RIGHT if right_label == TRUTH else None
