"""Scores of the space of super-resolutions, as the NTIRE 2021 challenge "Learning the Super-Resolution Space"
(Lugmayr, Danelljan, Timofte et al., CVPR workshops 2021) defines them in its toolkit (`measure.py` of
andreas128/NTIRE21_Learning_SR_Space): several samples of one input, each scored against the truth.

- Photo-realism proxy: LPIPS (AlexNet, v0.1, images on [-1, 1]) of each sample against the truth, as the mean of
  its spatial map; the mean over the samples.
- Diversity: with the spatial LPIPS maps of the samples, global best = the lowest mean map, local best = the mean
  over pixels of the per-pixel lowest map; score = (global best - local best) / global best x 100. Identical
  samples score 0; samples that are each right somewhere else score up to 100.
- Low-resolution consistency: LR-PSNR, the PSNR (uint8, peak 255, over all colours) between a sample and the truth
  both downscaled by the scale factor with MATLAB's bicubic imresize (common/imresize.py); the mean and the worst
  over the samples. A sample whose downscale equals the truth's scores +inf, as the toolkit's skimage PSNR does.
The challenge averages each score over its inputs; so does `mean`.
"""

import dataclasses

import numpy as np

from common import imresize, lpips

NET = 'alexnet'  # The toolkit's `lpips.LPIPS(spatial=True)`: AlexNet.
LR_PSNR_TARGET = 45.0  # dB: the challenge's bar for a consistent sample.


@dataclasses.dataclass(frozen=True)
class Scores:
  lpips: float  # Mean over the samples of each one's LPIPS against the truth.
  diversity: float  # Percent.
  lr_psnr_mean: float  # dB, +inf where every sample's downscale equals the truth's.
  lr_psnr_worst: float


def diversity(maps: np.ndarray) -> float:
  """The diversity score of one input's spatial LPIPS maps (n, H, W) of its n samples against the truth. A global
  best of 0 (a sample equal to the truth, to the network) leaves nothing to span: it scores 0."""
  maps = np.asarray(maps, np.float64)
  global_best = maps.mean(axis=(1, 2)).min()
  local_best = maps.min(axis=0).mean()
  return 0.0 if global_best <= 0 else float((global_best - local_best) / global_best * 100)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR of two uint8 images of one shape with peak 255, over every value; +inf for equal images."""
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def lr_psnr(sample: np.ndarray, truth: np.ndarray, scale: int) -> float:
  """LR-PSNR of a uint8 (H, W, 3) sample against the truth at `scale`x: both downscaled by MATLAB's imresize."""
  return psnr_uint8(imresize.imresize(sample, 1 / scale), imresize.imresize(truth, 1 / scale))


def score(samples: np.ndarray, truth: np.ndarray, scale: int) -> Scores:
  """The scores of one input: uint8 samples (n, H, W, 3) against the uint8 truth (H, W, 3), at `scale`x. A
  deterministic method passes its one output (n = 1): it spans nothing, diversity 0."""
  samples, truth = np.asarray(samples), np.asarray(truth)
  maps = lpips.spatial(samples, np.broadcast_to(truth, samples.shape), NET)
  psnrs = [lr_psnr(s, truth, scale) for s in samples]
  return Scores(
    lpips=float(maps.mean(axis=(1, 2), dtype=np.float64).mean()),
    diversity=diversity(maps),
    lr_psnr_mean=float(np.mean(psnrs)),
    lr_psnr_worst=float(np.min(psnrs)),
  )


def mean(scores: list[Scores]) -> Scores:
  """Each score's mean over the inputs, as the challenge's table."""
  fields = [f.name for f in dataclasses.fields(Scores)]
  return Scores(**{f: float(np.mean([getattr(s, f) for s in scores])) for f in fields})


def uncertainty(samples: np.ndarray) -> np.ndarray:
  """Per-pixel standard deviation across uint8 samples (n, H, W, C), in levels, averaged over colours: (H, W)."""
  return np.asarray(samples, np.float64).std(axis=0).mean(axis=-1)


# Matplotlib's 'inferno' at 0, 1/4, 1/2, 3/4 and 1 (black, purple, red, orange, pale yellow): ordered in lightness,
# so the map reads in grey too.
_INFERNO = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def heat_map(values: np.ndarray, vmax: float) -> np.ndarray:
  """(H, W) values -> uint8 (H, W, 3), 0 black through `vmax` (and above) pale yellow."""
  t = np.clip(np.asarray(values, np.float64) / max(vmax, 1e-12), 0.0, 1.0) * (len(_INFERNO) - 1)
  stops = np.arange(len(_INFERNO))
  rgb = np.stack([np.interp(t, stops, _INFERNO[:, c]) for c in range(3)], axis=-1)
  return np.round(rgb).astype(np.uint8)
