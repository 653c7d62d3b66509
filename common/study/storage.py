"""The study's database: SQLite in WAL mode beside the manifest, every answer committed before it is acknowledged.

A session is composed whole when it starts (its trials, sides and per-trial random image tokens are rows), so a
server killed at any point and restarted resumes it where its last committed answer left it. Every rule of the
protocol is checked here, inside one transaction per request: the session token, the trial belongs to the session
and is its next unanswered one, one answer per trial (also a primary key), the display time, and that both images
were served, each once and within FETCH_WINDOW_S of the pair's issue. A timed pair shown again (a reload) voids its
session (`reshown`). One connection behind a lock serialises the writes, which SQLite would serialise anyway.
"""

import contextlib
import csv
import io
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import urllib.parse
from typing import TypeGuard

import numpy as np

from common.errors import UserError
from common.study import access, protocols
from common.study.manifest import FOOLED, Manifest

DATABASE = 'study.sqlite'
WORKER_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}')
TOKEN = re.compile(r'[0-9a-f]{32}')
ACTIVE, COMPLETE, DISCARDED = 'active', 'complete', 'discarded'
# Seconds from a pair's issue within which its images are served: the page fetches them at once, so a later fetch
# is someone looking again.
FETCH_WINDOW_S = 2.0
_LEFT, _RIGHT = 1, 2  # trials.fetched bits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions(
  id INTEGER PRIMARY KEY, token TEXT UNIQUE NOT NULL, worker TEXT UNIQUE NOT NULL, arm TEXT NOT NULL,
  status TEXT NOT NULL, golden_missed INTEGER NOT NULL DEFAULT 0, num_trials INTEGER NOT NULL,
  answered INTEGER NOT NULL DEFAULT 0, code TEXT NOT NULL, user_agent TEXT, created REAL NOT NULL,
  updated REAL NOT NULL, finished REAL, reshown INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS trials(
  id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id), position INTEGER NOT NULL,
  token TEXT UNIQUE NOT NULL, phase TEXT NOT NULL, kind TEXT NOT NULL, example INTEGER NOT NULL,
  left_label TEXT NOT NULL, right_label TEXT NOT NULL, left_image TEXT NOT NULL, right_image TEXT NOT NULL,
  left_token TEXT UNIQUE NOT NULL, right_token TEXT UNIQUE NOT NULL, test TEXT NOT NULL, split TEXT NOT NULL,
  issued REAL, shown INTEGER NOT NULL DEFAULT 0, fetched INTEGER NOT NULL DEFAULT 0, UNIQUE(session_id, position));
CREATE TABLE IF NOT EXISTS answers(
  trial_id INTEGER PRIMARY KEY REFERENCES trials(id), session_id INTEGER NOT NULL REFERENCES sessions(id),
  position INTEGER NOT NULL, choice TEXT NOT NULL, display_ms REAL NOT NULL, server_ms REAL NOT NULL,
  answered REAL NOT NULL);
"""


def finite_number(value) -> float | None:
  """A JSON number as a finite float, or None: a bool, a non-number, NaN, +-inf, or an integer too large for a
  float (json.loads reads a 400-digit number as an int, which float() refuses with OverflowError)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  try:
    number = float(value)
  except OverflowError:
    return None
  return number if math.isfinite(number) else None


def _is_token(value) -> TypeGuard[str]:
  """One of our random tokens' shape (ASCII hex, so that secrets.compare_digest accepts it)."""
  return isinstance(value, str) and TOKEN.fullmatch(value) is not None


class Refused(Exception):
  """A request the protocol refuses: the HTTP status and a message for the worker."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


def connect(path: str) -> sqlite3.Connection:
  db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
  db.execute('PRAGMA journal_mode=WAL')
  # FULL: a commit is on disk before the answer is acknowledged (kill -9 alone would not need it; a power cut does).
  db.execute('PRAGMA synchronous=FULL')
  db.execute('PRAGMA foreign_keys=ON')
  db.row_factory = sqlite3.Row
  return db


class Store:
  """The answers of one study. `registry`: an optional SQLite file shared by several studies, so that a worker takes
  part in only one of them. A session holds a place of its arm from its start; `abandon_after_s`: an active session
  idle this long no longer holds it."""

  def __init__(
    self,
    study: str,
    manifest: Manifest,
    *,
    registry: str = '',
    abandon_after_s: float = 1800,
    seed: int | None = None,
    new_sessions_per_minute: int = 0,
  ):
    self.manifest, self.abandon_after_s = manifest, abandon_after_s
    # Per client address: made-up ids from one machine (100 sessions in 1.2 s) would fill the study.
    self._new_sessions = access.RateLimit(new_sessions_per_minute)
    self._lock = threading.Lock()
    self._rng = np.random.default_rng(seed)
    self.db = connect(os.path.join(study, DATABASE))
    self.db.executescript(_SCHEMA)
    # CREATE TABLE IF NOT EXISTS leaves an older study's tables as they were, without the columns queried here.
    if not {'reshown'} <= {row[1] for row in self.db.execute('PRAGMA table_info(sessions)')}:
      self.db.close()
      raise UserError(f'{study}: its {DATABASE} comes from an older version of the study app; build a new study.')
    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('study_id', ?)", (secrets.token_hex(16),))
    self.study_id = self.db.execute("SELECT value FROM meta WHERE key = 'study_id'").fetchone()[0]
    self.registry = None
    if registry:
      self.registry = connect(registry)
      self.registry.execute(
        'CREATE TABLE IF NOT EXISTS workers(worker TEXT PRIMARY KEY, study TEXT NOT NULL, created REAL NOT NULL)'
      )

  def close(self):
    for db in (self.db, self.registry):
      if db is not None:
        db.close()

  @contextlib.contextmanager
  def _transaction(self):
    """One request's reads and writes, atomically; a refusal (any exception) rolls back all of them."""
    with self._lock:
      self.db.execute('BEGIN IMMEDIATE')
      try:
        yield self.db
      except BaseException:
        self.db.execute('ROLLBACK')
        raise
      self.db.execute('COMMIT')

  def _session(self, db, token) -> sqlite3.Row:
    if not _is_token(token):
      raise Refused(403, 'Unknown session.')
    row = db.execute('SELECT * FROM sessions WHERE token = ?', (token,)).fetchone()
    if row is None:
      raise Refused(403, 'Unknown session.')
    return row

  def start(self, worker, token=None, user_agent: str = '', client: str = '') -> dict:
    """A new session for `worker`, or the worker's session when `token` is its token. Ids are compared in lower
    case: `victim1` and `VICTIM1` are one person."""
    if not isinstance(worker, str) or not WORKER_ID.fullmatch(worker):
      raise Refused(400, 'The link needs a worker id (?worker=ID: letters, digits, _ . : @ -, at most 128).')
    worker = worker.lower()
    now = time.time()
    with self._transaction() as db:
      row = db.execute('SELECT * FROM sessions WHERE worker = ?', (worker,)).fetchone()
      if row is not None:
        # The worker's own token resumes the session, or shows a finished one's code again (a reloaded end page).
        if isinstance(token, str) and _is_token(token) and secrets.compare_digest(token, row['token']):
          return self._describe(row)
        raise Refused(409, 'This worker id has already taken part in this study; each worker takes part once.')
      if not self._new_sessions.allow(client, now):
        raise Refused(429, 'Too many new sessions from your address; please try again in a minute.')
      valid, active = self._counts(db, now)
      arm = protocols.choose_arm(self.manifest, valid, active, self._rng)
      if arm is None and all(valid.get(a, 0) >= self.manifest.workers_per_arm for a in self.manifest.arms):
        raise Refused(410, 'This study is complete; thank you for your interest.')
      if arm is None:  # the places left are held by sessions in progress, released if they are abandoned
        raise Refused(429, 'Every place is taken by a session in progress; please try again later.')
      if self.registry is not None:  # Claimed first, then read: of two studies racing, one wins.
        self.registry.execute('INSERT OR IGNORE INTO workers VALUES (?, ?, ?)', (worker, self.study_id, now))
        owner = self.registry.execute('SELECT study FROM workers WHERE worker = ?', (worker,)).fetchone()[0]
        if owner != self.study_id:
          raise Refused(
            409, 'This worker id has already taken part in one of our studies; each worker takes part once.'
          )
      trials = protocols.compose_session(self.manifest, arm, self._rng)
      cursor = db.execute(
        'INSERT INTO sessions(token, worker, arm, status, num_trials, code, user_agent, created, updated) '
        'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
        (
          secrets.token_hex(16),
          worker,
          arm,
          ACTIVE,
          len(trials),
          secrets.token_hex(6).upper(),
          user_agent[:300],
          now,
          now,
        ),
      )
      db.executemany(
        'INSERT INTO trials(session_id, position, token, phase, kind, example, left_label, right_label, left_image,'
        ' right_image, left_token, right_token, test, split) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        [
          (
            cursor.lastrowid,
            k,
            secrets.token_hex(16),
            t.phase,
            t.kind,
            t.example,
            t.left_label,
            t.right_label,
            t.left_image,
            t.right_image,
            secrets.token_hex(16),
            secrets.token_hex(16),
            t.test,
            t.split,
          )
          for k, t in enumerate(trials)
        ],
      )
      return self._describe(db.execute('SELECT * FROM sessions WHERE id = ?', (cursor.lastrowid,)).fetchone())

  def _describe(self, row) -> dict:
    m = self.manifest
    return {
      'token': row['token'],
      'kind': m.kind,
      'question': m.question,
      'display_ms': m.display_ms,
      'image_size': list(m.image_size),
      'practice': m.practice_pairs if m.kind == FOOLED else 0,
      'total': row['num_trials'],
      'answered': row['answered'],
      'done': row['status'] != ACTIVE,
    } | ({'code': row['code']} if row['status'] != ACTIVE else {})

  def _counts(self, db, now) -> tuple[dict, dict]:
    valid = dict(db.execute('SELECT arm, COUNT(*) FROM sessions WHERE status = ? GROUP BY arm', (COMPLETE,)))
    active = dict(
      db.execute(
        'SELECT arm, COUNT(*) FROM sessions WHERE status = ? AND updated > ? GROUP BY arm',
        (ACTIVE, now - self.abandon_after_s),
      )
    )
    return valid, active

  def _current(self, db, session) -> sqlite3.Row:
    """The active session's pair at its position (it has one until its last answer, which completes it)."""
    return db.execute(
      'SELECT * FROM trials WHERE session_id = ? AND position = ?', (session['id'], session['answered'])
    ).fetchone()

  def next_trial(self, token) -> dict:
    """The session's next unanswered pair (again after a reload or a restart), or its end."""
    now = time.time()
    with self._transaction() as db:
      session = self._session(db, token)
      if session['status'] != ACTIVE:
        return {'done': True, 'code': session['code']}
      trial = self._current(db, session)
      if trial['fetched']:
        # Its images were served: showing them again (a reload) gives a second look at a timed pair, which voids
        # the session; fresh tokens, as each is served once.
        db.execute(
          'UPDATE trials SET left_token = ?, right_token = ?, fetched = 0 WHERE id = ?',
          (secrets.token_hex(16), secrets.token_hex(16), trial['id']),
        )
        if self.manifest.display_ms:
          db.execute('UPDATE sessions SET reshown = reshown + 1 WHERE id = ?', (session['id'],))
      # Issued now: the images must be fetched soon, and the answer come at least the display time later.
      db.execute('UPDATE trials SET issued = ?, shown = shown + 1 WHERE id = ?', (now, trial['id']))
      trial = self._current(db, session)
      return {
        'done': False,
        'trial': trial['token'],
        'position': trial['position'],
        'phase': trial['phase'],
        'left': f'/img/{trial["left_token"]}',
        'right': f'/img/{trial["right_token"]}',
      }

  def image(self, image_token) -> str | None:
    """The manifest image id behind a token of the current pair of an active session, once, and only within
    FETCH_WINDOW_S of the pair's issue; None for anything else (so the page cannot show a pair again or late)."""
    if not _is_token(image_token):
      return None
    now = time.time()
    with self._transaction() as db:
      row = db.execute(
        'SELECT t.id, t.left_token, t.left_image, t.right_image, t.fetched, t.issued FROM trials t '
        'JOIN sessions s ON s.id = t.session_id '
        'WHERE (t.left_token = ? OR t.right_token = ?) AND s.status = ? AND t.position = s.answered',
        (image_token, image_token, ACTIVE),
      ).fetchone()
      side = None if row is None else _LEFT if row['left_token'] == image_token else _RIGHT
      if row is None or row['issued'] is None or row['fetched'] & side or now - row['issued'] > FETCH_WINDOW_S:
        return None
      db.execute('UPDATE trials SET fetched = fetched | ? WHERE id = ?', (side, row['id']))
    return row['left_image'] if side == _LEFT else row['right_image']

  def answer(self, token, trial_token, choice, display_ms) -> dict:
    """Records the answer to the session's current pair; feedback for a practice pair."""
    if choice not in (protocols.LEFT, protocols.RIGHT):
      raise Refused(400, "choice must be 'left' or 'right'.")
    display_ms = finite_number(display_ms)
    if display_ms is None:
      raise Refused(400, 'display_ms must be a finite number.')
    now = time.time()
    with self._transaction() as db:
      session = self._session(db, token)
      if session['status'] != ACTIVE:
        raise Refused(409, 'This session is finished.')
      trial = self._current(db, session)
      if not _is_token(trial_token) or not secrets.compare_digest(trial_token, trial['token']):
        known = db.execute(
          'SELECT position FROM trials WHERE token = ? AND session_id = ?',
          (trial_token if _is_token(trial_token) else '', session['id']),
        ).fetchone()
        if known is not None and known[0] < session['answered']:
          raise Refused(409, 'This pair is already answered.')
        raise Refused(409, 'Not the current pair of this session; answer the pairs in order.')
      if trial['issued'] is None or trial['fetched'] != _LEFT | _RIGHT:
        raise Refused(409, 'This pair has not been shown yet; it will be shown now.')
      server_ms = (now - trial['issued']) * 1000
      self._check_display(display_ms, server_ms)
      db.execute(
        'INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)',
        (trial['id'], session['id'], trial['position'], choice, display_ms, server_ms, now),
      )
      truth = protocols.truth_side(trial['left_label'], trial['right_label'])
      missed = int(trial['kind'] == protocols.GOLDEN and choice != truth)
      done = trial['position'] + 1 == session['num_trials']
      void = session['golden_missed'] + missed or session['reshown']
      status = ACTIVE if not done else DISCARDED if void else COMPLETE
      db.execute(
        'UPDATE sessions SET answered = answered + 1, golden_missed = golden_missed + ?, status = ?, '
        'updated = ?, finished = ? WHERE id = ?',
        (missed, status, now, now if done else None, session['id']),
      )
      result = {'done': done}
      if trial['phase'] == protocols.PRACTICE:
        result |= {'feedback': 'right' if choice == truth else 'wrong', 'camera': truth}
      if done:
        result['code'] = session['code']
      return result

  def _check_display(self, display_ms: float, server_ms: float) -> None:
    target = self.manifest.display_ms
    if target and not 0.9 * target <= display_ms <= target + max(target, 1000):
      raise Refused(
        422,
        f'The pair was shown for {display_ms:.0f} ms instead of {target} ms (was the page hidden?); '
        'it will be shown again.',
      )
    if display_ms < 0 or server_ms < 0.9 * max(target, display_ms) - 50:
      raise Refused(422, 'The answer came sooner than the pair could have been shown; it will be shown again.')

  def status(self) -> dict:
    """Sessions per arm and status (the admin view)."""
    with self._lock:
      rows = self.db.execute('SELECT arm, status, COUNT(*) FROM sessions GROUP BY arm, status').fetchall()
      answers = self.db.execute('SELECT COUNT(*) FROM answers').fetchone()[0]
    arms = {a: {ACTIVE: 0, COMPLETE: 0, DISCARDED: 0} for a in self.manifest.arms}
    for arm, status, count in rows:
      arms.setdefault(arm, {})[status] = count
    return {'arms': arms, 'answers': answers, 'workers_per_arm': self.manifest.workers_per_arm}


def _read_only(study: str, query: str) -> list[dict]:
  """The rows of `query` on the study's database opened read-only (a running server may keep writing); [] if none."""
  path = os.path.join(study, DATABASE)
  if not os.path.exists(path):
    return []
  db = sqlite3.connect(f'file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro', uri=True)
  db.row_factory = sqlite3.Row
  try:
    return [dict(r) for r in db.execute(query)]
  finally:
    db.close()


def read_answers(study: str) -> list[dict]:
  """Every answer with its trial and session, for the report."""
  return _read_only(
    study,
    'SELECT s.id AS session, s.worker, s.arm, s.status, t.position, t.phase, t.kind, '
    't.example, t.left_label, t.right_label, t.test, t.split, a.choice, a.display_ms, a.server_ms '
    'FROM answers a JOIN trials t ON t.id = a.trial_id JOIN sessions s ON s.id = a.session_id '
    'ORDER BY s.id, t.position',
  )


def workers_csv(study: str) -> str:
  """Every session's worker, algorithm, status, progress and completion code, to approve payments by."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  fields = ['worker', 'arm', 'status', 'answered', 'num_trials', 'reshown', 'code', 'created', 'finished']
  writer.writerow(fields)
  for row in _read_only(study, f'SELECT {", ".join(fields)} FROM sessions ORDER BY id'):
    writer.writerow([row[f] for f in fields])
  return out.getvalue()


def read_sessions(study: str) -> list[dict]:
  return _read_only(
    study,
    'SELECT id, worker, arm, status, golden_missed, reshown, answered, num_trials, code FROM sessions ORDER BY id',
  )
