// The study page: one pair at a time, shown for display_ms and then hidden before the answer is taken; the shown
// time is measured here (requestAnimationFrame around the show and the hide) and checked again by the server.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const worker = params.get('worker') || '', sig = params.get('sig') || '';
  const storageKey = 'study-token:' + worker;
  let session = null, current = null, shownAt = 0, displayMs = 0, accepting = false;

  function screen(id) {
    for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== id;
  }
  function fail(message) { $('error-text').textContent = message; screen('error'); }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // POST JSON; a lost connection (server restarting) is retried, so a session survives a restart.
  async function api(path, body) {
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                            body: JSON.stringify(body), cache: 'no-store'});
        let data = {};
        try { data = await response.json(); } catch (e) { data = {error: 'The server sent an unreadable reply.'}; }
        if (response.status >= 500 && attempt < 30) { await sleep(1000); continue; }
        return {status: response.status, data};
      } catch (e) {
        if (attempt >= 120) throw e;
        $('feedback').textContent = 'Connection lost, retrying...';
        await sleep(1000);
      }
    }
  }

  function loadImage(url) {
    const img = new Image();
    img.alt = '';
    img.draggable = false;
    img.src = url;
    return img.decode().then(() => img);
  }

  function setChoices(enabled) {
    accepting = enabled;
    for (const id of ['left', 'right', 'choose-left', 'choose-right']) $(id).disabled = !enabled;
  }

  async function start() {
    $('start').disabled = true;
    const r = await api('/api/session', {worker, sig, token: localStorage.getItem(storageKey)});
    if (r.status !== 200) return fail(r.data.error || 'The study could not start.');
    session = r.data;
    localStorage.setItem(storageKey, session.token);
    if (session.done) return finish(session.code);
    const [h, w] = session.image_size;
    document.documentElement.style.setProperty('--w', w + 'px');
    document.documentElement.style.setProperty('--ar', w + ' / ' + h);
    screen('trial');
    next();
  }

  function progress() {
    const p = current.position;
    $('progress').textContent = p < session.practice
        ? `Practice pair ${p + 1} of ${session.practice}`
        : `Pair ${p - session.practice + 1} of ${session.total - session.practice}`;
  }

  async function next() {
    const r = await api('/api/trial', {token: session.token});
    if (r.status !== 200) return fail(r.data.error || 'The study stopped.');
    if (r.data.done) return finish(r.data.code);
    current = r.data;
    progress();
    setChoices(false);
    let left, right;
    try {
      [left, right] = await Promise.all([loadImage(current.left), loadImage(current.right)]);
    } catch (e) {
      await sleep(1000);
      return next();
    }
    $('feedback').textContent = '';
    $('feedback').className = '';
    $('left').replaceChildren(left);
    $('right').replaceChildren(right);
    requestAnimationFrame(() => {
      shownAt = performance.now();
      $('trial').dataset.state = 'shown';
      if (session.display_ms > 0) setTimeout(hide, session.display_ms);
      else setChoices(true);
    });
  }

  function hide() {
    $('left').replaceChildren();
    $('right').replaceChildren();
    requestAnimationFrame(() => {
      displayMs = performance.now() - shownAt;
      $('trial').dataset.state = 'hidden';
      $('trial').dataset.displayMs = displayMs.toFixed(1);
      setChoices(true);
    });
  }

  async function choose(choice) {
    if (!accepting) return;
    setChoices(false);
    if (session.display_ms === 0) displayMs = performance.now() - shownAt;
    const r = await api('/api/answer', {token: session.token, trial: current.trial, choice, display_ms: displayMs});
    if (r.status === 422 || r.status === 409) {  // shown too briefly or too long / already recorded: ask again
      $('feedback').textContent = r.data.error || '';
      await sleep(1200);
      return next();
    }
    if (r.status !== 200) return fail(r.data.error || 'The answer was not accepted.');
    if (r.data.feedback) {
      const side = r.data.camera;
      $('feedback').className = r.data.feedback;
      // Names the camera's side either way: "Right: that one" read as "the right one".
      const verdict = r.data.feedback === 'right' ? 'Right' : 'Wrong';
      $('feedback').textContent = `${verdict}: the ${side} image is from a camera.`;
      await sleep(1500);
    }
    if (r.data.done) return finish(r.data.code);
    if (session.practice && current.position === session.practice - 1) {
      $('interlude-text').textContent = `Now ${session.total - session.practice} pairs, without feedback.`;
      return screen('interlude');
    }
    next();
  }

  // The token stays stored: a reloaded end page asks for the code again rather than starting over.
  function finish(code) {
    $('code').textContent = code;
    screen('end');
  }

  document.addEventListener('DOMContentLoaded', () => {
    fetch('/api/info', {cache: 'no-store'}).then((r) => r.json()).then((info) => {
      for (const el of document.querySelectorAll('[data-question]')) el.textContent = info.question;
      if (worker) $('instructions').textContent = info.instructions;
    }).catch(() => {});
    if (!worker) $('instructions').textContent = 'This link is missing its worker id (?worker=ID).';
    if (worker && localStorage.getItem(storageKey)) {  // a finished session's reloaded end page shows its code
      api('/api/session', {worker, sig, token: localStorage.getItem(storageKey)}).then((r) => {
        if (r.status === 200 && r.data.done) finish(r.data.code);
      }).catch(() => {});
    }
    $('start').disabled = !worker;
    $('start').addEventListener('click', start);
    $('continue').addEventListener('click', () => { screen('trial'); next(); });
    for (const side of ['left', 'right']) {
      $(side).addEventListener('click', () => choose(side));
      $('choose-' + side).addEventListener('click', () => choose(side));
    }
    document.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowLeft') choose('left');
      else if (e.key === 'ArrowRight') choose('right');
    });
  });
})();
