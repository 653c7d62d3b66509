"""common.metrics' `daala` convention (SRIM's table 1) against xiph/daala's own tools, and against values worked out
by hand from their definitions.

The reference numbers come from daala's tools at commit 694d4ced7e97f349cd4f54dbfc8c8a69982a54e4, built with
  gcc -O2 -DHAVE_CONFIG_H -I. -o png2y4m png2y4m.c kiss99.c -lpng -lm
  gcc -O2 -DHAVE_CONFIG_H -I. -o dump_psnr dump_psnr.c vidinput.c y4m_input.c -lm   (and dump_ssim alike)
in a copy of tools/ with an empty config.h (libpng 1.6.39, libogg 1.3.5, gcc 12, x86-64), run on PNGs of
`reference_images()`:
  png2y4m -o x.y4m x.png;  dump_psnr -y truth.y4m degraded.y4m;  dump_ssim -y -r truth.y4m degraded.y4m
They change only if `reference_images()` does (numpy's Generator streams, scikit-image's sample photos).
With DAALA_TOOLS=<folder holding those three binaries>, `test_equals_the_built_tools_on_random_images` compares
many more images directly.
"""

import hashlib
import os
import subprocess

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

from common import images, metrics, validation
from common.errors import UserError

TOOLS = os.environ.get('DAALA_TOOLS', '')


def degrade(truth: np.ndarray, seed: int) -> np.ndarray:
  """A blurred, noisy copy: a 3x3 box blur plus integer noise in [-6, 6], rounded to uint8."""
  padded = np.pad(truth.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode='edge')
  h, w = truth.shape[:2]
  blurred = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
  noise = np.random.default_rng(seed).integers(-6, 7, truth.shape)
  return np.clip(np.round(blurred + noise), 0, 255).astype(np.uint8)


def reference_images() -> dict[str, np.ndarray]:
  """name -> uint8 (H, W, 3): random, a smooth gradient, two photo crops (128x128, and 45x67: odd, non-square)."""
  yy, xx = np.mgrid[:128, :128]
  return {
    'random': np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8),
    'gradient': np.stack([2 * xx, 2 * yy, 255 - xx - yy], axis=-1).astype(np.uint8),
    'astronaut': skimage.data.astronaut()[64:192, 160:288],
    'chelsea_45x67': skimage.data.chelsea()[100:145, 200:267],
  }


# name -> (sha256[:16] of png2y4m's Y' plane of the truth, of the degraded image, dump_psnr -y, dump_ssim -y -r).
REFERENCE = {
  'random': ('685f40fb56930369', 'e8aa1f73e78e3f31', 15.1189, 0.102461),
  'gradient': ('78b4d4de04513df5', 'bccf9a1441c6267d', 41.0169, 0.933941),
  'astronaut': ('b0ebbea6b23bc033', '0ab87ff76b63d1fa', 31.1837, 0.857229),
  'chelsea_45x67': ('729ce5841989cfdf', 'a545fca45a41d3dd', 31.379, 0.997733),  # 45 rows: a 1-tap window.
}


def y_plane_digest(y: np.ndarray) -> str:
  return hashlib.sha256(np.asarray(y, np.uint8).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_equals_daalas_tools_on_reference_images(name):
  truth = reference_images()[name]
  degraded = degrade(truth, seed=1)
  digest_truth, digest_degraded, psnr, ssim = REFERENCE[name]
  assert y_plane_digest(metrics._daala_y8(truth, 255.0)) == digest_truth
  assert y_plane_digest(metrics._daala_y8(degraded, 255.0)) == digest_degraded
  # The tools print 6 significant digits (pSNR to 1e-4 dB here, SSIM to 1e-6); float32 adds below 1e-5 dB, 1e-7.
  assert float(metrics.psnr_y(truth, degraded, convention='daala')) == pytest.approx(psnr, abs=6e-5)
  assert float(metrics.ssim_y(truth, degraded, convention='daala')) == pytest.approx(ssim, abs=6e-7)


def test_batched_and_jitted_equal_the_references():
  squares = [n for n in sorted(REFERENCE) if n != 'chelsea_45x67']
  truth = np.stack([reference_images()[n] for n in squares])
  degraded = np.stack([degrade(t, seed=1) for t in truth])
  shape = (len(squares), 1, 128, 128, 3)  # Two leading axes.
  scores = jax.jit(lambda a, b: (metrics.psnr_y(a, b, convention='daala'), metrics.ssim_y(a, b, convention='daala')))
  psnr, ssim = scores(truth.reshape(shape), degraded.reshape(shape))
  assert psnr.shape == ssim.shape == (len(squares), 1)
  np.testing.assert_allclose(psnr[:, 0], [REFERENCE[n][2] for n in squares], atol=6e-5)
  np.testing.assert_allclose(ssim[:, 0], [REFERENCE[n][3] for n in squares], atol=6e-7)
  # Floats on [0, 1] are the same 8-bit images.
  np.testing.assert_allclose(
    metrics.psnr_y(truth / 255, degraded / 255, max_val=1.0, convention='daala'), psnr[:, 0], rtol=1e-6
  )
  np.testing.assert_allclose(metrics.daala_luma(truth / 255, max_val=1.0), metrics.daala_luma(truth) / 255, atol=1e-6)


def uniform_blocks(colours) -> np.ndarray:
  """One 2x2 image of each RGB colour: a whole 4:2:0 block, so its chroma is the colour's own."""
  return np.tile(np.asarray(colours, np.uint8)[:, None, None, :], (1, 2, 2, 1))


def test_png2y4m_luma_without_dither_worked_by_hand():
  # Greys: Cb = Cr = 128 exactly (the BT.709 chroma weights of R, G, B sum to 0), so Y' is the nearest step of
  # 65535/219 to 257 v: 16 + round(219 v / 255), never a tie (219 v / 255 = 73 v / 85).
  greys = np.arange(256)
  y = np.asarray(metrics._daala_y8(uniform_blocks(np.stack([greys] * 3, -1)), 255.0, dither=False))
  np.testing.assert_array_equal(y[:, 0, 0], 16 + np.round(73 * greys / 85))
  assert list(y[[0, 128, 255], 0, 0]) == [16, 126, 235]
  # (255, 0, 0): 16-bit (65535, 0, 0); Cb - 128 = round(28 * 4 * -1063 * 65535 / 304016865) = round(-25.66) = -26,
  # Cr - 128 = round(28 * 4 * 3937 * 65535 / 258011295) = 112. BT.709 luma 16 + 219 * 0.2126 = 62.56: Y' 62 or 63.
  # Y' 62 rebuilds (65368, 0, 0) (G and B clamped from below 0), error 167^2 = 27889; Y' 63 rebuilds (65535, 150, 0),
  # error 150^2 = 22500: 63.
  # (108, 103, 7): 16-bit (27756, 26471, 1799); Cb - 128 = round(-42.67) = -43, Cr - 128 = round(6.06) = 6. BT.709
  # luma 16 + 73 L / 109225000 = 99.42 (L = 1063 R + 3576 G + 361 B = 124814363), so rounding would give 99. Y' 99
  # rebuilds (27602, 26372, 1493), error 154^2 + 99^2 + 306^2 = 127153; Y' 100 rebuilds (27901, 26672, 1793), error
  # 145^2 + 201^2 + 6^2 = 61462: png2y4m picks 100.
  y = np.asarray(metrics._daala_y8(uniform_blocks([(255, 0, 0), (108, 103, 7)]), 255.0, dither=False))
  assert y[:, 0, 0].tolist() == [63, 100]


def test_dither_makes_luma_unbiased():
  # png2y4m's dither is zero-mean triangular noise of +-1 quantiser step in Y', Cb and Cr: a grey's Y' scatters a
  # level or two about the nearest step, and its mean is the unrounded luma 16 + 219 v / 255 (away from black and
  # white, where the clamped reconstructions bias it), not the rounded one.
  levels = np.array([40, 128, 200])  # Unrounded Y' 50.35, 125.93, 187.76; rounded 50, 126, 188.
  greys = np.tile(levels.astype(np.uint8)[:, None, None, None], (1, 128, 128, 3))
  dithered = np.asarray(metrics._daala_y8(greys, 255.0))
  change = dithered - np.asarray(metrics._daala_y8(greys, 255.0, dither=False))
  assert np.abs(change).max() == 2 and np.mean(change != 0) > 0.3
  np.testing.assert_allclose(dithered.mean(axis=(1, 2)), 16 + 219 * levels / 255, atol=0.03)
  # At most the widths mapped to RGB: R (2 x 1223320000 + 3 x 1255654969) / 8176000 = 760, G 491, B 842 (16-bit).
  assert (np.abs(metrics._daala_dither(128, 128)).max(axis=(0, 1)) <= [760, 491, 842]).all()
  np.testing.assert_array_equal(metrics._daala_dither(45, 67), metrics._daala_dither(46, 68)[:45, :67])


def test_dump_ssim_window_worked_by_hand():
  # sigma = 1.5 x 128 / 256 = 0.75; taps round(256 exp(-k^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)):
  # 136.17 exp(-1 / 1.125) = 55.98 -> 56, 136.17 exp(-4 / 1.125) = 3.89 -> 4; cut at floor(0.75 sqrt(-2 ln(
  # sqrt(pi / 2) 0.75 / 256))) = floor(2.51) = 2 taps a side; the centre takes 256 - 2 (56 + 4) = 136.
  assert metrics._daala_ssim_kernel(0.75, 128) == (4, 56, 136, 56, 4)
  assert metrics._daala_ssim_kernel(1.5, 256) == (2, 9, 28, 55, 68, 55, 28, 9, 2)
  assert metrics._daala_ssim_kernel(1.5 * 28 / 256, 28) == (256,)  # The SRIM demo's 28 pixels: one tap.
  # Truncated at the borders: a row's weights sum to 196 = 136 + 56 + 4 at its ends, 252 next to them, then 256.
  sums = np.asarray(metrics._filter_truncated(np.ones(128, np.uint32), (4, 56, 136, 56, 4), axis=-1))
  assert sums[:3].tolist() == [196, 252, 256] and sums[-2:].tolist() == [252, 196]


def test_dump_ssim_closed_forms():
  rng = np.random.default_rng(3)
  plane = rng.integers(0, 256, (2, 128, 128))
  np.testing.assert_allclose(metrics._daala_ssim_plane(plane, plane), [1.0, 1.0], atol=1e-6)
  # Flat planes have no variance: SSIM is the luminance term (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 x 255)^2,
  # whatever the window: 22006.5025 / 22106.5025 for 100 against 110.
  flat = (2 * 100 * 110 + 6.5025) / (100**2 + 110**2 + 6.5025)
  for shape in ((128, 128), (28, 28), (45, 67)):
    assert float(metrics._daala_ssim_plane(np.full(shape, 100), np.full(shape, 110))) == pytest.approx(flat, abs=2e-7)
  # One tap (28 rows): each pixel alone; one pixel of 784 at 110 instead of 100.
  a, b = np.full((28, 28), 100), np.full((28, 28), 100)
  b[5, 7] = 110
  assert float(metrics._daala_ssim_plane(a, b)) == pytest.approx(1 - (1 - flat) / 784, abs=1e-7)


def test_dump_psnr_formula():
  truth = reference_images()['astronaut']
  assert float(metrics.psnr_y(truth, truth, convention='daala')) == np.inf  # dump_psnr prints INF.
  y = np.asarray(metrics._daala_y8(truth, 255.0))
  # 10 log10(255^2 N / SSE) on Y': one level off everywhere is 10 log10(255^2) = 48.13 dB.
  assert float(metrics.psnr(y[..., None], y[..., None] + 1)) == pytest.approx(48.1308036, abs=1e-5)


def test_srim_table_scores_and_names_its_convention(tmp_path):
  from configs import demo_srim
  from imle import evaluate

  assert evaluate.table_convention(demo_srim.get_config()) == 'daala'
  highres = np.stack([reference_images()['astronaut'][:28, :28], reference_images()['gradient'][:28, :28]])
  lowres = np.asarray(images.downsample(highres, (7, 7)))
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(lowres, (28, 28))))
  scores = {}
  for convention in ('daala', 'bt601'):
    table, _ = evaluate.score({}, lowres, highres, jax.random.key(0), convention=convention)
    scores[convention] = table['Bicubic']
    psnr = metrics.psnr_y(bicubic, highres, convention=convention)
    ssim = metrics.ssim_y(bicubic, highres, convention=convention)
    assert table['Bicubic']['psnr_y'] == pytest.approx(float(np.mean(psnr)), rel=1e-6)
    assert table['Bicubic']['ssim_y'] == pytest.approx(float(np.mean(ssim)), rel=1e-6)
    evaluate.write({'held-out': table}, str(tmp_path / convention), 'Note.', convention=convention)
    assert evaluate.CONVENTION_NOTES[convention] in (tmp_path / convention / 'table_srim.md').read_text()
  assert scores['daala']['ssim_y'] > scores['bt601']['ssim_y'] + 0.05  # 28 pixels: daala's one-pixel window.
  # An exact match counts as one pixel one level off: 10 log10(255^2 x 28 x 28) dB, whichever the luma.
  assert float(evaluate.psnr_y(highres, highres, 'daala')[0]) == pytest.approx(10 * np.log10(255**2 * 784))


def test_unknown_conventions_are_refused():
  image = np.zeros((1, 16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match="Unknown luma convention 'bt709'"):
    metrics.psnr_y(image, image, convention='bt709')
  from configs import imagenet_srgan, imagenet_srim

  for config in (imagenet_srim.get_config(), imagenet_srgan.get_config()):
    assert config.metrics_convention == 'daala'
    config.metrics_convention = 'bt709'
    with pytest.raises(UserError, match=r"config.metrics_convention must be one of \['daala', 'bt601'\]"):
      validation.check_values(config)


@pytest.mark.skipif(
  not TOOLS,
  reason="set DAALA_TOOLS to a folder with daala's png2y4m, dump_psnr and dump_ssim "
  'built (module docstring) to compare against them directly',
)
def test_equals_the_built_tools_on_random_images(tmp_path):
  def run(tool, *args):
    return subprocess.run([os.path.join(TOOLS, tool), *args], check=True, capture_output=True, text=True).stdout

  def to_y4m(image, name):
    Image.fromarray(image).save(tmp_path / f'{name}.png')
    run('png2y4m', '-o', str(tmp_path / f'{name}.y4m'), str(tmp_path / f'{name}.png'))
    data = (tmp_path / f'{name}.y4m').read_bytes()
    start = data.index(b'FRAME\n') + len(b'FRAME\n')
    return str(tmp_path / f'{name}.y4m'), np.frombuffer(data[start : start + image[..., 0].size], np.uint8)

  rng = np.random.default_rng(0)
  for h, w in ((128, 128), (1, 1), (7, 9), (28, 28), (64, 48), (53, 37)):
    for saturated in (False, True):  # Saturated colours reach png2y4m's out-of-gamut reconstructions.
      truth = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      if saturated:
        truth = np.where(truth < 128, 0, 255).astype(np.uint8)
      degraded = degrade(truth, seed=h * w)
      (path_a, y_a), (path_b, y_b) = to_y4m(truth, 'a'), to_y4m(degraded, 'b')
      np.testing.assert_array_equal(np.asarray(metrics._daala_y8(truth, 255.0)).ravel(), y_a)
      np.testing.assert_array_equal(np.asarray(metrics._daala_y8(degraded, 255.0)).ravel(), y_b)
      psnr = float(run('dump_psnr', '-y', path_a, path_b).split()[-1])
      ssim = float(run('dump_ssim', '-y', '-r', path_a, path_b).split()[-1])
      assert float(metrics.psnr_y(truth, degraded, convention='daala')) == pytest.approx(psnr, abs=6e-5)
      assert float(metrics.ssim_y(truth, degraded, convention='daala')) == pytest.approx(ssim, abs=6e-7)
