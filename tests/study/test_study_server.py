"""The study's real server (`launch/study.py serve`, uvicorn) over HTTP on 127.0.0.1: what strangers can send and
see, a simulated crowd with known fool rates, 50 concurrent workers, and kill -9 with a restart."""

import concurrent.futures
import csv
import http.client
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

pytest.importorskip('starlette', reason="the study server needs pip install -e '.[study]'")
pytest.importorskip('uvicorn', reason="the study server needs pip install -e '.[study]'")

from common.study import manifest, report, storage  # noqa: E402
from tests.study.helpers import (  # noqa: E402
  REPO,
  Server,
  api,
  continue_worker,
  make_fooled,
  make_preference,
  raw_http,
  request,
  run_worker,
)

pytestmark = pytest.mark.slow  # The real server in a process (pyproject.toml's markers).


def _honest(kind, left, right):
  return 'left' if left == manifest.TRUTH else 'right'


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  study = tmp_path_factory.mktemp('sec') / 's'
  make_fooled(study, display_ms=150, workers_per_arm=50)
  server = Server(study)
  yield study, server
  server.stop()
  assert 'Traceback' not in ''.join(server.output)  # no request made it fail (a 500 logs its traceback)


def _start(server, worker):
  status, session = api(server.url, '/api/session', {'worker': worker})
  assert status == 200, session
  return session['token']


def test_nothing_sent_tells_which_image_is_real(served):
  study, server = served
  token = _start(server, 'looker')
  status, page, headers = request(server.url + '/')
  assert status == 200 and b'<script src="/study.js"' in page
  assert "default-src 'none'" in headers['content-security-policy'] and headers['x-content-type-options'] == 'nosniff'
  m = manifest.load(str(study))
  secrets_ = m.image_ids() | {'truth', 'Bicubic', 'A', 'B'}
  seen_tokens = set()
  for _ in range(3):
    trial = api(server.url, '/api/trial', {'token': token})[1]
    text = json.dumps(trial)
    assert set(trial) == {'done', 'trial', 'position', 'phase', 'left', 'right'}
    assert not any(s in text for s in secrets_), text
    pngs = []
    for side in ('left', 'right'):
      status, data, headers = request(server.url + trial[side])
      assert status == 200 and headers['content-type'] == 'image/png' and headers['cache-control'] == 'no-store'
      assert not any(h.lower() in ('last-modified', 'etag', 'content-disposition') for h in headers)
      pngs.append(data)
      seen_tokens.add(trial[side])
    # Same encoding and size: 8-bit RGB 32x32, IHDR / IDAT / IEND only.
    assert pngs[0][12:29] == pngs[1][12:29]
    assert all(b'tEXt' not in p and b'iTXt' not in p and b'tIME' not in p and b'iCCP' not in p for p in pngs)
    time.sleep(0.16)
    assert (
      api(server.url, '/api/answer', {'token': token, 'trial': trial['trial'], 'choice': 'left', 'display_ms': 155})[0]
      == 200
    )
  assert len(seen_tokens) == 6  # fresh tokens per pair and side


def test_intro_states_the_pairs_and_the_duration(served):
  status, body, _ = request(served[1].url + '/api/info')
  info = json.loads(body)
  assert status == 200 and info['pairs'] == 55
  assert info['instructions'].startswith('You will see 55 pairs of images, one pair at a time (the first 10 are')
  assert 'It takes about 4 minutes.' in info['instructions']  # 55 x (0.15 s + 3 s) + 10 x 1.5 s = 188 s


def test_no_path_traversal(served):
  study, server = served
  image_id = next(iter(manifest.load(str(study)).image_ids()))
  for path in (
    '/img/' + image_id,
    '/img/..%2Fmanifest.json',
    '/img/../manifest.json',
    '/manifest.json',
    '/study.sqlite',
    '/images/' + image_id + '.png',
    '/admin_token',
    '/study.js/../admin_token',
    '/%2e%2e/%2e%2e/etc/passwd',
    '/img/' + '0' * 32,
  ):
    status, body, _ = request(server.url + path)
    assert status == 404, (path, status)
    assert b'PNG' not in body and b'workers_per_arm' not in body
  reply = raw_http(server.port, b'GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n')
  assert reply.split(b' ')[1] in (b'400', b'404') and b'root:' not in reply


def test_malformed_and_oversized_requests_get_4xx(served):
  study, server = served
  token = _start(server, 'fuzzer')
  cases = [
    ('/api/session', b'not json'),
    ('/api/session', b'[1, 2]'),
    ('/api/session', b'\xff\xfe'),
    ('/api/session', b'{"worker": {"a": 1}}'),
    ('/api/trial', b'{"token": 5}'),
    ('/api/trial', b'{}'),
    ('/api/answer', json.dumps({'token': token, 'trial': None, 'choice': 'left', 'display_ms': 1}).encode()),
    ('/api/answer', json.dumps({'token': token, 'trial': 't', 'choice': 'left', 'display_ms': 'x'}).encode()),
    ('/api/answer', json.dumps({'token': [token]}).encode()),
    ('/api/answer', json.dumps({'token': token, 'trial': 'é' * 32, 'choice': 'left', 'display_ms': 1}).encode()),
    ('/api/session', json.dumps({'worker': 'fuzzer', 'token': 'é' * 32}).encode()),
    ('/api/session', b'{"worker": "' + b'w' * 5000 + b'"}'),
  ]
  for path, body in cases:
    status, data, _ = request(server.url + path, 'POST', raw=body)
    assert 400 <= status < 500, (path, body[:40], status, data)
    assert 'error' in json.loads(data)
  assert request(server.url + '/api/session', 'GET')[0] == 405
  # A declared or streamed body over 4 KB is refused before it is read whole.
  big = b'POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n'
  assert raw_http(server.port, big + b'{').startswith(b'HTTP/1.1 413')
  chunked = (
    b'POST /api/session HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
    + b'1000\r\n'
    + b'a' * 4096
    + b'\r\n'
    + b'1000\r\n'
    + b'a' * 4096
    + b'\r\n0\r\n\r\n'
  )
  assert raw_http(server.port, chunked).startswith(b'HTTP/1.1 413')
  bad_length = b'POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n'
  assert raw_http(server.port, bad_length).split(b' ')[1].startswith(b'4')
  huge_header = b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 100_000 + b'\r\n\r\n'
  assert raw_http(server.port, huge_header).split(b' ')[1].startswith(b'4')
  assert raw_http(server.port, b'\x16\x03\x01 garbage\r\n\r\n').split(b' ')[1].startswith(b'4')
  assert request(server.url + '/healthz')[0] == 200  # still serving


def test_answers_are_checked_on_the_server(served):
  study, server = served
  token, other = _start(server, 'checked'), _start(server, 'other')
  trial = api(server.url, '/api/trial', {'token': token})[1]
  theirs = api(server.url, '/api/trial', {'token': other})[1]
  answer = lambda **kw: api(
    server.url, '/api/answer', {'token': token, 'trial': trial['trial'], 'choice': 'left', 'display_ms': 150} | kw
  )
  assert answer()[0] == 409  # its images were never fetched, so never shown
  assert [request(server.url + trial[side])[0] for side in ('left', 'right', 'left')] == [200, 200, 404]  # once
  assert answer()[0] == 422  # sooner than the pair could have been shown
  time.sleep(0.16)
  assert answer(display_ms=10)[0] == 422  # a display time the page cannot have measured
  assert answer(token='0' * 32)[0] == 403  # forged session
  assert answer(trial=theirs['trial'])[0] == 409  # another session's pair
  assert answer()[0] == 200
  status, replay = answer()
  assert status == 409 and 'already answered' in replay['error']  # replayed
  assert api(server.url, '/api/session', {'worker': 'checked'})[0] == 409  # one session per worker
  assert api(server.url, '/api/session', {'worker': 'checked', 'token': token})[1]['token'] == token  # resumed
  assert api(server.url, '/api/session', {})[0] == 400  # no worker id


def test_admin_views_need_the_token(served):
  study, server = served
  for headers in ({}, {'Authorization': 'Bearer wrong'}, {'Authorization': server.admin_token}):
    for path in ('/admin/status', '/admin/report', '/admin/workers.csv'):
      status, body, _ = request(server.url + path, headers=headers)
      assert status == 401 and b'complete' not in body and b'worker' not in body
  admin = {'Authorization': f'Bearer {server.admin_token}'}
  status, body, _ = request(server.url + '/admin/status', headers=admin)
  assert status == 200 and set(json.loads(body)['arms']) == {'A', 'B'}
  # The owner's list to approve payments by: every worker with its status and completion code.
  _start(server, 'payee')
  status, body, headers = request(server.url + '/admin/workers.csv', headers=admin)
  rows = list(csv.DictReader(io.StringIO(body.decode())))
  assert status == 200 and headers['content-type'].startswith('text/csv')
  db = sqlite3.connect(f'file:{study / storage.DATABASE}?mode=ro', uri=True)
  expected = db.execute('SELECT worker, status, code FROM sessions ORDER BY id').fetchall()
  assert [(r['worker'], r['status'], r['code']) for r in rows] == expected and ('payee', 'active') in {
    (r['worker'], r['status']) for r in rows
  }
  with open(study / 'admin_token') as f:
    assert f.read().strip() == server.admin_token
  assert os.stat(study / 'admin_token').st_mode & 0o077 == 0  # readable by its owner only


def test_invitations_origins_and_rate_limit(tmp_path):
  study = tmp_path / 's'
  make_fooled(study, display_ms=0, workers_per_arm=50)
  invite = [sys.executable, os.path.join(REPO, 'launch', 'study.py'), 'invite', f'--study={study}']
  out = subprocess.run(invite + ['--count=6', '--base_url=http://x'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  links = [urllib.parse.parse_qs(urllib.parse.urlsplit(link).query) for link in out.stdout.split()]
  invited = [(q['worker'][0], q['sig'][0]) for q in links]
  assert len(invited) == 6 and len(set(invited)) == 6
  out = subprocess.run(invite + ['--count=0', '--base_url=http://x'], capture_output=True, text=True, cwd=REPO)
  assert out.returncode != 0 and out.stderr.strip().splitlines()[-1] == 'error: invite needs --count >= 1, got 0.'
  server = Server(study, '--noopen', '--new_sessions_per_minute=4')  # serve's default: by invitation
  session = lambda k, **kw: api(server.url, '/api/session', {'worker': invited[k][0], 'sig': invited[k][1]} | kw)
  try:
    assert 'by invitation' in ''.join(server.output)
    assert api(server.url, '/api/session', {'worker': 'made-up'})[0] == 403  # no invitation
    assert session(0, sig='0' * 32)[0] == 403  # a forged one
    assert session(0, worker=invited[0][0].upper())[0] == 200
    assert session(0)[0] == 409  # the same person, in any case
    # A form or fetch from another site cannot start a session, even as text/plain; the page's own origin can.
    body = json.dumps({'worker': invited[1][0], 'sig': invited[1][1]}).encode()
    for headers in ({'Origin': 'http://evil.example', 'Content-Type': 'text/plain'}, {'Sec-Fetch-Site': 'cross-site'}):
      status, data, _ = request(server.url + '/api/session', 'POST', raw=body, headers=headers)
      assert status == 403 and 'other sites' in json.loads(data)['error']
    status, _, _ = request(server.url + '/api/session', 'POST', raw=body, headers={'Origin': server.url})
    assert status == 200
    # Four new sessions a minute from one address: the fifth waits.
    assert [session(k)[0] for k in (2, 3, 4)] == [200, 200, 429]
  finally:
    server.stop()


def test_simulated_crowd_recovers_its_fool_rates(tmp_path):
  """Workers fooled with probability 0.3 by A and 0.1 by B (independently per pair), plus careless workers who miss
  golden questions: the report's intervals contain the true rates and the careless are discarded."""
  study = tmp_path / 's'
  provenance = ['60 examples of the eval split; NN searched 64 training examples.']
  m = make_fooled(study, arms=('A', 'B'), workers_per_arm=12, display_ms=0, source={'table1': provenance})
  server = Server(study, '--serve_seed=0')
  rates = {'A': 0.3, 'B': 0.1}
  try:
    for k in range(26):
      rng = np.random.default_rng(k)
      careless = k in (3, 17)

      def choose(kind, left, right, rng=rng, careless=careless):
        truth = 'left' if left == manifest.TRUTH else 'right'
        other = 'right' if truth == 'left' else 'left'
        arm = right if truth == 'left' else left
        if kind == 'golden':
          return other if careless else truth
        return other if rng.random() < rates.get(arm, 0.5) else truth

      run_worker(server.url, study, f'crowd{k}', choose)
    assert api(server.url, '/api/session', {'worker': 'late'})[0] == 410
    status, text, _ = request(server.url + '/admin/report', headers={'Authorization': f'Bearer {server.admin_token}'})
    assert status == 200
  finally:
    server.stop()
  rows = report.fooled_rows(str(study), m)
  for arm, rate in rates.items():
    r = rows[arm]
    assert r['valid'] == 12 and r['answers'] == 480
    assert r['lo'] <= rate <= r['hi'], (arm, r)
    assert r['hi'] - r['lo'] < 0.15
  assert rows['A']['discarded'] + rows['B']['discarded'] == 2
  assert text.decode().startswith('| Algorithm | % Fooled |')
  # The command line: report.md, fooled.csv, figure7.png, and the column merged into the run's table1.md.
  (tmp_path / 'run').mkdir()
  table = '| Method | pSNR |\n|---|---|\n| A | 20.00 |\n| B | 21.00 |\n\n- {}\n'
  report_command = [
    sys.executable,
    os.path.join(REPO, 'launch', 'study.py'),
    'report',
    f'--study={study}',
    f'--table1_dir={tmp_path / "run"}',
  ]
  # A table of other examples is refused in one line, and left as it was.
  (tmp_path / 'run' / 'table1.md').write_text(table.format(provenance[0].replace('60 examples', '128 examples')))
  out = subprocess.run(report_command, capture_output=True, text=True, cwd=REPO, timeout=120)
  assert (
    out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith('error: ') and 'other examples' in out.stderr
  )
  assert '% Fooled' not in (tmp_path / 'run' / 'table1.md').read_text()
  (tmp_path / 'run' / 'table1.md').write_text(table.format(provenance[0]))
  out = subprocess.run(report_command, capture_output=True, text=True, cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr
  assert 'Warning' not in out.stdout  # 12 valid workers per algorithm
  table1 = (tmp_path / 'run' / 'table1.md').read_text().split('\n')
  assert table1[0] == '| Method | pSNR | % Fooled |'
  assert table1[2] == f'| A | 20.00 | {report.fooled_cell(rows["A"])} |'
  for name in ('report.md', 'fooled.csv', 'figure7.png'):
    assert (study / name).exists()


def test_fifty_concurrent_workers_lose_and_duplicate_nothing(tmp_path):
  study = tmp_path / 's'
  make_fooled(study, arms=('A', 'B'), workers_per_arm=25, display_ms=20)
  server = Server(study)
  try:
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
      futures = [pool.submit(run_worker, server.url, study, f'load{k}', _honest, 20) for k in range(50)]
      results = [f.result(timeout=240) for f in futures]
  finally:
    server.stop()
  assert all(r['answers'] == 55 and r['code'] for r in results)
  db = sqlite3.connect(study / storage.DATABASE)
  assert db.execute('SELECT COUNT(*), COUNT(DISTINCT trial_id) FROM answers').fetchone() == (2750, 2750)
  assert db.execute("SELECT COUNT(*) FROM sessions WHERE status = 'complete' AND answered = 55").fetchone()[0] == 50
  assert db.execute('SELECT arm, COUNT(*) FROM sessions GROUP BY arm').fetchall() == [('A', 25), ('B', 25)]
  # Each session's answers are its positions 0..54, once each.
  assert (
    db.execute(
      'SELECT COUNT(*) FROM (SELECT session_id FROM answers GROUP BY session_id '
      'HAVING COUNT(*) = 55 AND MIN(position) = 0 AND MAX(position) = 54)'
    ).fetchone()[0]
    == 50
  )


def test_a_burst_of_workers_does_not_overshoot_the_places(tmp_path):
  study = tmp_path / 's'
  make_fooled(
    study, arms=('A', 'B', 'C', 'D'), workers_per_arm=2, display_ms=0, practice_pairs=2, main_pairs=6, golden_pairs=1
  )
  server = Server(study)
  barrier = threading.Barrier(20)

  def worker(k):
    barrier.wait()  # all 20 ask for a session at once
    status, session = api(server.url, '/api/session', {'worker': f'burst{k}'})
    if status != 200:
      return status
    return continue_worker(server.url, study, session['token'], _honest)['code'] and 200

  try:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
      statuses = list(pool.map(worker, range(20)))
  finally:
    server.stop()
  # 8 places: 8 sessions ran to the end, 12 were told every place was taken (it used to be 20 valid sessions).
  assert sorted(statuses) == [200] * 8 + [429] * 12
  db = sqlite3.connect(study / storage.DATABASE)
  assert db.execute("SELECT arm, COUNT(*) FROM sessions WHERE status = 'complete' GROUP BY arm").fetchall() == [
    ('A', 2),
    ('B', 2),
    ('C', 2),
    ('D', 2),
  ]


def test_kill9_and_restart_lose_nothing_and_resume(tmp_path):
  study = tmp_path / 's'
  make_fooled(study, display_ms=0)
  server = Server(study)
  first = run_worker(server.url, study, 'steady', _honest, stop_after=20)
  # Workers keep answering while the server is killed: every acknowledged answer must survive.
  acknowledged, stop = [], threading.Event()

  def hammer(k):
    try:
      for n in range(1000):
        token = api(server.url, '/api/session', {'worker': f'busy{k}-{n}'})[1]['token']
        while not stop.is_set():
          trial = api(server.url, '/api/trial', {'token': token})[1]
          if trial['done']:
            break
          for side in ('left', 'right'):
            request(server.url + trial[side])
          if (
            api(
              server.url, '/api/answer', {'token': token, 'trial': trial['trial'], 'choice': 'left', 'display_ms': 0}
            )[0]
            == 200
          ):
            acknowledged.append(trial['trial'])
    except (OSError, http.client.HTTPException):  # the server is gone, perhaps in the middle of a reply
      pass

  threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
  for t in threads:
    t.start()
  time.sleep(1.0)
  server.kill9()
  stop.set()
  for t in threads:
    t.join(30)
  db = sqlite3.connect(f'file:{study / storage.DATABASE}?mode=ro', uri=True)
  stored = {r[0] for r in db.execute('SELECT t.token FROM answers a JOIN trials t ON t.id = a.trial_id')}
  db.close()
  assert len(acknowledged) > 10 and set(acknowledged) <= stored
  server.start()
  try:
    assert api(server.url, '/api/session', {'worker': 'steady', 'token': first['token']})[1]['answered'] == 20
    assert api(server.url, '/api/trial', {'token': first['token']})[1]['position'] == 20
    done = continue_worker(server.url, study, first['token'], _honest)
    assert done['answers'] == 35 and done['code']
  finally:
    server.stop()
  db = sqlite3.connect(study / storage.DATABASE)
  assert db.execute("SELECT status, answered FROM sessions WHERE worker = 'steady'").fetchone() == ('complete', 55)


def test_preference_study_over_http(tmp_path):
  study = tmp_path / 'p'
  m = make_preference(study, participants=2)
  server = Server(study)
  try:
    for k in range(2):
      result = run_worker(server.url, study, f'p{k}', lambda kind, left, right: 'left' if left == 'SRIM' else 'right')
      assert result['answers'] == 60
  finally:
    server.stop()
  table = report.preference_rows(str(study), m)
  assert table[('all', 'SRIM vs SRGAN')]['SRIM'] == (1.0, 0.0)
  assert table[('all', 'SRIM vs Bicubic')]['SRIM'] == (1.0, 0.0)
  assert 'Test 1: SRIM' in report.summary(str(study))


def test_serve_without_the_web_packages_names_the_install(tmp_path):
  make_fooled(tmp_path / 's')
  blocker = tmp_path / 'block'
  blocker.mkdir()
  (blocker / 'sitecustomize.py').write_text(
    'import sys\nclass _Block:\n  def find_spec(self, name, *a):\n'
    '    if name.split(".")[0] in ("starlette", "uvicorn"):\n      raise ImportError(name=name)\n'
    'sys.meta_path.insert(0, _Block())\n'
  )
  env = dict(os.environ, PYTHONPATH=f'{blocker}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
  out = subprocess.run(
    [sys.executable, os.path.join(REPO, 'launch', 'study.py'), 'serve', f'--study={tmp_path / "s"}'],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=60,
  )
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith('error: serve needs the web server packages')
  assert "pip install -e '.[study]'" in out.stderr
