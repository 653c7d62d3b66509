"""Who may take part in a study: signed invitations, a crowd platform's approved completions, same-origin requests,
and a cap on new sessions per client.

Invitation mode (`serve`'s default): `launch/study.py invite` mints links `?worker=ID&sig=HMAC(secret, id)`, the
secret kept in the study folder (mode 0600), and the server refuses ids without a valid signature, so only people
given a link take part, once each. Open mode (`serve --open`) takes any id, as crowd platforms put their own worker id
in the link; then `report --approved=FILE` counts only the sessions on the platform's list of approved completions.
Worker ids are compared in lower case everywhere.
"""

import collections
import csv
import hashlib
import hmac
import os
import secrets
import stat
import time
import urllib.parse

from common.errors import UserError

ADMIN_TOKEN, INVITE_SECRET = 'admin_token', 'invite_secret'


def secret_file(study: str, name: str) -> str:
  """A secret of the study, made once (readable by its owner only) and kept across restarts."""
  path = os.path.join(study, name)
  if not os.path.exists(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, 'w') as f:
      f.write(secrets.token_urlsafe(24))
  with open(path) as f:
    return f.read().strip()


def signature(secret: str, worker: str) -> str:
  return hmac.new(secret.encode(), worker.lower().encode(), hashlib.sha256).hexdigest()[:32]


def invited(secret: str, worker, sig) -> bool:
  return (
    isinstance(worker, str)
    and worker.isascii()  # a lone surrogate ('\ud800', valid JSON) cannot be encoded to be signed
    and isinstance(sig, str)
    and sig.isascii()
    and hmac.compare_digest(sig.lower(), signature(secret, worker))
  )


def invitations(study: str, count: int, base_url: str) -> list[str]:
  """`count` links, each with a fresh random worker id and its signature."""
  secret = secret_file(study, INVITE_SECRET)
  links = []
  for _ in range(count):
    worker = 'p' + secrets.token_hex(6)
    links.append(
      f'{base_url.rstrip("/")}/?' + urllib.parse.urlencode({'worker': worker, 'sig': signature(secret, worker)})
    )
  return links


def read_approved(path: str) -> set[tuple[str, str]]:
  """(worker id in lower case, completion code in upper case) of each row of a CSV whose first two columns are the
  worker id and the code the platform recorded (a header row matches no session, so it may stay)."""
  if not os.path.isfile(path):
    raise UserError(f'--approved {path} does not exist (a CSV of worker id, completion code).')
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = [r for r in csv.reader(f) if len(r) >= 2]
  if not rows:
    raise UserError(f'--approved {path} holds no rows of worker id, completion code.')
  return {(r[0].strip().lower(), r[1].strip().upper()) for r in rows}


def same_origin(headers) -> bool:
  """False for a browser's request from another site: its Sec-Fetch-Site, or its Origin against the Host the
  request was sent to (a reverse proxy's X-Forwarded-Host first). Requests without either are not a browser's
  cross-site ones (browsers send Origin on every cross-origin POST)."""
  site = headers.get('sec-fetch-site')
  if site is not None and site not in ('same-origin', 'none'):
    return False
  origin = headers.get('origin')
  if origin is None:
    return True
  try:
    netloc = urllib.parse.urlsplit(origin).netloc
  except ValueError:
    return False
  return bool(netloc) and netloc.lower() == (headers.get('x-forwarded-host') or headers.get('host') or '').lower()


class RateLimit:
  """At most `per_minute` events per client in any 60 s (0: no limit); the caller serialises calls."""

  def __init__(self, per_minute: int):
    self.per_minute = per_minute
    self._events: dict[str, collections.deque] = {}

  def allow(self, client: str, now: float | None = None) -> bool:
    if not self.per_minute:
      return True
    now = time.time() if now is None else now
    if len(self._events) > 10_000:  # forget idle clients, so that many addresses cannot grow this without bound
      self._events = {c: q for c, q in self._events.items() if q and q[-1] > now - 60}
    events = self._events.setdefault(client, collections.deque())
    while events and events[0] <= now - 60:
      events.popleft()
    if len(events) >= self.per_minute:
      return False
    events.append(now)
    return True
