"""A generated corpus of hostile requests against the real server (`launch/study.py serve`): deep nesting, huge and
non-finite numbers, wrong types in every field of every endpoint, odd headers, paths and methods. Every reply must be
a 4xx or 2xx (a 4xx with a one-line JSON error), and the server's log must hold no traceback."""

import http.client
import json
import time
import urllib.parse

import pytest

pytest.importorskip('starlette', reason="the study server needs pip install -e '.[study]'")
pytest.importorskip('uvicorn', reason="the study server needs pip install -e '.[study]'")

from common.study import access  # noqa: E402
from tests.study.helpers import Server, api, make_fooled, raw_http  # noqa: E402

pytestmark = pytest.mark.slow  # The real server in a process (pyproject.toml's markers).

# JSON values as raw text, so that what json.dumps cannot write (lone surrogates, 400-digit numbers) is sent too.
VALUES = [
  'null',
  'true',
  'false',
  '0',
  '-1',
  '1.5',
  '-0.0',
  '1' + '0' * 400,
  '-' + '9' * 400,
  '1' + '0' * 4000,
  '1e400',
  '-1e400',
  '1e-400',
  'NaN',
  'Infinity',
  '-Infinity',
  '""',
  '"left"',
  '"' + 'x' * 3000 + '"',
  '"\\u0000"',
  '"\\ud800"',
  '"' + 'é' * 40 + '"',
  '"../../etc/passwd"',
  '"<script>alert(1)</script>"',
  '"' + '0' * 32 + '"',
  '"' + 'F' * 32 + '"',
  '[]',
  '{}',
  '[' * 1500 + ']' * 1500,
  '{"a":' * 600 + '1' + '}' * 600,
  '[' * 2000 + ']' * 2000,
]
# Whole bodies that are not a JSON object, or barely one.
BODIES = [
  b'',
  b'not json',
  b'\xff\xfe\x00',
  b'\xef\xbb\xbf{}',
  b'{"worker": "a", "worker": {"x": 1}}',
  b'{"a": 1',
  b'{' + b'"k": 1, ' * 500 + b'"z": 2}',
  b'{"' + b'k' * 4000 + b'": 1}',
] + [v.encode() for v in VALUES]
HEADERS = [
  {'Content-Type': 'text/plain'},
  {'Content-Type': 'multipart/form-data; boundary=x'},
  {'Content-Type': 'application/json; charset=utf-32'},
  {'Content-Length': '99999999999999999999'},
  {'Origin': 'null'},
  {'Origin': 'http://evil.example'},
  {'Origin': 'garbage:::/'},
  {'Origin': 'http://' + 'a' * 3000},
  {'Sec-Fetch-Site': 'cross-site'},
  {'Host': ''},
  {'Host': 'é.example:99999'},
  {'X-Forwarded-For': 'not an address, 999.1.1.1'},
  {'X-Forwarded-Proto': 'gopher'},
  {'Authorization': 'Bearer ' + 'é' * 50},
  {'Authorization': 'Basic ' + 'A' * 5000},
  {'Cookie': 'a=' + 'b' * 4000},
  {'User-Agent': 'x' * 8000},
  {'Accept-Encoding': 'gzip;q=NaN'},
]
PATHS = [
  '/',
  '/study.js',
  '/study.css',
  '/api/info',
  '/healthz',
  '/api/session',
  '/api/trial',
  '/api/answer',
  '/admin/status',
  '/admin/report',
  '/img/' + '0' * 32,
  '/img/' + '%C3%A9' * 32,
  '/img/%00',
  '/img/' + 'a' * 3000,
  '/img/../../manifest.json',
  '/%2e%2e/%2e%2e/etc/passwd',
  '/api/session/../../study.sqlite',
  '/api/%ff%fe',
  '/?worker=' + '%00' * 50,
  '/api/info?' + 'a=b&' * 500,
]
METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'HEAD']


def _send(port, method, path, body=b'', headers=None):
  """(status, content type, body) of one request sent as given (http.client checks little)."""
  conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  try:
    conn.putrequest(method, path, skip_host='Host' in (headers or {}), skip_accept_encoding=True)
    for name, value in {'Content-Type': 'application/json', **(headers or {})}.items():
      conn.putheader(name, value.encode('utf-8'))
    if 'Content-Length' not in (headers or {}):
      conn.putheader('Content-Length', str(len(body)))
    conn.endheaders(body)
    reply = conn.getresponse()
    return reply.status, reply.getheader('content-type', ''), reply.read()
  finally:
    conn.close()


def _check(port, method, path, body=b'', headers=None, failures=None):
  status, kind, data = _send(port, method, path, body, headers)
  case = (method, path[:40], body[:40], headers)
  if status >= 500:
    failures.append((status, case, data[:200]))
  elif status >= 400 and method != 'HEAD':
    try:
      error = json.loads(data)['error']
      if not isinstance(error, str) or '\n' in error or not kind.startswith('application/json'):
        raise ValueError
    except (ValueError, KeyError, TypeError):
      failures.append((status, case, data[:200]))
  return status


def _corpus(worker, sig, token, trial):
  """(method, path, body, headers) cases: each field of each endpoint set to each hostile value over a valid base
  (a live session's token and pair, so that checks after the token's are reached), whole bodies, headers, paths."""
  bases = {
    '/api/session': {'worker': f'"{worker}"', 'sig': f'"{sig}"', 'token': f'"{token}"'},
    '/api/trial': {'token': f'"{token}"'},
    '/api/answer': {'token': f'"{token}"', 'trial': f'"{trial}"', 'choice': '"left"', 'display_ms': '1000'},
  }
  for path, base in bases.items():
    for field in base:
      for value in VALUES:
        fields = base | {field: value}
        yield 'POST', path, ('{' + ', '.join(f'"{k}": {v}' for k, v in fields.items()) + '}').encode(), None
    for body in BODIES:
      yield 'POST', path, body, None
    for headers in HEADERS:
      yield 'POST', path, ('{' + ', '.join(f'"{k}": {v}' for k, v in base.items()) + '}').encode(), headers
  for path in PATHS:
    for method in METHODS:
      yield method, path, b'', None
    for headers in HEADERS:
      yield 'GET', path, b'', headers


@pytest.mark.parametrize('mode', ['--open', '--noopen'])
def test_hostile_requests_never_make_a_5xx_or_a_traceback(tmp_path, mode):
  study = tmp_path / 's'
  make_fooled(study, display_ms=0, workers_per_arm=1000)
  server = Server(study, mode)
  failures, statuses = [], []
  try:
    # An invited worker (what invite mode needs; open mode ignores the signature) with a session in progress.
    query = urllib.parse.urlsplit(access.invitations(str(study), 1, 'http://x')[0]).query
    worker, sig = (urllib.parse.parse_qs(query)[k][0] for k in ('worker', 'sig'))
    status, session = api(server.url, '/api/session', {'worker': worker, 'sig': sig})
    assert status == 200, session
    trial = api(server.url, '/api/trial', {'token': session['token']})[1]
    started = time.time()
    cases = list(_corpus(worker, sig, session['token'], trial['trial']))
    for method, path, body, headers in cases:
      statuses.append(_check(server.port, method, path, body, headers, failures))
    # What http.client will not send: bad chunking, a bad Content-Length, a request line of junk.
    for raw in (
      b'POST /api/answer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
      b'POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n{}',
      b'POST /api/session HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
      b'GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n',
      b'\x00\x01\x02\r\n\r\n',
    ):
      reply = raw_http(server.port, raw)
      assert not reply.startswith(b'HTTP/1.1 5'), (raw[:40], reply[:200])
    elapsed = time.time() - started
    assert api(server.url, '/api/trial', {'token': session['token']})[0] == 200  # the live session still works
  finally:
    server.stop()
  log = ''.join(server.output)
  assert not failures, failures[:5]
  assert 'Traceback' not in log and 'Exception' not in log, log[-3000:]
  # The corpus reached both refusals and acceptances (a resumed or new session, a recorded answer).
  assert len(cases) > 800 and any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
  print(f'{len(cases)} hostile requests in {elapsed:.1f} s')
