"""A user's own images as model inputs: the same crop and resize as the training data, said out loud."""

import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

from common import images

_RESIZE_WORDS = {
  'antialiased': 'bicubic, antialiased',
  'no_antialias': 'bicubic',
  'tf1': "bicubic, TF1's resize_bicubic",
}


def to_model_input(image: np.ndarray, data_cfg, num_colours: int) -> tuple[np.ndarray, str]:
  """uint8 (H, W, 3) of any size -> uint8 (lowres_size, lowres_size, num_colours) and a sentence saying what was done.

  The training data's path (common.data): the largest centred square, an antialiased bicubic resize to the high-res
  size, then the bicubic resize to the low-res size that made the training inputs (config.data.resize; each rounded
  to uint8). An image no larger than the low-res size is resized to it directly. Greyscale models get the ITU-R 601
  luma, as Pillow's 'L' mode.
  """
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  x, steps = image[top : top + side, left : left + side], [f'{w}x{h}']
  if (h, w) != (side, side):
    steps.append(f'centre crop {side}x{side}')
  sizes = [data_cfg.highres_size, data_cfg.lowres_size] if side > data_cfg.lowres_size else [data_cfg.lowres_size]
  for size, method in zip(sizes, ['antialiased', data_cfg.resize] if len(sizes) == 2 else ['antialiased']):
    if x.shape[0] != size:
      x = np.asarray(images.downsample(x, size, method=method))
      steps.append(f'resize to {size}x{size} ({_RESIZE_WORDS[method]})')
  if num_colours == 1:
    x = np.round(x.astype(np.float64) @ np.array([299, 587, 114]) / 1000).astype(np.uint8)[..., None]
    steps.append('grey (ITU-R 601 luma)')
  return x.astype(np.uint8), ' -> '.join(steps)


def write_all_or_nothing(output: str, write: Callable[[str], None]) -> list[str]:
  """Runs `write(folder)` on a fresh temporary folder beside `output`, then moves every file it wrote into
  `output`: an error while writing leaves `output` as it was. Returns the moved file names."""
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.partial-', dir=parent)
  try:
    write(staging)
    os.makedirs(output, exist_ok=True)
    names = sorted(os.listdir(staging))
    for name in names:
      os.replace(os.path.join(staging, name), os.path.join(output, name))
    return names
  finally:
    shutil.rmtree(staging, ignore_errors=True)
