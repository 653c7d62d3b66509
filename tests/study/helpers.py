"""Helpers of the study tests (no tests here): generated studies, a real server process, simulated workers."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from common.study import manifest
from tests.helpers import REPO


def make_fooled(out, *, arms=('A', 'B'), num_examples=60, size=8, scale=4, seed=0, **protocol) -> manifest.Manifest:
  """A fooled study of random images: each arm's output is its truth with noise, Bicubic a flat grey."""
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8)
  outputs = {a: np.clip(truth.astype(int) + rng.integers(-40, 40, truth.shape), 0, 255).astype(np.uint8) for a in arms}
  outputs['Bicubic'] = np.full_like(truth, 128)
  return manifest.write_fooled(str(out), truth, outputs, scale=scale, arms=list(arms), **protocol)


def make_preference(out, *, classes_per_split=12, per_class=2, size=8, seed=0, **protocol) -> manifest.Manifest:
  rng = np.random.default_rng(seed)
  n = 2 * classes_per_split * per_class
  outputs = {m: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for m in ('SRIM', 'SRGAN', 'Bicubic')}
  classes = [f'c{k // per_class}' for k in range(n)]
  splits = ['seen' if k < n // 2 else 'unseen' for k in range(n)]
  return manifest.write_preference(str(out), outputs, classes, splits, scale=2, **protocol)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Server:
  """`launch/study.py serve` in a subprocess on a free port of 127.0.0.1: open to any worker id, with no limit on new
  sessions per address (all tests come from 127.0.0.1), unless `args` say otherwise (`--noopen`, a later value)."""

  def __init__(self, study, *args, port=None):
    self.study, self.args, self.port = str(study), ('--open', '--new_sessions_per_minute=0', *args), port or free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.start()

  def start(self, timeout=60):
    self.proc = subprocess.Popen(
      [
        sys.executable,
        os.path.join(REPO, 'launch', 'study.py'),
        'serve',
        f'--study={self.study}',
        f'--port={self.port}',
        *self.args,
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO,
    )
    self.output = []
    deadline = time.time() + timeout
    while time.time() < deadline:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError('serve exited: ' + ''.join(self.output))
      self.output.append(line)
      if line.startswith('Admin token'):
        self.admin_token = line.split(':', 1)[1].strip()
        break
    # Read the log as it comes: a full pipe would block the server at its next log line.
    self.reader = threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True)
    self.reader.start()
    while time.time() < deadline:
      try:
        if urllib.request.urlopen(self.url + '/healthz', timeout=2).status == 200:
          return
      except OSError:
        time.sleep(0.1)
    raise RuntimeError('serve did not answer: ' + ''.join(self.output))

  def kill9(self):
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(30)
    self.reader.join(30)
    self.proc.stdout.close()

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(20)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(10)
    self.reader.join(30)
    self.proc.stdout.close()


def request(url, method='GET', body=None, headers=None, raw=None, timeout=30) -> tuple[int, bytes, dict]:
  """(status, body, headers) of one HTTP request; `raw` bytes are sent as the body as they are."""
  data = raw if raw is not None else None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(
    url, data=data, method=method, headers={'Content-Type': 'application/json', **(headers or {})}
  )
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, r.read(), dict(r.headers)
  except urllib.error.HTTPError as e:
    return e.code, e.read(), dict(e.headers)


def api(base, path, body) -> tuple[int, dict]:
  status, data, _ = request(base + path, 'POST', body)
  return status, json.loads(data)


def raw_http(port, data: bytes, timeout=10) -> bytes:
  """Bytes sent as they are on a fresh connection; the reply's bytes (empty if the server just closed)."""
  head, sep, rest = data.partition(b'\r\n')
  if sep:  # one request per connection: the server closes it after replying
    data = head + b'\r\nConnection: close' + sep + rest
  with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
    s.sendall(data)
    chunks = []
    try:
      while chunk := s.recv(65536):
        chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
      pass
  return b''.join(chunks)


def trial_truth(study, trial_token) -> tuple[str, str, str]:
  """(kind, left label, right label) of a trial, read from the database as only the test may."""
  db = sqlite3.connect(f'file:{os.path.join(str(study), "study.sqlite")}?mode=ro', uri=True)
  try:
    return db.execute('SELECT kind, left_label, right_label FROM trials WHERE token = ?', (trial_token,)).fetchone()
  finally:
    db.close()


def look(store, trial) -> None:
  """Fetches a pair's two images straight from a Store, as the page does before showing them."""
  for side in ('left', 'right'):
    assert store.image(trial[side].removeprefix('/img/')) is not None


def run_worker(base, study, worker, choose, display_ms=0, stop_after=None) -> dict:
  """A whole session through the HTTP API. `choose(kind, left_label, right_label)` -> 'left' / 'right'. Returns
  {'token', 'answers', 'code'}; stops after `stop_after` answers (then 'code' is None)."""
  status, session = api(base, '/api/session', {'worker': worker})
  assert status == 200, session
  return continue_worker(base, study, session['token'], choose, display_ms, stop_after)


def continue_worker(base, study, token, choose, display_ms=0, stop_after=None) -> dict:
  answers = 0
  while True:
    status, trial = api(base, '/api/trial', {'token': token})
    assert status == 200, trial
    if trial['done']:
      return {'token': token, 'answers': answers, 'code': trial['code']}
    if stop_after is not None and answers >= stop_after:
      return {'token': token, 'answers': answers, 'code': None}
    for side in ('left', 'right'):  # as the page does: the server takes no answer to a pair it did not serve
      assert request(base + trial[side])[0] == 200
    time.sleep(display_ms / 1000)
    choice = choose(*trial_truth(study, trial['trial']))
    status, result = api(
      base, '/api/answer', {'token': token, 'trial': trial['trial'], 'choice': choice, 'display_ms': display_ms}
    )
    assert status == 200, result
    answers += 1
    if result['done']:
      return {'token': token, 'answers': answers, 'code': result['code']}
