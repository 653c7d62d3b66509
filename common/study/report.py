"""A study's results from its database: "% Fooled" with intervals, figure 7 and the `table1.md` column (fooled);
SRIM's Table 2 (preference).

% Fooled of an algorithm is the fraction of counted answers, over its valid sessions, that chose the algorithm's
image as the one from a camera. Its 95% interval is a percentile bootstrap over workers (sessions resampled with
replacement), which keeps each worker's answers together: workers differ in how easily they are fooled, so answers
are not independent and a binomial interval over answers would be too narrow. Only sessions that answered every
golden question right and finished count; the others are reported as discarded or incomplete.
"""

import csv
import io
import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError
from common.study import manifest as manifest_lib
from common.study import protocols, storage

NUM_BOOTSTRAP = 10_000
FOOLED_COLUMN = '% Fooled'
MIN_WORKERS = 10  # valid workers per algorithm under which the report warns that its interval is too narrow


def _chosen(answer: dict) -> str:
  return answer['left_label'] if answer['choice'] == protocols.LEFT else answer['right_label']


def bootstrap_interval(
  fooled: np.ndarray, counted: np.ndarray, rng: np.random.Generator, num: int = NUM_BOOTSTRAP
) -> tuple[float, float]:
  """95% percentile interval of sum(fooled) / sum(counted) with sessions resampled with replacement."""
  if len(fooled) == 0:
    return float('nan'), float('nan')
  idx = rng.integers(len(fooled), size=(num, len(fooled)))
  rates = fooled[idx].sum(1) / counted[idx].sum(1)
  return float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


def valid_sessions(sessions: list[dict], approved: set[tuple[str, str]] | None) -> set[int]:
  """The ids of the sessions that count: finished with every golden question right, and, given a crowd platform's
  approved completions (access.read_approved), on that list."""
  return {
    s['id']
    for s in sessions
    if s['status'] == storage.COMPLETE and (approved is None or (s['worker'].lower(), s['code']) in approved)
  }


def fooled_rows(
  study: str, m: manifest_lib.Manifest, seed: int = 0, approved: set[tuple[str, str]] | None = None
) -> dict[str, dict]:
  """Per algorithm: sessions valid / discarded / incomplete / finished but not approved, counted answers, fooled,
  rate and its interval."""
  sessions, answers = storage.read_sessions(study), storage.read_answers(study)
  kept = valid_sessions(sessions, approved)
  rng = np.random.default_rng(seed)
  rows = {}
  for arm in m.arms:
    mine = [s for s in sessions if s['arm'] == arm]
    valid = {s['id'] for s in mine if s['id'] in kept}
    per_session = {sid: [0, 0] for sid in sorted(valid)}
    for a in answers:
      if a['session'] in valid and a['kind'] == protocols.COUNTED:
        per_session[a['session']][0] += _chosen(a) != manifest_lib.TRUTH
        per_session[a['session']][1] += 1
    fooled, counted = (np.array([v[k] for v in per_session.values()], np.int64) for k in (0, 1))
    lo, hi = bootstrap_interval(fooled, counted, rng)
    rows[arm] = {
      'valid': len(valid),
      'discarded': sum(s['status'] == storage.DISCARDED for s in mine),
      'reshown': sum(s['reshown'] > 0 for s in mine),
      'incomplete': sum(s['status'] == storage.ACTIVE for s in mine),
      'unapproved': sum(s['status'] == storage.COMPLETE and s['id'] not in kept for s in mine),
      'answers': int(counted.sum()),
      'fooled': int(fooled.sum()),
      'rate': fooled.sum() / counted.sum() if counted.sum() else float('nan'),
      'lo': lo,
      'hi': hi,
    }
  return rows


def image_ratings(study: str, approved: set[tuple[str, str]] | None = None) -> dict[tuple[str, int], tuple[int, int]]:
  """(algorithm, example) -> (times chosen over the truth, times shown), over the valid sessions' counted pairs."""
  ratings = {}
  counted = valid_sessions(storage.read_sessions(study), approved)
  for a in storage.read_answers(study):
    if a['session'] in counted and a['kind'] == protocols.COUNTED:
      key = (a['arm'], a['example'])
      chosen, shown = ratings.get(key, (0, 0))
      ratings[key] = (chosen + (_chosen(a) != manifest_lib.TRUTH), shown + 1)
  return ratings


def figure7(
  study: str, m: manifest_lib.Manifest, per_side: int = 4, approved: set[tuple[str, str]] | None = None
) -> np.ndarray | None:
  """Figure 7: per algorithm, its `per_side` best and worst rated images, each captioned with the fraction of
  times it was chosen over the truth (and out of how many). None before any valid answer."""
  ratings = image_ratings(study, approved)
  if not ratings:
    return None
  examples = {e.index: e for e in m.examples}
  h, w = m.image_size
  font = ImageFont.load_default()
  label_w, caption_h, pad = 110, 16, 6
  rows = []
  for arm in m.arms:
    rated = sorted(((c / n, n, ex) for (a, ex), (c, n) in ratings.items() if a == arm), key=lambda r: (-r[0], -r[1]))
    if rated:
      best = rated[:per_side]
      worst = rated[-per_side:] if len(rated) > per_side else []
      rows.append((arm, best, [r for r in worst if r not in best]))
  if not rows:
    return None
  cells = 2 * per_side + 1
  canvas = Image.new('RGB', (label_w + cells * (w + pad), len(rows) * (h + caption_h + pad) + 20), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((label_w, 2), 'best rated', fill='black', font=font)
  draw.text((label_w + (per_side + 1) * (w + pad), 2), 'worst rated', fill='black', font=font)
  for r, (arm, best, worst) in enumerate(rows):
    top = 20 + r * (h + caption_h + pad)
    draw.text((4, top + h // 2), arm, fill='black', font=font)
    for k, (fraction, n, ex) in [(k, x) for k, x in enumerate(best)] + [
      (per_side + 1 + k, x) for k, x in enumerate(worst)
    ]:
      left = label_w + k * (w + pad)
      with Image.open(manifest_lib.image_path(study, examples[ex].images[arm])) as im:
        canvas.paste(im.convert('RGB'), (left, top))
      draw.text((left, top + h + 2), f'{fraction:.2f} ({n})', fill='black', font=font)
  return np.asarray(canvas)


def _fraction(x: float) -> str:
  return 'n/a' if np.isnan(x) else f'{100 * x:.1f}'


def fooled_cell(row: dict) -> str:
  """The table1.md cell: percent with its 95% interval, e.g. '31.2 [26.0, 36.5]'."""
  if not row['answers']:
    return 'n/a'
  return f'{_fraction(row["rate"])} [{_fraction(row["lo"])}, {_fraction(row["hi"])}]'


def fooled_markdown(rows: dict[str, dict]) -> str:
  lines = [
    '| Algorithm | % Fooled | 95% interval | valid sessions | discarded | incomplete | counted answers |',
    '|---|---|---|---|---|---|---|',
  ]
  for arm, r in rows.items():
    lines.append(
      f'| {arm} | {_fraction(r["rate"])} | [{_fraction(r["lo"])}, {_fraction(r["hi"])}] | {r["valid"]} '
      f'| {r["discarded"]} | {r["incomplete"]} | {r["answers"]} |'
    )
  few = [f'{arm} ({r["valid"]})' for arm, r in rows.items() if r['valid'] < MIN_WORKERS]
  reshown = sum(r['reshown'] for r in rows.values())
  reshown_note = (
    f'- {reshown} sessions were shown a pair again (a reload shows the current pair again) and are discarded: '
    + ', '.join(f'{arm} {r["reshown"]}' for arm, r in rows.items())
    + '.\n'
    if reshown
    else ''
  )
  warning = (
    f'- Warning: fewer than {MIN_WORKERS} valid workers for {", ".join(few)}: the bootstrap interval then covers '
    'the true rate less often than 95% (0.87-0.91 of the time at 10 workers, 0.74-0.88 at 3, in simulation).\n'
    if few
    else ''
  )
  return (
    '\n'.join(lines)
    + (
      "\n\n- % Fooled: how often the algorithm's image was chosen as the one from a camera, "
      'over the counted pairs of valid sessions; 95% interval: percentile bootstrap over '
      f'workers ({NUM_BOOTSTRAP} resamples).\n'
    )
    + reshown_note
    + warning
  )


def _provenance(note: str) -> str:
  """A table 1 note without the run's path ('... of runs/x at step 5' -> '... at step 5'): a table written from
  `runs/x` and a study built from its absolute path describe the same model."""
  return re.sub(r' (of|from) .+? at step ', r' \1 the run at step ', note)


def check_provenance(text: str, m: manifest_lib.Manifest, path: str) -> None:
  """Refuses a table1.md whose notes do not describe the study's examples and models (e.g. a table of 128
  examples with NN over 20,000 training images, a study of 100 with NN over 512)."""
  ours = m.source.get('table1')
  if not ours:
    raise UserError(f'{path}: the study records no table 1 provenance to check it against; rebuild the study.')
  theirs = {_provenance(line[2:].strip()) for line in text.split('\n') if line.startswith('- ')}
  for note in ours:
    if _provenance(note) not in theirs:
      raise UserError(
        f'{path} describes other examples or models than the study (the study: "{note}", not in that table); '
        'rebuild the study with the same --num_examples and config, or pass --table1_dir of a matching table.'
      )


def merge_table1(text: str, rows: dict[str, dict]) -> str:
  """table1.md with its % Fooled column set from `rows` (added, or replaced when present); other rows get 'n/a'."""
  lines = text.split('\n')
  table = [i for i, line in enumerate(lines) if line.startswith('|')]
  if len(table) < 2:
    raise ValueError('no markdown table found')
  header = [c.strip() for c in lines[table[0]].strip('|').split('|')]
  column = header.index(FOOLED_COLUMN) if FOOLED_COLUMN in header else None
  for n, i in enumerate(table):
    cells = [c.strip() for c in lines[i].strip('|').split('|')]
    value = (
      FOOLED_COLUMN if n == 0 else '---' if n == 1 else fooled_cell(rows[cells[0]]) if cells[0] in rows else ('n/a')
    )
    if column is None:
      cells.append(value)
    else:
      cells[column] = value
    lines[i] = '| ' + ' | '.join(cells) + ' |' if n != 1 else '|' + '|'.join(cells) + '|'
  note = (
    '- % Fooled (human study, PRSR section 5.3): percent of counted pairs in which workers chose the '
    "algorithm's image as the one from a camera, with its 95% bootstrap interval over workers; valid sessions: "
    + ', '.join(f'{a} {r["valid"]}' for a, r in rows.items())
    + '.'
  )
  lines = [line for line in lines if not line.startswith('- % Fooled')]
  while lines and lines[-1] == '':
    lines.pop()
  return '\n'.join(lines + [note]) + '\n'


def preference_rows(
  study: str, m: manifest_lib.Manifest, approved: set[tuple[str, str]] | None = None
) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
  """SRIM's Table 2: (split, 'A vs B') -> method -> (mean, std across participants) of the proportion of that
  method's outputs chosen; split in 'seen', 'unseen', 'all'. Only finished sessions count."""
  per = {}  # (session, test, split) -> [chose first, pairs]
  counted = valid_sessions(storage.read_sessions(study), approved)
  for a in storage.read_answers(study):
    if a['session'] not in counted:
      continue
    first = a['test'].split(' vs ')[0]
    for split in (a['split'], 'all'):
      count = per.setdefault((a['session'], a['test'], split), [0, 0])
      count[0] += _chosen(a) == first
      count[1] += 1
  table = {}
  for first, second in m.tests:
    test = f'{first} vs {second}'
    for split in ('seen', 'unseen', 'all'):
      p = np.array([c / n for (s, t, sp), (c, n) in per.items() if t == test and sp == split])
      if len(p) == 0:
        continue
      std = float(p.std(ddof=1)) if len(p) > 1 else 0.0
      table[(split, test)] = {first: (float(p.mean()), std), second: (float(1 - p.mean()), std)}
  return table


def preference_markdown(table, m: manifest_lib.Manifest, participants: int) -> str:
  header = ['Data source'] + [f'Test {k + 1}: {name}' for k, pair in enumerate(m.tests) for name in pair]
  lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
  for split, title in (('seen', 'Seen classes'), ('unseen', 'Unseen classes'), ('all', 'All')):
    cells = []
    for first, second in m.tests:
      row = table.get((split, f'{first} vs {second}'))
      cells += ['n/a', 'n/a'] if row is None else [f'{row[x][0]:.3f} ± {row[x][1]:.3f}' for x in (first, second)]
    lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + (
    f'\n\n- {participants} participants with finished sessions; each cell: the proportion '
    "of that method's outputs chosen as more realistic, mean ± standard deviation across "
    'participants (SRIM Table 2).\n'
  )


def summary(study: str, approved: set[tuple[str, str]] | None = None) -> str:
  """The report as markdown (what `report` prints and /admin/report returns)."""
  m = manifest_lib.load(study)
  sessions = storage.read_sessions(study)
  counted = valid_sessions(sessions, approved)
  left_out = sum(s['status'] == storage.COMPLETE and s['id'] not in counted for s in sessions)
  note = (
    f'- Approved completions only: {len(counted)} finished sessions on the list count; {left_out} finished '
    'sessions not on it are left out.\n'
    if approved is not None
    else ''
  )
  if m.kind == manifest_lib.FOOLED:
    return fooled_markdown(fooled_rows(study, m, approved=approved)) + note
  return preference_markdown(preference_rows(study, m, approved), m, len(counted)) + note


def fooled_csv(rows: dict[str, dict]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  fields = ['valid', 'discarded', 'reshown', 'incomplete', 'unapproved', 'answers', 'fooled', 'rate', 'lo', 'hi']
  writer.writerow(['algorithm'] + fields)
  for arm, r in rows.items():
    writer.writerow([arm] + [r[f] for f in fields])
  return out.getvalue()


def _write(path: str, data: bytes) -> None:
  """Atomically: a reader sees the old file or the whole new one."""
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write(study: str, table1_dir: str = '', approved: set[tuple[str, str]] | None = None) -> list[str]:
  """report.md (+ fooled.csv, figure7.png) in the study; for a fooled study, the % Fooled column merged into
  `table1_dir`/table1.md when that file exists. Returns the paths written."""
  m = manifest_lib.load(study)
  table1 = os.path.join(table1_dir, 'table1.md') if table1_dir and m.kind == manifest_lib.FOOLED else ''
  table1_text = None
  if table1 and os.path.isfile(table1):
    with open(table1) as f:
      table1_text = f.read()
    check_provenance(table1_text, m, table1)  # before anything is written
  paths = [os.path.join(study, 'report.md')]
  _write(paths[0], summary(study, approved).encode())
  if m.kind != manifest_lib.FOOLED:
    return paths
  rows = fooled_rows(study, m, approved=approved)
  paths.append(os.path.join(study, 'fooled.csv'))
  _write(paths[-1], fooled_csv(rows).encode())
  figure = figure7(study, m, approved=approved)
  if figure is not None:
    out = io.BytesIO()
    Image.fromarray(figure).save(out, format='PNG')
    paths.append(os.path.join(study, 'figure7.png'))
    _write(paths[-1], out.getvalue())
  if table1_text is not None:
    _write(table1, merge_table1(table1_text, rows).encode())
    paths.append(table1)
  return paths
