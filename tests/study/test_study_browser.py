"""A real browser through whole study sessions: the distribution's headless Chromium driven by Selenium against
`launch/study.py serve`. Practice feedback appears, each pair disappears after one second (timed in the page by a
requestAnimationFrame probe independent of the app's own measurement), answers land in the database, and a session
that misses a golden question is discarded."""

import os
import sqlite3

import numpy as np
import pytest
import skimage.data
from PIL import Image

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
  pytest.skip(
    f'needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)', allow_module_level=True
  )
pytest.importorskip('selenium', reason="needs pip install -e '.[test]'")
pytest.importorskip('uvicorn', reason="the study server needs pip install -e '.[study]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from common.study import manifest, storage  # noqa: E402
from tests.study.helpers import Server  # noqa: E402

pytestmark = pytest.mark.slow  # Drives the real server in a browser (pyproject.toml's markers).

PROBE = """
window.__shown = [];
let last = 0, since = 0;
(function probe() {
  const n = document.querySelectorAll('#pair img').length, t = performance.now();
  if (n === 2 && last !== 2) since = t;
  if (n !== 2 && last === 2) window.__shown.push(t - since);
  last = n;
  requestAnimationFrame(probe);
})();
"""


def _photo_study(out):
  """Crops of scikit-image's photos at 32x32 (the truth), their 8x8 inputs enlarged by nearest neighbour (the
  'algorithm') and by bicubic (golden), shown 4x: 128x128 on the page."""
  truth, blocky, smooth = [], [], []
  for name in ('astronaut', 'chelsea', 'coffee', 'rocket'):
    photo = Image.fromarray(getattr(skimage.data, name)()).convert('RGB')
    for k in range(3):
      side = min(photo.size) // (k + 1)
      crop = photo.crop((0, 0, side, side)).resize((32, 32), Image.BICUBIC)
      small = crop.resize((8, 8), Image.BICUBIC)
      truth.append(np.asarray(crop))
      blocky.append(np.asarray(small.resize((32, 32), Image.NEAREST)))
      smooth.append(np.asarray(small.resize((32, 32), Image.BICUBIC)))
  return manifest.write_fooled(
    str(out),
    np.stack(truth),
    {'NN': np.stack(blocky), 'Bicubic': np.stack(smooth)},
    scale=4,
    arms=['NN'],
    practice_pairs=3,
    main_pairs=6,
    golden_pairs=2,
    workers_per_arm=5,
    display_ms=1000,
  )


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    '--window-size=900,640',
    f'--user-data-dir={tmp_path_factory.mktemp("chromium")}',
  ):
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
  yield driver
  driver.quit()


def _current(study, worker):
  db = sqlite3.connect(f'file:{os.path.join(study, storage.DATABASE)}?mode=ro', uri=True)
  try:
    return db.execute(
      'SELECT t.kind, t.left_label, t.position FROM trials t JOIN sessions s ON s.id = t.session_id '
      'WHERE s.worker = ? AND t.position = s.answered',
      (worker,),
    ).fetchone()
  finally:
    db.close()


def _session(driver, server, study, worker, *, miss_golden=False, wrong_practice=(), screenshot=None, reload_at=None):
  wait = WebDriverWait(driver, 30, poll_frequency=0.02)
  driver.get(f'{server.url}/?worker={worker}')
  driver.execute_script(PROBE)
  wait.until(lambda d: d.find_element(By.ID, 'start').is_enabled())
  wait.until(lambda d: 'It takes about' in d.find_element(By.ID, 'intro').text)
  intro = driver.find_element(By.ID, 'intro').text
  assert manifest.FOOLED_QUESTION in intro and 'You will see 9 pairs of images' in intro
  driver.find_element(By.ID, 'start').click()
  feedback, buttons_while_shown = [], []
  for n in range(9):
    wait.until(
      lambda d: (
        d.find_element(By.ID, 'trial').get_attribute('data-state') == 'shown'
        and len(d.find_elements(By.CSS_SELECTOR, '#pair img')) == 2
      )
    )
    buttons_while_shown.append(driver.find_element(By.ID, 'choose-left').is_enabled())
    if screenshot and n == 4:
      driver.save_screenshot(screenshot)
    kind, left_label, position = _current(study, worker)
    assert position == n
    truth = 'left' if left_label == manifest.TRUTH else 'right'
    wrong = 'right' if truth == 'left' else 'left'
    choice = wrong if (kind == 'golden' and miss_golden) or n in wrong_practice else truth
    wait.until(lambda d: d.find_element(By.ID, 'choose-left').is_enabled())
    assert not driver.find_elements(By.CSS_SELECTOR, '#pair img')  # hidden before the answer
    if n == reload_at:  # a reload after the pair was shown: Start resumes at the same pair, shown again
      driver.refresh()
      wait.until(lambda d: d.find_element(By.ID, 'start').is_enabled())
      driver.find_element(By.ID, 'start').click()
      wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#pair img')) == 2)
      wait.until(lambda d: d.find_element(By.ID, 'choose-left').is_enabled())
      assert _current(study, worker)[2] == n
    if n % 2:
      driver.find_element(By.TAG_NAME, 'body').send_keys(Keys.ARROW_LEFT if choice == 'left' else Keys.ARROW_RIGHT)
    else:
      driver.find_element(By.ID, f'choose-{choice}').click()
    if n < 3:
      wait.until(lambda d: d.find_element(By.ID, 'feedback').text)
      feedback.append((driver.find_element(By.ID, 'feedback').text, truth))
    if n == 2:
      wait.until(lambda d: d.find_element(By.ID, 'interlude').is_displayed())
      driver.find_element(By.ID, 'continue').click()
  wait.until(lambda d: d.find_element(By.ID, 'end').is_displayed())
  code, shown_ms = driver.find_element(By.ID, 'code').text, driver.execute_script('return window.__shown')
  # A reloaded end page shows the same code again (it used to offer Start, which said "already taken part").
  driver.refresh()
  wait.until(lambda d: d.find_element(By.ID, 'end').is_displayed() and d.find_element(By.ID, 'code').text)
  assert driver.find_element(By.ID, 'code').text == code
  return {
    'feedback': feedback,
    'shown_ms': shown_ms,
    'buttons_while_shown': buttons_while_shown,
    'code': code,
  }


def test_whole_sessions_in_a_real_browser(tmp_path, browser):
  study = str(tmp_path / 's')
  _photo_study(study)
  server = Server(study)
  try:
    careful = _session(browser, server, study, 'careful', wrong_practice=(1,))
    careless = _session(
      browser, server, study, 'careless', miss_golden=True, screenshot=str(tmp_path / 'study_trial.png'), reload_at=5
    )
  finally:
    server.stop()
  # The feedback names the camera's side, whichever was clicked.
  assert [text for text, _ in careful['feedback']] == [
    f'{verdict}: the {truth} image is from a camera.'
    for verdict, (_, truth) in zip(('Right', 'Wrong', 'Right'), careful['feedback'])
  ]
  assert not any(careful['buttons_while_shown'])  # no answer while the pair is on screen
  # Every pair was on screen for one second, as the page's own frames saw it.
  assert len(careful['shown_ms']) == 9 and all(950 <= t <= 1500 for t in careful['shown_ms']), careful['shown_ms']
  db = sqlite3.connect(os.path.join(study, storage.DATABASE))
  rows = db.execute(
    'SELECT s.worker, s.status, s.code, COUNT(a.trial_id), MIN(a.display_ms), MAX(a.display_ms), s.reshown '
    'FROM sessions s JOIN answers a ON a.session_id = s.id GROUP BY s.id ORDER BY s.id'
  ).fetchall()
  assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
    ('careful', 'complete', careful['code'], 9),
    ('careless', 'discarded', careless['code'], 9),
  ]
  assert all(r[4] >= 950 and r[5] <= 1500 for r in rows)
  assert [r[6] for r in rows] == [0, 1]  # the reload showed a pair again, and the server counted it
  # On a phone-sized screen the pair still sits side by side, inside the screen.
  server.start()
  try:
    browser.set_window_size(360, 740)
    browser.get(f'{server.url}/?worker=phone')
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, 'start').is_enabled())
    browser.find_element(By.ID, 'start').click()
    WebDriverWait(browser, 30, poll_frequency=0.02).until(
      lambda d: len(d.find_elements(By.CSS_SELECTOR, '#pair img')) == 2
    )
    width = browser.execute_script('return document.documentElement.clientWidth')
    left, right = (browser.find_element(By.ID, side).rect for side in ('left', 'right'))
    assert left['x'] >= 0 and left['x'] + left['width'] <= right['x'] and right['x'] + right['width'] <= width
    assert left['y'] == right['y'] and left['width'] == right['width'] > 100
  finally:
    server.stop()
  with Image.open(tmp_path / 'study_trial.png') as shot:
    assert shot.size[0] >= 800
