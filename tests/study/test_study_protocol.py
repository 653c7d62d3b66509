"""The study's protocols, manifest and report, without a server: session composition, arm assignment, statistics."""

import collections
import os
import struct

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from common.study import manifest, protocols, report, storage
from tests.study.helpers import look, make_fooled, make_preference


def test_fooled_session_is_papers_protocol(tmp_path):
  m = make_fooled(tmp_path / 's', arms=('A', 'B'), num_examples=70)
  by_id = {i: (e.index, label) for e in m.examples for label, i in e.images.items()}
  rng = np.random.default_rng(0)
  golden_at = collections.Counter()
  truth_left = 0
  practice_orders = set()
  for _ in range(300):
    trials = protocols.compose_session(m, 'A', rng)
    assert len(trials) == 55
    practice, main = trials[:10], trials[10:]
    assert all(t.phase == protocols.PRACTICE and t.kind == protocols.PRACTICE for t in practice)
    assert sorted(t.example for t in practice) == list(range(10))
    practice_orders.add(tuple(t.example for t in practice))
    assert all(t.phase == protocols.MAIN for t in main)
    kinds = collections.Counter(t.kind for t in main)
    assert kinds == {protocols.COUNTED: 40, protocols.GOLDEN: 5}
    # Every pair shows a different example, none of the practice ones: the true image never repeats.
    assert len({t.example for t in trials}) == 55
    for k, t in enumerate(trials):
      labels = {t.left_label, t.right_label}
      assert labels == {manifest.TRUTH, 'Bicubic' if t.kind == protocols.GOLDEN else 'A'}
      assert by_id[t.left_image] == (t.example, t.left_label) and by_id[t.right_image] == (t.example, t.right_label)
      golden_at[k - 10] += t.kind == protocols.GOLDEN
      truth_left += protocols.truth_side(t.left_label, t.right_label) == protocols.LEFT
  # Golden questions at random positions: each of the 45 positions holds 5/45 of them, within sampling noise
  # (300 sessions: expected 33.3 per position, sd 5.4).
  assert set(golden_at) == set(range(-10, 45))
  assert all(10 <= golden_at[p] <= 60 for p in range(45)), golden_at
  assert abs(truth_left / (300 * 55) - 0.5) < 0.02
  assert len(practice_orders) > 290  # the practice examples in an order of each session's own (10! orders)


def test_fooled_needs_enough_examples_and_the_golden_row(tmp_path):
  with pytest.raises(UserError, match='fewer than practice_pairs'):
    make_fooled(tmp_path / 'a', num_examples=54)
  assert not os.path.exists(tmp_path / 'a')  # A failed build leaves nothing.
  with pytest.raises(UserError, match='No images for'):
    manifest.write_fooled(
      str(tmp_path / 'b'),
      np.zeros((60, 4, 4, 3), np.uint8),
      {'A': np.zeros((60, 4, 4, 3), np.uint8)},
      scale=1,
      arms=['A'],
    )


def test_default_arms_are_the_papers_four_and_bicubic_is_refused(tmp_path):
  from launch.study_build import fooled_arms

  made = ['Bicubic', 'NN', 'Regression', 'tau=1.0', 'tau=1.1', 'tau=1.2', 'greedy']
  assert fooled_arms([], made, []) == (['Regression', 'tau=1.0', 'tau=1.1', 'tau=1.2'], [])
  arms, warnings = fooled_arms(['NN', 'tau=1.0'], made, [])
  assert (
    arms == ['NN', 'tau=1.0'] and len(warnings) == 1 and warnings[0].startswith('Warning: NN outputs are themselves')
  )
  with pytest.raises(UserError, match=r"\['tau=9'\] are not among"):
    fooled_arms(['tau=9'], made, [])
  # A Bicubic arm's counted pairs are golden ones: the manifest itself refuses it.
  with pytest.raises(UserError, match="'Bicubic', the golden questions' algorithm, cannot also be studied"):
    make_fooled(tmp_path / 'b', arms=('A', 'Bicubic'))
  assert not os.path.exists(tmp_path / 'b')


def test_default_scale_shows_at_least_128_css_pixels():
  assert manifest.display_scale(32, 32, None) == (4, [])  # PRSR's faces at 128x128
  assert manifest.display_scale(128, 128, None) == (1, [])  # SRIM's outputs as they are
  assert manifest.display_scale(24, 30, None) == (6, [])  # a small run's 24-pixel outputs: 144x180
  scale, warnings = manifest.display_scale(24, 24, 1)  # asked for: kept, and warned
  assert scale == 1 and warnings == [
    'Warning: images are shown at 24x24 CSS pixels, under 128: too small to judge; --scale=6 shows them at 128 or more.'
  ]


def test_existing_study_is_never_overwritten(tmp_path):
  make_fooled(tmp_path / 's')
  with pytest.raises(UserError, match='already holds a study'):
    make_fooled(tmp_path / 's')


def _png_chunks(data: bytes) -> list[bytes]:
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  chunks, pos = [], 8
  while pos < len(data):
    length, kind = struct.unpack('>I4s', data[pos : pos + 8])
    chunks.append(kind)
    pos += 12 + length
  return chunks


def test_images_are_opaque_same_size_and_bare(tmp_path):
  m = make_fooled(tmp_path / 's', size=8, scale=4)
  assert m.image_size == (32, 32)
  files = sorted(os.listdir(tmp_path / 's' / manifest.IMAGES))
  assert len(files) == len(m.image_ids()) == 60 * 4
  # The same byte length for every image, whatever its content: the size of a response tells nothing.
  assert len({os.path.getsize(tmp_path / 's' / manifest.IMAGES / name) for name in files}) == 1
  flat, noise = np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  assert len(manifest.encode_png(flat, 4)) == len(manifest.encode_png(noise, 4))
  for name in files:
    assert len(name) == 36 and name.endswith('.png') and all(c in '0123456789abcdef' for c in name[:32])
    with open(tmp_path / 's' / manifest.IMAGES / name, 'rb') as f:
      data = f.read()
    assert set(_png_chunks(data)) == {b'IHDR', b'IDAT', b'IEND'}
    width, height, depth, colour = struct.unpack('>IIBB', data[16:26])
    assert (width, height, depth, colour) == (32, 32, 8, 2)  # 8-bit RGB, every image
  # Enlarged by nearest neighbour: each source pixel is a 4x4 block.
  e = m.examples[0]
  big = np.asarray(Image.open(manifest.image_path(str(tmp_path / 's'), e.images[manifest.TRUTH])))
  assert np.array_equal(big, np.repeat(np.repeat(big[::4, ::4], 4, 0), 4, 1))
  with pytest.raises(ValueError):
    manifest.image_path(str(tmp_path / 's'), '../manifest')


def test_choose_arm_fills_the_emptiest_until_full():
  m = manifest.Manifest(
    kind='fooled',
    question='q',
    display_ms=0,
    scale=1,
    image_size=(1, 1),
    arms=('A', 'B', 'C'),
    workers_per_arm=2,
    examples=(),
    practice_pairs=0,
    main_pairs=0,
    golden='Bicubic',
  )
  rng = np.random.default_rng(0)
  assert {protocols.choose_arm(m, {}, {}, rng) for _ in range(50)} == {'A', 'B', 'C'}
  assert protocols.choose_arm(m, {'A': 1, 'B': 1}, {}, rng) == 'C'
  assert protocols.choose_arm(m, {'A': 1}, {'B': 1, 'C': 2}, rng) in ('A', 'B')
  assert protocols.choose_arm(m, {'A': 2, 'B': 2}, {'C': 1}, rng) == 'C'  # Full arms take no one.
  assert protocols.choose_arm(m, {'A': 2, 'B': 1}, {'B': 1, 'C': 2}, rng) is None  # places held by active sessions
  assert protocols.choose_arm(m, {'A': 2, 'B': 2, 'C': 2}, {}, rng) is None


def test_preference_session_is_srim_protocol(tmp_path):
  m = make_preference(tmp_path / 'p', classes_per_split=12, per_class=2)
  rng = np.random.default_rng(1)
  seen_first, test_orders = 0, collections.Counter()
  for _ in range(100):
    trials = protocols.compose_session(m, 'all', rng)
    assert len(trials) == 60
    order = tuple(trials[20 * k].test for k in range(3))
    assert sorted(order) == sorted(f'{a} vs {b}' for a, b in manifest.SRIM_TESTS)
    test_orders[order] += 1
    for k in range(3):
      block = trials[20 * k : 20 * (k + 1)]
      a, b = block[0].test.split(' vs ')
      assert {t.test for t in block} == {f'{a} vs {b}'}
      assert all({t.left_label, t.right_label} == {a, b} for t in block)
      for split in ('seen', 'unseen'):
        classes = [m.examples[t.example].group for t in block if t.split == split]
        assert len(classes) == 10 and len(set(classes)) == 10  # each pair from a different class
        assert all(m.examples[t.example].split == split for t in block if t.split == split)
      seen_first += all(t.split == 'seen' for t in block[:10])
  assert seen_first < 5  # seen and unseen mixed, not in blocks
  assert len(test_orders) == 6 and min(test_orders.values()) >= 5  # the three tests in each of their 6 orders


def test_instructions_give_the_pairs_and_the_duration(tmp_path):
  fooled = make_fooled(tmp_path / 'f', display_ms=1000)
  # 55 pairs x (1 s shown + 3 s) + 10 practice x 1.5 s of feedback = 235 s: about 4 minutes.
  assert protocols.instructions(fooled) == (
    'You will see 55 pairs of images, one pair at a time (the first 10 are practice: you are told after each '
    'whether you were right). Each pair is shown for 1 s and then hidden; then choose an image with a click or '
    'tap, or the left and right arrow keys. It takes about 4 minutes. Please do not reload the page: a pair shown '
    'twice voids the session.'
  )
  preference = make_preference(tmp_path / 'p')
  text = protocols.instructions(preference)  # 60 pairs x 3 s: 3 minutes, shown until answered (not "hidden")
  assert text.startswith('You will see 60 pairs of images, one pair at a time. Each pair stays on screen until')
  assert text.endswith('It takes about 3 minutes.') and 'hidden' not in text and 'reload' not in text


def _scripted_store(tmp_path, m, scripts):
  """Runs sessions straight through a Store: scripts[worker] = choose(trial row) -> side."""
  store = storage.Store(str(tmp_path / 's'), m, seed=0)
  for worker, choose in scripts.items():
    token = store.start(worker)['token']
    while not (trial := store.next_trial(token))['done']:
      look(store, trial)
      row = store.db.execute('SELECT * FROM trials WHERE token = ?', (trial['trial'],)).fetchone()
      store.answer(token, trial['trial'], choose(row), 0)
  return store


def _fool(k):
  """Chooses the algorithm's image in the first k counted pairs, the truth otherwise (golden always right)."""
  state = {'counted': 0}

  def choose(row):
    truth = 'left' if row['left_label'] == manifest.TRUTH else 'right'
    other = 'right' if truth == 'left' else 'left'
    if row['kind'] != protocols.COUNTED:
      return truth
    state['counted'] += 1
    return other if state['counted'] <= k else truth

  return choose


def test_fooled_report_counts_and_interval(tmp_path):
  m = make_fooled(tmp_path / 's', arms=('A',), workers_per_arm=4, display_ms=0)
  miss_golden = lambda row: (
    ('right' if row['left_label'] == manifest.TRUTH else 'left') if row['kind'] == (protocols.GOLDEN) else 'left'
  )
  store = _scripted_store(tmp_path, m, {'w1': _fool(4), 'w2': _fool(8), 'w3': _fool(12), 'bad': miss_golden})
  codes = dict(store.db.execute('SELECT worker, code FROM sessions').fetchall())
  store.close()
  # A crowd platform approved w1 and w3 only (and listed someone who never took part): w2 is left out.
  approved = {('w1', codes['w1']), ('w3', codes['w3']), ('ghost', 'ABC')}
  only = report.fooled_rows(str(tmp_path / 's'), m, approved=approved)['A']
  assert (only['valid'], only['unapproved'], only['answers'], only['fooled']) == (2, 1, 80, 16)
  assert report.summary(str(tmp_path / 's'), approved).endswith(
    '- Approved completions only: 2 finished sessions on the list count; 1 finished sessions not on it are left out.\n'
  )
  rows = report.fooled_rows(str(tmp_path / 's'), m)
  assert rows['A']['valid'] == 3 and rows['A']['discarded'] == 1 and rows['A']['incomplete'] == 0
  assert rows['A']['answers'] == 120 and rows['A']['fooled'] == 24
  assert rows['A']['rate'] == pytest.approx(0.2)
  # Bootstrap over 3 workers with 4, 8, 12 fooled of 40: the 27 equally likely resamples have mean rate 0.1 (all
  # three the first worker) with probability 1/27 > 2.5%, and 0.3 likewise, so the 95% interval is [0.1, 0.3].
  assert (rows['A']['lo'], rows['A']['hi']) == pytest.approx((0.1, 0.3))
  # With a fourth worker at 8 (256 resamples): P(mean = 0.1) = 1/256 < 2.5% < P(mean <= 0.125) = 9/256, so
  # lo = 0.125, and hi = 0.275 by symmetry.
  lo, hi = report.bootstrap_interval(np.array([4, 8, 12, 8]), np.full(4, 40), np.random.default_rng(0))
  assert (lo, hi) == pytest.approx((0.125, 0.275))
  lo, hi = report.bootstrap_interval(np.array([10, 10]), np.array([40, 40]), np.random.default_rng(0))
  assert lo == hi == 0.25
  ratings = report.image_ratings(str(tmp_path / 's'))
  assert sum(n for _, n in ratings.values()) == 120 and sum(c for c, _ in ratings.values()) == 24
  figure = report.figure7(str(tmp_path / 's'), m, per_side=3)
  assert figure.ndim == 3 and figure.shape[1] > 7 * m.image_size[1]
  # 3 valid workers: the report says the interval is too narrow to trust.
  assert report.summary(str(tmp_path / 's')).endswith(
    '- Warning: fewer than 10 valid workers for A (3): the bootstrap interval then covers the true rate less often '
    'than 95% (0.87-0.91 of the time at 10 workers, 0.74-0.88 at 3, in simulation).\n'
  )
  assert 'Warning' not in report.fooled_markdown({'A': rows['A'] | {'valid': 10}})


TABLE1 = """| Method | pSNR | SSIM |
|---|---|---|
| Bicubic | 31.81 | 0.770 |
| NN | 24.44 | 0.500 |
| tau=1.0 | 17.52 | 0.293 |

- 128 examples.
"""


PROVENANCE = [
  "100 examples of the 'eval' split of celeb_a; NN searched 512 training examples.",
  'Samples and NLL from the pixel recursive model of /abs/runs/celeba at step 5.',
]


def test_report_refuses_a_table1_of_other_examples(tmp_path):
  make_fooled(tmp_path / 's', arms=('tau=1.0',), display_ms=0, source={'table1': PROVENANCE})
  run = tmp_path / 'run'
  run.mkdir()
  # The table of 128 examples with NN over 20,000 (launch/evaluate.py's defaults) is not the study's 100 and 512.
  other = TABLE1.replace(
    '- 128 examples.',
    "- 128 examples of the 'eval' split of celeb_a; NN searched 20000 training examples.\n"
    '- Samples and NLL from the pixel recursive model of runs/celeba at step 5.',
  )
  (run / 'table1.md').write_text(other)
  with pytest.raises(UserError, match=r'table1.md describes other examples or models than the study \(the study: "100'):
    report.write(str(tmp_path / 's'), str(run))
  assert (run / 'table1.md').read_text() == other and not (tmp_path / 's' / 'report.md').exists()
  # The same examples and model (its path written relative there): merged.
  same = other.replace('128 examples', '100 examples').replace('20000', '512')
  (run / 'table1.md').write_text(same)
  assert str(run / 'table1.md') in report.write(str(tmp_path / 's'), str(run))
  assert '| tau=1.0 | 17.52 | 0.293 | n/a |' in (run / 'table1.md').read_text()
  # A study without provenance (built before it was recorded) cannot vouch for any table.
  bare = make_fooled(tmp_path / 'bare', arms=('tau=1.0',), display_ms=0)
  with pytest.raises(UserError, match='records no table 1 provenance'):
    report.check_provenance(same, bare, 'table1.md')


def test_merge_table1_adds_then_replaces_the_column():
  rows = {
    'tau=1.0': {'answers': 400, 'rate': 0.3125, 'lo': 0.25, 'hi': 0.375, 'valid': 10},
    'NN': {'answers': 400, 'rate': 0.05, 'lo': 0.0375, 'hi': 0.0625, 'valid': 10},
  }
  merged = report.merge_table1(TABLE1, rows)
  assert merged.split('\n')[:5] == [
    '| Method | pSNR | SSIM | % Fooled |',
    '|---|---|---|---|',
    '| Bicubic | 31.81 | 0.770 | n/a |',
    '| NN | 24.44 | 0.500 | 5.0 [3.8, 6.2] |',
    '| tau=1.0 | 17.52 | 0.293 | 31.2 [25.0, 37.5] |',
  ]
  assert '- 128 examples.' in merged and merged.count('- % Fooled') == 1
  rows['NN']['rate'] = 0.1
  again = report.merge_table1(merged, rows)
  assert again.split('\n')[3] == '| NN | 24.44 | 0.500 | 10.0 [3.8, 6.2] |'
  assert again.count('% Fooled |') == 1 and again.count('- % Fooled') == 1


def test_preference_table_by_hand(tmp_path):
  m = make_preference(tmp_path / 's', classes_per_split=10, per_class=1)

  def prefers(method, seen_rate_of_first):
    """Chooses `method` when shown; in other tests the test's first method on seen pairs, its second otherwise."""

    def choose(row):
      labels = (row['left_label'], row['right_label'])
      if method in labels:
        return 'left' if labels[0] == method else 'right'
      first = row['test'].split(' vs ')[0]
      want = first if row['split'] == 'seen' else [x for x in labels if x != first][0]
      return 'left' if labels[0] == want else 'right'

    return choose

  _scripted_store(tmp_path, m, {'p1': prefers('SRIM', 1), 'p2': prefers('Bicubic', 1)}).close()
  table = report.preference_rows(str(tmp_path / 's'), m)
  # Test 1 (SRIM vs SRGAN): p1 always SRIM (1.0); p2 (no Bicubic shown) SRIM on seen, SRGAN on unseen.
  assert table[('seen', 'SRIM vs SRGAN')]['SRIM'] == pytest.approx((1.0, 0.0))
  assert table[('unseen', 'SRIM vs SRGAN')]['SRIM'] == pytest.approx((0.5, np.std([1, 0], ddof=1)))
  assert table[('all', 'SRIM vs SRGAN')]['SRGAN'] == pytest.approx((0.25, np.std([1, 0.5], ddof=1)))
  # Test 3 (SRIM vs Bicubic): p1 SRIM, p2 Bicubic.
  assert table[('all', 'SRIM vs Bicubic')]['Bicubic'] == pytest.approx((0.5, np.std([0, 1], ddof=1)))
  text = report.preference_markdown(table, m, 2)
  assert text.split('\n')[2].startswith('| Seen classes | 1.000 ± 0.000 | 0.000 ± 0.000 |')
