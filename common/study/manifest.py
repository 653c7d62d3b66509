"""A study on disk: `manifest.json` (the protocol and what every image is) and `images/<id>.png`.

Image ids are random 128-bit hex strings and the manifest is never sent to a browser; the server hands out another
random token per trial and side, so nothing a worker receives names an algorithm or repeats between trials. Every
image is written by the same Pillow call from a bare array (no text, time or colour-profile chunks), enlarged by the
same nearest-neighbour factor, so the two images of a pair differ only in their pixels.
"""

import dataclasses
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from common.errors import UserError

MANIFEST = 'manifest.json'
IMAGES = 'images'
FORMAT = 1
FOOLED, PREFERENCE = 'fooled', 'preference'
FOOLED_QUESTION = 'Which image, would you guess, is from a camera?'
PREFERENCE_QUESTION = 'Which image looks more realistic?'
SRIM_TESTS = (('SRIM', 'SRGAN'), ('SRGAN', 'Bicubic'), ('SRIM', 'Bicubic'))
TRUTH = 'truth'
GOLDEN = 'Bicubic'  # the golden questions' algorithm (PRSR 5.3: a blurry bicubic upsample against the truth)
_ID = re.compile(r'[0-9a-f]{32}')
MIN_DISPLAY = 128  # CSS pixels on the shorter side: PRSR's 32x32 faces were judged at 4x


@dataclasses.dataclass(frozen=True)
class Example:
  """One input of the study: its images by label ('truth' or an algorithm's name) -> image id."""

  index: int
  images: dict[str, str]
  group: str = ''  # preference: the class
  split: str = ''  # preference: 'seen' or 'unseen'


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A study's protocol and images. Fooled: sessions are assigned to `arms` (algorithms); each has
  `practice_pairs` with feedback on the first examples, then `main_pairs` of which `golden_pairs` pit `golden`
  against the truth. Preference: one arm ('all'); each session holds, for each test, `pairs_per_split` pairs of
  seen and of unseen classes."""

  kind: str
  question: str
  display_ms: int  # each pair is shown this long, then hidden before the answer; 0: shown until answered
  scale: int  # nearest-neighbour enlargement applied to every image
  image_size: tuple[int, int]  # displayed (height, width) in pixels
  arms: tuple[str, ...]
  workers_per_arm: int
  examples: tuple[Example, ...]
  practice_pairs: int = 0
  main_pairs: int = 0
  golden_pairs: int = 0
  golden: str = ''
  tests: tuple[tuple[str, str], ...] = ()
  pairs_per_split: int = 0
  notes: tuple[str, ...] = ()
  source: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _check(self)

  def image_ids(self) -> set[str]:
    return {i for e in self.examples for i in e.images.values()}


def _check(m: Manifest) -> None:
  """A manifest the protocols can run, or a UserError naming what is missing."""

  def need(ok, message):
    if not ok:
      raise UserError(f'Study manifest: {message}.')

  need(m.kind in (FOOLED, PREFERENCE), f"kind must be '{FOOLED}' or '{PREFERENCE}', got {m.kind!r}")
  need(
    m.display_ms >= 0 and m.scale >= 1 and m.workers_per_arm >= 1,
    'display_ms >= 0, scale >= 1 and workers_per_arm >= 1 are required',
  )
  need(all(_ID.fullmatch(i) for e in m.examples for i in e.images.values()), 'image ids must be 32 hex digits')
  if m.kind == FOOLED:
    need(m.arms, 'no algorithms to study')
    # Its counted pairs would be golden ones: a worker it fooled once is discarded, so its rate is biased to 0.
    need(m.golden not in m.arms, f"{m.golden!r}, the golden questions' algorithm, cannot also be studied")
    need(0 <= m.golden_pairs <= m.main_pairs and m.practice_pairs >= 0, 'golden_pairs must be in [0, main_pairs]')
    need(
      all({TRUTH, m.golden, *m.arms} <= e.images.keys() for e in m.examples),
      f'every example needs the truth, {m.golden!r} and {list(m.arms)}',
    )
    need(
      len(m.examples) >= m.practice_pairs + m.main_pairs,
      f'{len(m.examples)} examples are fewer than practice_pairs + main_pairs = {m.practice_pairs + m.main_pairs} '
      '(every pair of a session shows a different example); build with more --num_examples',
    )
  else:
    need(
      m.arms == ('all',) and m.tests and m.pairs_per_split >= 1,
      'a preference study has arms ("all",), tests and pairs_per_split >= 1',
    )
    for a, b in m.tests:
      for split in ('seen', 'unseen'):
        classes = {e.group for e in m.examples if e.split == split and {a, b} <= e.images.keys()}
        need(
          len(classes) >= m.pairs_per_split,
          f'test {a} vs {b} needs {m.pairs_per_split} {split} classes (each '
          f'pair from a different class), the study has {len(classes)}',
        )


def to_json(m: Manifest) -> dict:
  return dataclasses.asdict(m) | {'format': FORMAT}


def from_json(data: dict) -> Manifest:
  data = dict(data)
  if data.pop('format', None) != FORMAT:
    raise UserError(f'Study manifest: format {FORMAT} expected; rebuild the study with this version.')
  data['examples'] = tuple(Example(**e) for e in data['examples'])
  for field in ('arms', 'notes'):
    data[field] = tuple(data[field])
  data['image_size'] = tuple(data['image_size'])
  data['tests'] = tuple(tuple(t) for t in data['tests'])
  return Manifest(**data)


def load(study: str) -> Manifest:
  path = os.path.join(study, MANIFEST)
  if not os.path.isfile(path):
    raise UserError(f'{study} is not a study ({MANIFEST} missing); make one with `python launch/study.py build`.')
  try:
    with open(path) as f:
      m = from_json(json.load(f))
  except (ValueError, TypeError, KeyError) as e:
    raise UserError(f'{path} is not a valid study manifest ({e}); rebuild the study.') from None
  missing = [i for i in sorted(m.image_ids()) if not os.path.isfile(image_path(study, i))]
  if missing:
    raise UserError(
      f'{study}: {len(missing)} images of the manifest are missing (e.g. {missing[0]}.png); rebuild the study.'
    )
  return m


def image_path(study: str, image_id: str) -> str:
  """The file of an image id; the id is checked, so no request can name a path outside images/."""
  if not _ID.fullmatch(image_id):
    raise ValueError(f'not an image id: {image_id!r}')
  return os.path.join(study, IMAGES, f'{image_id}.png')


def encode_png(image: np.ndarray, scale: int) -> bytes:
  """uint8 (H, W, 3) -> PNG bytes of the image enlarged `scale` times by nearest neighbour, with no metadata."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'study images are uint8 (H, W, 3), got {image.dtype} {image.shape}')
  big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
  out = io.BytesIO()
  # A fresh image from the array carries no info; saving with no pnginfo/icc/exif writes IHDR, IDAT, IEND only.
  # Level 0 stores the pixels uncompressed, so every image of one size has the same byte length: a compressed size
  # would tell a smooth regression output from a detailed camera image to anyone watching the network traffic.
  Image.fromarray(np.ascontiguousarray(big), 'RGB').save(out, format='PNG', compress_level=0)
  return out.getvalue()


def display_scale(height: int, width: int, scale: int | None) -> tuple[int, list[str]]:
  """(`scale`, or by default the smallest that shows (height, width) images at MIN_DISPLAY CSS pixels or more;
  warnings): a 24-pixel stamp hides the very details a worker is asked to judge."""
  side = min(height, width)
  scale = scale or max(1, math.ceil(MIN_DISPLAY / side))
  if side * scale >= MIN_DISPLAY:
    return scale, []
  return scale, [
    f'Warning: images are shown at {width * scale}x{height * scale} CSS pixels, under {MIN_DISPLAY}: too small to '
    f'judge; --scale={math.ceil(MIN_DISPLAY / side)} shows them at {MIN_DISPLAY} or more.'
  ]


def check_out(out: str, scale: int | None) -> None:
  """Refuses, before any work, an --out that holds anything (a study there may hold answers) or a bad --scale."""
  if os.path.exists(os.path.join(out, MANIFEST)):
    raise UserError(f'{out} already holds a study (its answers live there too); choose a new --out.')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UserError(f'--out {out} exists and is not an empty folder; choose a new --out.')
  if scale is not None and scale < 1:
    raise UserError(f'--scale must be >= 1, got {scale}.')


class Writer:
  """Writes a new study into a staging folder beside `out`, moved into place only when complete: a build that
  fails leaves nothing, and an existing study (which may hold answers) is never overwritten."""

  def __init__(self, out: str, scale: int):
    check_out(out, scale)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    self.out, self.scale = out, scale
    self.staging = tempfile.mkdtemp(prefix='.study-', dir=parent)
    os.makedirs(os.path.join(self.staging, IMAGES))
    self.size = None

  def add(self, image: np.ndarray) -> str:
    """Stores an image and returns its new random id."""
    image = np.asarray(image)
    size = (image.shape[0] * self.scale, image.shape[1] * self.scale)
    if self.size is None:
      self.size = size
    elif size != self.size:
      raise UserError(
        f'Every image of a study must have one size (so that size tells nothing); got {size} and {self.size}.'
      )
    image_id = secrets.token_hex(16)
    with open(image_path(self.staging, image_id), 'wb') as f:
      f.write(encode_png(image, self.scale))
    return image_id

  def finish(self, **fields) -> Manifest:
    if self.size is None:
      raise UserError('A study needs at least one image; none was added.')
    m = Manifest(scale=self.scale, image_size=self.size, **fields)
    with open(os.path.join(self.staging, MANIFEST), 'w') as f:
      json.dump(to_json(m), f, indent=1)
    if os.path.isdir(self.out):
      os.rmdir(self.out)  # Empty, checked above.
    os.replace(self.staging, self.out)
    return m

  def abort(self) -> None:
    shutil.rmtree(self.staging, ignore_errors=True)


def write_fooled(
  out: str,
  truth: np.ndarray,
  outputs: dict[str, np.ndarray],
  *,
  scale: int,
  arms: list[str],
  golden: str = GOLDEN,
  practice_pairs: int = 10,
  main_pairs: int = 45,
  golden_pairs: int = 5,
  workers_per_arm: int = 40,
  display_ms: int = 1000,
  notes: tuple[str, ...] = (),
  source: dict | None = None,
) -> Manifest:
  """A "% Fooled" study of uint8 (N, H, W, 3) ground truths against each algorithm's (N, H, W, 3) outputs."""
  unknown = [a for a in [*arms, golden] if a not in outputs]
  if unknown:
    raise UserError(f'No images for {unknown}; the rows available are {sorted(outputs)}.')
  writer = Writer(out, scale)
  try:
    examples = tuple(
      Example(
        index=n,
        images={TRUTH: writer.add(truth[n])}
        | {name: writer.add(images[n]) for name, images in outputs.items() if name in (*arms, golden)},
      )
      for n in range(len(truth))
    )
    return writer.finish(
      kind=FOOLED,
      question=FOOLED_QUESTION,
      display_ms=display_ms,
      arms=tuple(arms),
      workers_per_arm=workers_per_arm,
      examples=examples,
      practice_pairs=practice_pairs,
      main_pairs=main_pairs,
      golden_pairs=golden_pairs,
      golden=golden,
      notes=tuple(notes),
      source=source or {},
    )
  except BaseException:
    writer.abort()
    raise


def write_preference(
  out: str,
  outputs: dict[str, np.ndarray],
  classes: list[str],
  splits: list[str],
  *,
  scale: int,
  tests=SRIM_TESTS,
  pairs_per_split: int = 10,
  participants: int = 31,
  display_ms: int = 0,
  notes: tuple[str, ...] = (),
  source: dict | None = None,
) -> Manifest:
  """A pairwise preference study: outputs[method] uint8 (N, H, W, 3), the class and 'seen'/'unseen' of each input."""
  writer = Writer(out, scale)
  try:
    examples = tuple(
      Example(
        index=n,
        images={name: writer.add(images[n]) for name, images in outputs.items()},
        group=str(classes[n]),
        split=splits[n],
      )
      for n in range(len(classes))
    )
    return writer.finish(
      kind=PREFERENCE,
      question=PREFERENCE_QUESTION,
      display_ms=display_ms,
      arms=('all',),
      workers_per_arm=participants,
      examples=examples,
      tests=tuple(tuple(t) for t in tests),
      pairs_per_split=pairs_per_split,
      notes=tuple(notes),
      source=source or {},
    )
  except BaseException:
    writer.abort()
    raise
