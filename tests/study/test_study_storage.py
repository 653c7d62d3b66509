"""The study's database rules, straight through common.study.storage (the server adds only HTTP around them), and
who may take part (common.study.access: invitations, approved completions, same-origin requests, rate limits)."""

import sqlite3
import time

import pytest

from common.errors import UserError
from common.study import access, manifest, protocols, report, storage
from tests.study.helpers import look, make_fooled


def _truth(store, trial_token):
  row = store.db.execute('SELECT left_label FROM trials WHERE token = ?', (trial_token,)).fetchone()
  return 'left' if row[0] == manifest.TRUTH else 'right'


def _refused(status, fn, *args):
  with pytest.raises(storage.Refused) as e:
    fn(*args)
  assert e.value.status == status, e.value.message
  return e.value.message


def test_answers_are_validated(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=100)
  store = storage.Store(str(tmp_path / 's'), m, seed=0)
  a, b = store.start('alice')['token'], store.start('bob')['token']
  trial = store.next_trial(a)
  other = store.next_trial(b)
  assert trial['position'] == 0 and trial['phase'] == protocols.PRACTICE
  # An answer to a pair whose images the page never fetched.
  assert 'not been shown' in _refused(409, store.answer, a, trial['trial'], 'left', 100)
  look(store, trial)
  look(store, other)
  # Answered before the pair could have been shown, or claiming a display time the protocol does not allow.
  _refused(422, store.answer, a, trial['trial'], 'left', 100)
  time.sleep(0.12)
  _refused(422, store.answer, a, trial['trial'], 'left', 20)
  _refused(422, store.answer, a, trial['trial'], 'left', 5000)
  # Forged or foreign: a made-up session, another session's pair, a pair further on, bad values.
  _refused(403, store.answer, 'f' * 32, trial['trial'], 'left', 100)
  _refused(403, store.answer, '../etc', trial['trial'], 'left', 100)
  _refused(409, store.answer, a, other['trial'], 'left', 100)
  later = store.db.execute(
    'SELECT t.token FROM trials t JOIN sessions s ON s.id = t.session_id WHERE s.token = ? AND t.position = 3', (a,)
  ).fetchone()[0]
  _refused(409, store.answer, a, later, 'left', 100)
  _refused(400, store.answer, a, trial['trial'], 'middle', 100)
  _refused(400, store.answer, a, trial['trial'], 'left', float('nan'))
  _refused(400, store.answer, a, trial['trial'], 'left', True)
  _refused(400, store.answer, a, trial['trial'], 'left', 10**400)  # float() overflows
  result = store.answer(a, trial['trial'], _truth(store, trial['trial']), 104.5)
  assert result == {'done': False, 'feedback': 'right', 'camera': _truth(store, trial['trial'])}
  # One answer per pair: a replay is refused and nothing changes.
  assert 'already answered' in _refused(409, store.answer, a, trial['trial'], 'left', 104.5)
  rows = store.db.execute('SELECT position, display_ms, server_ms FROM answers').fetchall()
  assert len(rows) == 1 and rows[0][0] == 0 and rows[0][1] == 104.5 and rows[0][2] >= 100
  # A wrong practice answer gets its feedback.
  second = store.next_trial(a)
  look(store, second)
  time.sleep(0.12)
  wrong = 'left' if _truth(store, second['trial']) == 'right' else 'right'
  assert store.answer(a, second['trial'], wrong, 100)['feedback'] == 'wrong'
  store.close()


def test_images_only_for_the_current_pair(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=0)
  store = storage.Store(str(tmp_path / 's'), m, seed=0)
  token = store.start('w')['token']
  trial = store.next_trial(token)
  left = trial['left'].removeprefix('/img/')
  row = store.db.execute(
    'SELECT left_image, left_token, right_token FROM trials WHERE token = ?', (trial['trial'],)
  ).fetchone()
  assert store.image(left) == row['left_image'] and left != row['left_image']
  assert store.image(left) is None  # served once
  assert store.image(row['right_token']) is not None
  assert store.image(row['left_image']) is None  # a manifest id is not a token
  nxt = store.db.execute('SELECT left_token FROM trials WHERE position = 1').fetchone()[0]
  assert store.image(nxt) is None  # not yet
  store.answer(token, trial['trial'], 'left', 0)
  assert store.image(left) is None  # no longer
  assert store.image('../manifest.json') is None and store.image(None) is None
  store.close()


def test_each_image_once_soon_and_a_reshown_pair_voids_the_session(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=100, workers_per_arm=5)
  store = storage.Store(str(tmp_path / 's'), m, seed=0)
  token = store.start('w')['token']
  trial = store.next_trial(token)
  # Fetched 3 s after the pair was issued: refused (the page fetches at once; later is a second look).
  store.db.execute('UPDATE trials SET issued = issued - 3 WHERE token = ?', (trial['trial'],))
  assert store.image(trial['left'].removeprefix('/img/')) is None
  # Issued again (the page retries): the same tokens, nothing was served, so nothing is flagged.
  again = store.next_trial(token)
  assert again['left'] == trial['left'] and store.status()['answers'] == 0
  look(store, again)
  # A reload after the images were served shows the pair again: fresh tokens (the old ones are spent), flagged.
  reloaded = store.next_trial(token)
  assert reloaded['trial'] == again['trial'] and reloaded['left'] != again['left']
  assert store.image(again['left'].removeprefix('/img/')) is None
  assert store.db.execute("SELECT reshown FROM sessions WHERE worker = 'w'").fetchone()[0] == 1
  look(store, reloaded)
  time.sleep(0.11)
  store.answer(token, reloaded['trial'], 'left', 100)
  while not (trial := store.next_trial(token))['done']:
    look(store, trial)
    store.db.execute('UPDATE trials SET issued = issued - 1 WHERE token = ?', (trial['trial'],))
    result = store.answer(token, trial['trial'], _truth(store, trial['trial']), 100)
  assert result['done'] and 'code' in result  # the worker still gets a code...
  assert store.db.execute("SELECT status FROM sessions WHERE worker = 'w'").fetchone()[0] == storage.DISCARDED
  store.close()
  rows = report.fooled_rows(str(tmp_path / 's'), m)  # ...but the session does not count, and the report says why
  assert sum(r['valid'] for r in rows.values()) == 0 and sum(r['reshown'] for r in rows.values()) == 1
  assert '- 1 sessions were shown a pair again' in report.summary(str(tmp_path / 's'))


def _finish(store, token, miss_golden=False):
  while not (trial := store.next_trial(token))['done']:
    kind = store.db.execute('SELECT kind FROM trials WHERE token = ?', (trial['trial'],)).fetchone()[0]
    truth = _truth(store, trial['trial'])
    choice = ('right' if truth == 'left' else 'left') if miss_golden and kind == protocols.GOLDEN else truth
    look(store, trial)
    result = store.answer(token, trial['trial'], choice, 0)
  return result


def test_assignment_until_enough_valid_workers_per_algorithm(tmp_path):
  m = make_fooled(tmp_path / 's', arms=('A', 'B', 'C'), workers_per_arm=2, display_ms=0)
  store = storage.Store(str(tmp_path / 's'), m, seed=0, abandon_after_s=3600)
  # Two inattentive workers are discarded and do not fill their arm.
  for k in range(2):
    assert 'code' in _finish(store, store.start(f'careless{k}')['token'], miss_golden=True)
  arms = []
  for k in range(6):
    session = store.start(f'w{k}')
    arms.append(store.db.execute('SELECT arm FROM sessions WHERE token = ?', (session['token'],)).fetchone()[0])
    assert session['total'] == 55 and session['practice'] == 10
    _finish(store, session['token'])
  assert sorted(arms) == ['A', 'A', 'B', 'B', 'C', 'C']
  status = store.status()
  assert {a: s[storage.COMPLETE] for a, s in status['arms'].items()} == {'A': 2, 'B': 2, 'C': 2}
  assert sum(s[storage.DISCARDED] for s in status['arms'].values()) == 2
  assert status['answers'] == 8 * 55
  assert 'complete' in _refused(410, store.start, 'late')
  store.close()


def test_active_sessions_hold_places_until_abandoned(tmp_path):
  m = make_fooled(tmp_path / 's', arms=('A', 'B'), workers_per_arm=5, display_ms=0)
  store = storage.Store(str(tmp_path / 's'), m, seed=0, abandon_after_s=3600)
  arms = [
    store.db.execute('SELECT arm FROM sessions WHERE token = ?', (store.start(f'w{k}')['token'],)).fetchone()[0]
    for k in range(4)
  ]
  assert sorted(arms) == ['A', 'A', 'B', 'B']  # in progress, they balance the arms
  store.abandon_after_s = 0
  store.db.execute("UPDATE sessions SET status = 'complete' WHERE worker = 'w0'")
  first = store.db.execute("SELECT arm FROM sessions WHERE worker = 'w0'").fetchone()[0]
  arm = store.db.execute('SELECT arm FROM sessions WHERE token = ?', (store.start('w9')['token'],)).fetchone()[0]
  assert arm != first  # abandoned sessions no longer count; the other arm has fewer valid ones
  store.close()


def test_a_session_holds_its_place_from_its_start_until_abandoned(tmp_path):
  m = make_fooled(
    tmp_path / 's',
    arms=('A', 'B', 'C', 'D'),
    workers_per_arm=2,
    display_ms=0,
    practice_pairs=2,
    main_pairs=6,
    golden_pairs=1,
  )
  store = storage.Store(str(tmp_path / 's'), m, seed=0, abandon_after_s=3600)
  tokens = [store.start(f'w{k}')['token'] for k in range(8)]
  arm = lambda worker: store.db.execute('SELECT arm FROM sessions WHERE worker = ?', (worker,)).fetchone()[0]
  assert sorted(arm(f'w{k}') for k in range(8)) == ['A', 'A', 'B', 'B', 'C', 'C', 'D', 'D']
  assert 'in progress' in _refused(429, store.start, 'w8')  # 8 places, 8 sessions in progress: none left
  store.db.execute("UPDATE sessions SET updated = updated - 7200 WHERE worker = 'w3'")  # abandoned
  store.start('w9')
  assert arm('w9') == arm('w3')  # its place is released to the next worker
  for token in tokens[:3] + tokens[4:]:
    _finish(store, token)
  assert 'in progress' in _refused(429, store.start, 'w10')  # 7 valid and w9 in progress
  _finish(
    store, store.start('w9', store.db.execute("SELECT token FROM sessions WHERE worker = 'w9'").fetchone()[0])['token']
  )
  assert 'complete' in _refused(410, store.start, 'w10')
  assert {a: s[storage.COMPLETE] for a, s in store.status()['arms'].items()} == {'A': 2, 'B': 2, 'C': 2, 'D': 2}
  store.close()


def test_sessions_survive_reopening_and_workers_take_part_once(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=0)
  store = storage.Store(str(tmp_path / 's'), m, seed=0)
  token = store.start('w')['token']
  for _ in range(7):
    trial = store.next_trial(token)
    look(store, trial)
    store.answer(token, trial['trial'], 'left', 0)
  store.close()  # as a killed server: everything acknowledged was committed
  store = storage.Store(str(tmp_path / 's'), m)
  assert 'already taken part' in _refused(409, store.start, 'w')
  assert 'already taken part' in _refused(409, store.start, 'w', '0' * 32)
  resumed = store.start('w', token)
  assert resumed['token'] == token and resumed['answered'] == 7
  assert store.next_trial(token)['position'] == 7
  code = _finish(store, token)['code']
  # Its own token shows a finished session's code again (a reloaded end page); no token, no code.
  again = store.start('w', token)
  assert again['done'] and again['code'] == code and again['answered'] == 55
  assert 'already taken part' in _refused(409, store.start, 'w')
  assert store.next_trial(token)['done']
  for bad in ('', 'a b', 'x' * 200, '../w', None, 7, '<script>'):
    _refused(400, store.start, bad)
  store.close()
  db = sqlite3.connect(tmp_path / 's' / storage.DATABASE)
  assert db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
  assert db.execute('SELECT COUNT(*), COUNT(DISTINCT trial_id) FROM answers').fetchone() == (55, 55)


def test_registry_lets_a_worker_into_one_study_only(tmp_path):
  registry = str(tmp_path / 'workers.sqlite')
  one = storage.Store(str(tmp_path / 'one'), make_fooled(tmp_path / 'one', display_ms=0), registry=registry)
  two = storage.Store(str(tmp_path / 'two'), make_fooled(tmp_path / 'two', display_ms=0), registry=registry)
  one.start('w')
  assert 'one of our studies' in _refused(409, two.start, 'w')
  two.start('v')
  one.close()
  two.close()


def test_worker_ids_are_one_person_in_any_case_and_new_sessions_are_rate_limited(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=0, workers_per_arm=50)
  store = storage.Store(str(tmp_path / 's'), m, seed=0, new_sessions_per_minute=3)
  token = store.start('victim1', client='10.0.0.1')['token']
  assert 'already taken part' in _refused(409, store.start, 'VICTIM1', None, '', '10.0.0.2')
  assert store.start('Victim1', token)['token'] == token  # the same session, resumed under any case
  store.start('w2', client='10.0.0.1')
  store.start('w3', client='10.0.0.1')
  assert 'Too many new sessions' in _refused(429, store.start, 'w4', None, '', '10.0.0.1')
  store.start('w4', client='10.0.0.2')  # another address is not held back
  assert store.db.execute('SELECT worker FROM sessions ORDER BY id').fetchall()[0][0] == 'victim1'
  limit = access.RateLimit(2)
  assert [limit.allow('a', t) for t in (0, 1, 2, 59.9, 60.5)] == [True, True, False, False, True]
  store.close()


def test_invitations_origins_and_approved_completions(tmp_path):
  secret = access.secret_file(str(tmp_path), access.INVITE_SECRET)
  assert access.secret_file(str(tmp_path), access.INVITE_SECRET) == secret  # kept
  links = access.invitations(str(tmp_path), 3, 'https://study.example.org/')
  assert len(set(links)) == 3 and all(link.startswith('https://study.example.org/?worker=p') for link in links)
  worker, sig = (part.split('=')[1] for part in links[0].split('?')[1].split('&'))
  assert access.invited(secret, worker, sig) and access.invited(secret, worker.upper(), sig)
  assert not access.invited(secret, worker + 'x', sig) and not access.invited(secret, worker, sig[:-1] + 'g')
  assert not access.invited(secret, worker, None) and not access.invited(secret, worker, 'é' * 32)
  assert not access.invited(secret, '\ud800', sig)
  assert not access.invited('another study', worker, sig)
  host = {'host': 'study.example.org'}
  assert access.same_origin(host)  # no Origin: not a browser's cross-site request
  assert access.same_origin(host | {'origin': 'https://study.example.org', 'sec-fetch-site': 'same-origin'})
  for bad in (
    {'origin': 'https://evil.example'},
    {'origin': 'null'},
    {'sec-fetch-site': 'cross-site'},
    {'origin': 'http://[::1'},
  ):
    assert not access.same_origin(host | bad), bad
  assert access.same_origin(
    {'host': '127.0.0.1:8080', 'x-forwarded-host': 'study.example.org', 'origin': 'https://study.example.org'}
  )  # behind a reverse proxy
  path = tmp_path / 'approved.csv'
  path.write_text('WorkerId,Code,Status\nAbc1, 0a1b2c3d4e5f ,Approved\nxyz,FFFFFFFFFFFF,Approved\n')
  assert access.read_approved(str(path)) == {('workerid', 'CODE'), ('abc1', '0A1B2C3D4E5F'), ('xyz', 'FFFFFFFFFFFF')}
  with pytest.raises(UserError, match='does not exist'):
    access.read_approved(str(tmp_path / 'missing.csv'))


def test_an_older_database_is_refused_in_one_line(tmp_path):
  m = make_fooled(tmp_path / 's', display_ms=0)
  db = sqlite3.connect(tmp_path / 's' / storage.DATABASE)
  db.execute('CREATE TABLE sessions(id INTEGER PRIMARY KEY, token TEXT)')  # without the columns added since
  db.close()
  with pytest.raises(UserError, match='comes from an older version of the study app; build a new study'):
    storage.Store(str(tmp_path / 's'), m)
