"""The study's web app (Starlette) and its server (uvicorn): the page, a JSON API for it, images by opaque token.

  POST /api/session {worker, sig?, token?}      -> a new session, or the worker's own (sig: its invitation)
  POST /api/trial   {token}                     -> the next pair: two /img/<token> URLs (or the end and its code)
  POST /api/answer  {token, trial, choice, display_ms} -> recorded; feedback on practice pairs only
  GET  /img/<token>                             -> a PNG of the current pair of an active session, else 404
  GET  /admin/status, /admin/report, /admin/workers.csv -> need `Authorization: Bearer <admin token>` (printed by
                                                 serve); workers.csv: worker, status and code, to approve payments

Every refusal is a 4xx with a JSON {"error": message}; bodies over MAX_BODY bytes get 413 before they are read.
"""

import contextlib
import json
import os
import re
import secrets
from typing import Any, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from common.study import access, protocols, storage
from common.study import manifest as manifest_lib

MAX_BODY = 4096
MAX_HEADERS = 16 * 1024
_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
_PAGES = {
  '/': ('index.html', 'text/html; charset=utf-8'),
  '/study.js': ('study.js', 'text/javascript'),
  '/study.css': ('study.css', 'text/css'),
}
# No X-Frame-Options / frame-ancestors: crowd platforms (e.g. MTurk's ExternalQuestion) show the page in a frame.
_HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
  "connect-src 'self'; base-uri 'none'; form-action 'none'",
}


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


async def _json_body(request: Request) -> dict:
  """The JSON object of a POST from this site's own page (a cross-site form or fetch could start sessions)."""
  if not access.same_origin(request.headers):
    raise storage.Refused(403, 'Requests from other sites are refused.')
  length = request.headers.get('content-length')
  # fullmatch, not str.isdigit: isdigit accepts '²', which int() then refuses.
  if length is not None and (not re.fullmatch(r'[0-9]{1,12}', length) or int(length) > MAX_BODY):
    raise storage.Refused(413, f'Request bodies are at most {MAX_BODY} bytes.')
  body = b''
  try:
    async for chunk in request.stream():
      body += chunk
      if len(body) > MAX_BODY:
        raise storage.Refused(413, f'Request bodies are at most {MAX_BODY} bytes.')
  except ClientDisconnect:  # a body cut short (or badly chunked): nobody is left to read the reply
    raise storage.Refused(400, 'The request body ended early.') from None
  try:
    data = json.loads(body)
  # RecursionError: a body nested a few thousand levels deep ('[' * 2000) exhausts the decoder's stack.
  except (ValueError, UnicodeDecodeError, RecursionError):
    raise storage.Refused(400, 'The body must be a JSON object.') from None
  if not isinstance(data, dict):
    raise storage.Refused(400, 'The body must be a JSON object.')
  return data


class _SecurityHeaders:
  """Adds _HEADERS to every response (pure ASGI, so it also covers error pages) and refuses requests whose headers
  exceed MAX_HEADERS bytes (h11 enforces its limit only on headers that arrive in pieces)."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope['type'] == 'http' and sum(len(k) + len(v) for k, v in scope['headers']) > MAX_HEADERS:
      await JSONResponse({'error': f'Request headers are at most {MAX_HEADERS} bytes.'}, status_code=431)(
        scope, receive, send
      )
      return

    async def send_with_headers(message):
      if message['type'] == 'http.response.start':
        names = {k.lower() for k, _ in message.get('headers', [])}
        message['headers'] = list(message.get('headers', [])) + [
          (k.encode(), v.encode()) for k, v in _HEADERS.items() if k.encode() not in names
        ]
      await send(message)

    await self.app(scope, receive, send_with_headers if scope['type'] == 'http' else send)


def _closing(store: storage.Store):
  @contextlib.asynccontextmanager
  async def lifespan(app):
    yield
    store.close()

  return lifespan


def make_app(
  study: str,
  *,
  registry: str = '',
  abandon_after_s: float = 1800,
  seed: int | None = None,
  open_study: bool = False,
  new_sessions_per_minute: int = 20,
):
  """The ASGI app of a built study (see manifest.py); the store opens (and resumes) its database. `open_study`:
  any worker id may take part; otherwise only invited ones (access.py)."""
  m = manifest_lib.load(study)
  store = storage.Store(
    study,
    m,
    registry=registry,
    abandon_after_s=abandon_after_s,
    seed=seed,
    new_sessions_per_minute=new_sessions_per_minute,
  )
  secret = access.secret_file(study, access.ADMIN_TOKEN)
  invite_secret = None if open_study else access.secret_file(study, access.INVITE_SECRET)
  pages = {path: (_read(os.path.join(_STATIC, name)), kind) for path, (name, kind) in _PAGES.items()}

  async def page(request: Request):
    body, kind = pages[request.url.path]
    return Response(body, media_type=kind)

  info = {
    'question': m.question,
    'display_ms': m.display_ms,
    'practice': m.practice_pairs,
    'pairs': protocols.num_pairs(m),
    'instructions': protocols.instructions(m),
  }

  async def start(request: Request):
    data = await _json_body(request)
    if invite_secret is not None and not access.invited(invite_secret, data.get('worker'), data.get('sig')):
      raise storage.Refused(403, 'This study is by invitation: open the link you were given, as it was given.')
    client = request.client.host if request.client else ''
    return JSONResponse(
      await run_in_threadpool(
        store.start, data.get('worker'), data.get('token'), request.headers.get('user-agent', ''), client
      )
    )

  async def trial(request: Request):
    data = await _json_body(request)
    return JSONResponse(await run_in_threadpool(store.next_trial, data.get('token')))

  async def answer(request: Request):
    data = await _json_body(request)
    return JSONResponse(
      await run_in_threadpool(
        store.answer, data.get('token'), data.get('trial'), data.get('choice'), data.get('display_ms')
      )
    )

  async def image(request: Request):
    image_id = await run_in_threadpool(store.image, request.path_params['token'])
    if image_id is None:
      raise storage.Refused(404, 'No such image.')
    # Bytes only: FileResponse would add Last-Modified and an ETag from the file's time, and the build writes each
    # example's true image first.
    return Response(await run_in_threadpool(_read, manifest_lib.image_path(study, image_id)), media_type='image/png')

  def check_admin(request: Request):
    given = request.headers.get('authorization', '')
    if not secrets.compare_digest(given.encode(), f'Bearer {secret}'.encode()):
      raise storage.Refused(401, 'The admin views need the header "Authorization: Bearer <token printed by serve>".')

  async def admin_status(request: Request):
    check_admin(request)
    return JSONResponse(await run_in_threadpool(store.status))

  async def admin_report(request: Request):
    check_admin(request)
    from common.study import report  # numpy-only; loaded on first use so that the server starts fast

    return PlainTextResponse(await run_in_threadpool(lambda: report.summary(study)))

  async def admin_workers(request: Request):
    check_admin(request)
    return Response(await run_in_threadpool(storage.workers_csv, study), media_type='text/csv; charset=utf-8')

  async def refused(request: Request, e: storage.Refused):
    return JSONResponse({'error': e.message}, status_code=e.status)

  async def http_error(request: Request, e: HTTPException):
    return JSONResponse({'error': e.detail}, status_code=e.status_code, headers=e.headers)

  async def internal(request: Request, e: Exception):
    return JSONResponse({'error': 'Internal error; the answer was not recorded, please try again.'}, status_code=500)

  routes = [Route(path, page) for path in _PAGES] + [
    Route('/api/session', start, methods=['POST']),
    Route('/api/trial', trial, methods=['POST']),
    Route('/api/answer', answer, methods=['POST']),
    Route('/img/{token:str}', image),
    Route('/admin/status', admin_status),
    Route('/admin/report', admin_report),
    Route('/admin/workers.csv', admin_workers),
    Route('/api/info', lambda request: JSONResponse(info)),
    Route('/healthz', lambda request: PlainTextResponse('ok')),
  ]
  app = Starlette(
    routes=routes,
    exception_handlers=cast(dict[Any, Any], {storage.Refused: refused, HTTPException: http_error, Exception: internal}),
    lifespan=_closing(store),
  )
  app.state.store = store
  return _SecurityHeaders(app)


def serve(
  study: str,
  *,
  host: str,
  port: int,
  registry: str = '',
  abandon_after_s: float = 1800,
  forwarded_allow_ips: str = '127.0.0.1',
  seed: int | None = None,
  open_study: bool = False,
  new_sessions_per_minute: int = 20,
) -> None:
  """Runs the study's server until interrupted; prints where workers go and the admin token."""
  import uvicorn

  app = make_app(
    study,
    registry=registry,
    abandon_after_s=abandon_after_s,
    seed=seed,
    open_study=open_study,
    new_sessions_per_minute=new_sessions_per_minute,
  )
  shown = 'localhost' if host in ('0.0.0.0', '::', '127.0.0.1') else host
  where = f'http://{shown}:{port}/?worker=ID' if open_study else 'the links of `launch/study.py invite` (by invitation)'
  print(f'Study {study}: workers open {where}', flush=True)
  print(f'Admin token (for /admin/*): {access.secret_file(study, access.ADMIN_TOKEN)}', flush=True)
  uvicorn.run(
    app,
    host=host,
    port=port,
    log_level='warning',
    access_log=False,
    server_header=False,
    proxy_headers=True,
    forwarded_allow_ips=forwarded_allow_ips,
    timeout_keep_alive=5,
    h11_max_incomplete_event_size=16 * 1024,
    limit_concurrency=1000,
  )
