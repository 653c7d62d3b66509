"""Super-resolve your own images with a trained model (pixel recursive, SRIM or SRGAN).

  python launch/sample.py --workdir=runs/celeba --input=photos/ --num_samples=4 --temperature=1.0,1.2 --output=out

--workdir takes the latest checkpoint of a training run; --checkpoint=runs/celeba/checkpoints/200000 a given one.
Each input (any format and mode Pillow reads) is centre-cropped to a square and resized, antialiased bicubic, to the
model's low-res size. Written to --output: each sample as `<input>_tau<t>_<k>.png`, `grid.png` (one row per input:
input | samples | bicubic), and `nll.csv` with each sample's negative log-likelihood under the model (nan for SRIM,
which has none; SRIM also has no temperature). SRGAN is deterministic: one output per input, no temperature.

  python launch/sample.py --workdir=runs/srim --input=photo.jpg --output=out --whole_image [--tile=64 --overlap=-1]

--whole_image (SRIM and SRGAN): each input at its own size, x4, in overlapping tiles (imle/whole_image.py): memory
is one tile's whatever the image's size, and with --overlap at least the receptive radius (the default) the output
equals the untiled network's. SRIM's noise is one field per stage for the whole image. Written: `<input>_x4_<k>.png`.

  python launch/sample.py --workdir=runs/celeba --input=photo.png --output=out --whole_image [--max_pixels=262144]

--whole_image (pixel recursive): each input at its own size is the low-res image; the cached sampler draws the x4
output sub-pixel by sub-pixel (pixelsr/whole_image.py). It prints the sub-pixels and a time estimated from a timed
strip first, and refuses an output of more than --max_pixels pixels. Written: `<input>_x4_tau<t>_<k>.png`.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from common.cli import fail, parse_flags, quiet_logs, use_huge_pages  # noqa: E402  (after the path)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
MAX_PIXELS = 512 * 512  # --whole_image's default guard on the pixel recursive model's output size


def define_flags():
  flags.DEFINE_string('workdir', None, 'A training run: its config.json and latest checkpoint are used.')
  flags.DEFINE_string('checkpoint', None, 'Instead of --workdir: one checkpoint, <workdir>/checkpoints/<step>.')
  config_flags.DEFINE_config_file(
    'config',
    None,
    'Optional: the experiment config the run must have been trained with (a checkpoint of another config is refused).',
    lock_config=True,
  )
  flags.DEFINE_string('input', None, 'An image file, or a directory whose image files are all used.', required=True)
  flags.DEFINE_string('output', None, 'Directory for the samples, grid.png and nll.csv.', required=True)
  flags.DEFINE_integer('num_samples', 4, 'Samples per input and temperature.', lower_bound=1)
  flags.DEFINE_list('temperature', ['1.0'], "Comma-separated taus (they multiply the logits); 'inf' = greedy.")
  flags.DEFINE_integer('seed', 0, 'Random seed of the draws.')
  flags.DEFINE_integer(
    'batch_size', 32, 'Inputs per sampler call (each call draws batch_size * num_samples).', lower_bound=1
  )
  flags.DEFINE_bool(
    'whole_image',
    False,
    'Super-resolve each input at its own size (x4 of the whole image, no crop '
    'or resize): SRIM and SRGAN in overlapping tiles, the pixel recursive model with its cached '
    'sampler, sub-pixel by sub-pixel.',
  )
  flags.DEFINE_integer(
    'max_pixels',
    MAX_PIXELS,
    '--whole_image, pixel recursive: the largest output (pixels) it '
    'samples. Time and memory grow with it: one sequential step per sub-pixel, and 3 KiB of '
    'logits per pixel and sample (512x512, 4 samples: 3 GiB, minutes on a 2-core CPU).',
    lower_bound=1,
  )
  flags.DEFINE_integer(
    'tile', 64, '--whole_image: low-res pixels per tile side (memory grows with its square).', lower_bound=1
  )
  flags.DEFINE_enum(
    'pixel_kernel',
    None,
    ['xla', 'pallas'],
    "Pixel recursive runs: the cached sampler's colour "
    "passes (config.model.pixel_kernel), instead of the run's own; 'pallas' is one kernel per pass, "
    'for a GPU (pixelsr/fused_pixel.py). The samples are the same.',
  )
  flags.DEFINE_integer(
    'overlap',
    -1,
    '--whole_image: low-res pixels of context around each tile; -1 = the '
    "network's receptive radius, with which the output equals the untiled one.",
    lower_bound=-1,
  )


def input_files(path: str) -> list[str]:
  from common.errors import UserError

  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise UserError(f'--input={path} holds no image files ({", ".join(IMAGE_EXTENSIONS)}).')
    return files
  if not os.path.isfile(path):
    raise UserError(f'--input={path} does not exist; pass an image file or a directory of images.')
  return [path]


def run_dir_and_step(checkpoint_path: str | None, workdir: str | None) -> tuple[str, int | None]:
  from common.errors import UserError

  if (checkpoint_path is None) == (workdir is None):
    raise UserError('pass exactly one of --workdir (latest checkpoint) and --checkpoint (one step).')
  if workdir is not None:
    return workdir, None
  path = os.path.normpath(checkpoint_path)
  step, parent = os.path.basename(path), os.path.dirname(path)
  if not step.isdigit() or os.path.basename(parent) != 'checkpoints':
    raise UserError(
      f'--checkpoint={checkpoint_path} is not <workdir>/checkpoints/<step>; pass such a directory, '
      'or --workdir for the latest checkpoint.'
    )
  return os.path.dirname(parent), int(step)


def parse_temperatures(values: list[str]) -> list[float]:
  from common.errors import UserError

  try:
    taus = [float(v) for v in values]
  except ValueError:
    raise UserError(f"--temperature takes numbers or 'inf', got {','.join(values)}.") from None
  if not all(t > 0 for t in taus):
    raise UserError(f'--temperature values must be > 0, got {",".join(values)}.')
  return taus


def pixelcnn_sampler(config, workdir: str, step: int | None):
  """(colours, draw(lowres, key, tau, n) -> uint8 samples, nll(lowres, y) -> (bits/dim, nats)) of a pixelsr run."""
  import numpy as np

  from pixelsr import sampling, train

  model, variables = train.restore(config, workdir, step)

  def draw(lowres, key, temperature, num_samples):
    return sampling.sample(model, variables, lowres, key, temperature, num_samples)

  def nll(lowres, y):
    nats = -sampling.log_prob(model, variables, lowres, y)
    return np.asarray(sampling.bits_per_dim(-nats, y.shape[1:])), np.asarray(nats)

  return model.cfg.num_colours, draw, nll


def srim_sampler(config, workdir: str, step: int | None):
  """The same for an SRIM run: samples f(x, z) for fresh noises z; SRIM has no temperature and no likelihood."""
  from imle import models, train

  model, variables = train.restore(config, workdir, step)

  def draw(lowres, key, temperature, num_samples):
    del temperature
    samples = models.sample(model, variables, lowres, key, num_samples)
    return samples.reshape(-1, *samples.shape[2:])

  return 3, draw, None


def srgan_sampler(config, workdir: str, step: int | None):
  """The same for an SRGAN run: the generator's one output per input (batch norm in inference mode)."""
  from imle import srgan

  model, variables = srgan.restore(config, workdir, step)

  def draw(lowres, key, temperature, num_samples):
    del key, temperature, num_samples  # Deterministic; super_resolve asks for one output.
    return srgan.predict(model, variables, lowres)

  return 3, draw, None


SAMPLERS = {'pixelcnn': pixelcnn_sampler, 'srim': srim_sampler, 'srgan': srgan_sampler}


def run_config(workdir: str, expected_config, pixel_kernel: str | None):
  """The run's recorded config, checked against --config, with --pixel_kernel applied."""
  from common import checkpoint
  from common.errors import UserError
  from launch import methods

  config = checkpoint.load_config(workdir)
  if expected_config is not None:
    defaults = checkpoint.field_defaults(methods.module(expected_config.method).model_config(expected_config))
    checkpoint.check_config(workdir, expected_config, model_defaults=defaults, record=False)
  if pixel_kernel is not None:
    if config.method != 'pixelcnn':
      raise UserError(
        f'--pixel_kernel applies to pixel recursive runs; {workdir} is a config.method='
        f'{config.method!r} run: drop the flag.'
      )
    with config.unlocked():
      config.model.pixel_kernel = pixel_kernel
  return config


def super_resolve(
  *, workdir, step, expected_config, files, output, num_samples, temperatures, seed, batch_size, pixel_kernel=None
):
  import jax
  import numpy as np

  from common import images, progress, sharding, user_images
  from common.errors import UserError

  config = run_config(workdir, expected_config, pixel_kernel)
  if config.method not in SAMPLERS:
    raise UserError(
      f'{workdir} was trained with config.method={config.method!r}; launch/sample.py samples '
      f'{" and ".join(SAMPLERS)} runs.'
    )
  if config.method == 'srim' and temperatures != [1.0]:
    print('SRIM has no temperature: --temperature is ignored.')
    temperatures = [1.0]
  if config.method == 'srgan' and (temperatures != [1.0] or num_samples != 1):
    print('SRGAN is deterministic (one output per input, no temperature): --num_samples and --temperature are ignored.')
    temperatures, num_samples = [1.0], 1
  colours, draw, nll = SAMPLERS[config.method](config, workdir, step)
  names, lowres = [], []
  for path in files:
    x, how = user_images.to_model_input(images.load_image(path), config.data, colours)
    names.append(os.path.splitext(os.path.basename(path))[0])
    lowres.append(x)
    print(f'{path}: {how}')
  lowres = np.stack(lowres)
  mesh = sharding.data_mesh()
  per_call = -(-min(batch_size, len(lowres)) // mesh.size) * mesh.size  # a multiple of the device count

  samples, rows = [], []  # samples[t]: (inputs, num_samples, H, W, C)
  calls = [(t, start) for t in range(len(temperatures)) for start in range(0, len(lowres), per_call)]
  for t, start in progress.track(calls, desc='Sampling', unit='batch'):
    tau = temperatures[t]
    if start == 0:
      drawn = []
    chunk = lowres[start : start + per_call]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], per_call - len(chunk), 0)])
    x = jax.device_put(padded, sharding.batch_sharding(mesh))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), start)
    y = draw(x, key, tau, num_samples)
    bits, nats = nll(jax.numpy.repeat(x, num_samples, axis=0), y) if nll else (np.full(len(y), np.nan),) * 2
    keep = len(chunk) * num_samples
    drawn.append(np.asarray(y)[:keep].reshape(len(chunk), num_samples, *y.shape[1:]))
    for i in range(keep):
      n, k = start + i // num_samples, i % num_samples
      rows.append(
        dict(
          input=names[n],
          temperature=tau,
          sample=k,
          file=f'{names[n]}_tau{tau:g}_{k}.png',
          bits=float(bits[i]),
          nats=float(nats[i]),
          image=(t, n, k),
        )
      )
    if start + per_call >= len(lowres):
      samples.append(np.concatenate(drawn))

  for r in rows:
    nll_text = (
      f'NLL {r["bits"]:.3f} bits/dim ({r["nats"]:,.1f} nats)' if nll else f'no likelihood ({config.method.upper()})'
    )
    print(f'{r["input"]} tau={r["temperature"]:g} sample {r["sample"]}: {nll_text} -> {r["file"]}')
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(lowres, samples[0].shape[2:4])))
  columns = [lowres] + [s[:, k] for s in samples for k in range(num_samples)] + [bicubic]

  def write(folder):
    for r in rows:
      t, n, k = r['image']
      images.save_png(os.path.join(folder, r['file']), samples[t][n, k])
    images.save_png(os.path.join(folder, 'grid.png'), images.make_grid(columns))
    with open(os.path.join(folder, 'nll.csv'), 'w') as f:
      f.write('input,temperature,sample,file,nll_bits_per_dim,nll_nats\n')
      f.writelines(
        f'{r["input"]},{r["temperature"]:g},{r["sample"]},{r["file"]},{r["bits"]:.6f},{r["nats"]:.3f}\n' for r in rows
      )

  written = user_images.write_all_or_nothing(output, write)
  print(f'{len(written)} files in {output}: grid.png (input | samples by temperature | bicubic), nll.csv.')


def pixelcnn_whole_images(*, config, workdir, step, files, output, num_samples, temperatures, seed, max_pixels):
  """Each input at its own size as the low-res image of a pixel recursive run, its x<f> output drawn by the cached
  sampler: `<input>_x<f>_tau<t>_<k>.png`, sample k of temperature t of input n drawn with the key
  fold_in(fold_in(key(seed), n), t). Every input is measured against max_pixels before anything is drawn."""
  import jax
  import numpy as np

  from common import images, progress, user_images
  from common.errors import UserError
  from pixelsr import sampling, train
  from pixelsr import whole_image as pixel_whole_image

  model, variables = train.restore(config, workdir, step)
  cfg = model.cfg
  inputs = []
  for path in files:
    x = images.load_image(path)
    if cfg.num_colours == 1:  # ITU-R 601 luma, as Pillow's 'L' and user_images.to_model_input
      x = np.round(x.astype(np.float64) @ np.array([299, 587, 114]) / 1000).astype(np.uint8)[..., None]
    inputs.append((path, os.path.splitext(os.path.basename(path))[0], x))
  timing = pixel_whole_image.time_per_pixel(
    model, variables, inputs[0][2], temperatures[0], num_samples, jax.random.key(seed)
  )
  print(
    f'Timed on a strip: {1e3 * timing.seconds_per_pixel:.2f} ms per output pixel ({num_samples} samples side by '
    f'side), {timing.compile_seconds:.0f} s to compile.'
  )
  for path, _, x in inputs:
    height, width = x.shape[:2]
    out_h, out_w = pixel_whole_image.output_size(cfg, height, width)
    seconds = pixel_whole_image.estimate(cfg, timing, height, width, len(temperatures))
    figures = (
      f'{width}x{height} -> {out_w}x{out_h}: {out_h * out_w * cfg.num_colours:,} sub-pixels drawn one after '
      f'another ({num_samples} samples side by side, {len(temperatures)} temperature(s)), estimated '
      f'{pixel_whole_image.duration(seconds)}'
    )
    if out_h * out_w > max_pixels:
      raise UserError(
        f'{path}: {figures}; its {out_h * out_w:,} output pixels are over --max_pixels={max_pixels:,}. '
        'Pass a smaller image, or a larger --max_pixels to draw it anyway.'
      )
    print(f'{path}: {figures}.')
  results = {}
  calls = [(n, t) for n in range(len(inputs)) for t in range(len(temperatures))]
  for n, t in progress.track(calls, desc='Sampling', unit='image'):
    _, name, x = inputs[n]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), t)
    y = np.asarray(sampling.sample(model, variables, x[None], key, temperatures[t], num_samples))
    for k in range(num_samples):
      results[f'{name}_x{cfg.upsample_factor}_tau{temperatures[t]:g}_{k}.png'] = y[k]

  def write(folder):
    for file, image in results.items():
      images.save_png(os.path.join(folder, file), image)

  written = user_images.write_all_or_nothing(output, write)
  print(f'{len(written)} files in {output}.')


def whole_images(
  *,
  workdir,
  step,
  expected_config,
  files,
  output,
  num_samples,
  seed,
  tile,
  overlap,
  temperatures=(1.0,),
  max_pixels=MAX_PIXELS,
  pixel_kernel=None,
):
  """Each input super-resolved at its own size: by an SRIM or SRGAN run in tiles, `<input>_x<f>_<k>.png` per sample;
  by a pixel recursive run with the cached sampler (`pixelcnn_whole_images`)."""
  import jax

  from common import images, progress, user_images
  from common.errors import UserError
  from imle import whole_image

  config = run_config(workdir, expected_config, pixel_kernel)
  if config.method == 'pixelcnn':
    return pixelcnn_whole_images(
      config=config,
      workdir=workdir,
      step=step,
      files=files,
      output=output,
      num_samples=num_samples,
      temperatures=temperatures,
      seed=seed,
      max_pixels=max_pixels,
    )
  if config.method not in ('srim', 'srgan'):
    raise UserError(
      f'--whole_image takes pixel recursive, SRIM and SRGAN runs (fully convolutional); {workdir} is a '
      f'config.method={config.method!r} run: drop --whole_image to sample its training size.'
    )
  if config.method == 'srgan' and num_samples != 1:
    print('SRGAN is deterministic (one output per input): --num_samples is ignored.')
    num_samples = 1
  fn, factor, radius, noises = whole_image.for_run(config, workdir, step)
  if overlap < 0:
    overlap = radius
  elif overlap < radius:
    print(
      f'--overlap={overlap} is below the receptive radius ({radius} low-res pixels): seams between tiles will '
      'differ from the untiled output.'
    )
  results = {}
  for n, path in enumerate(files):
    x = images.load_image(path)
    name = os.path.splitext(os.path.basename(path))[0]
    height, width = x.shape[:2]
    print(f'{path}: {width}x{height} -> {width * factor}x{height * factor}, tiles of {tile} + {overlap} px context')
    for k in progress.track(range(num_samples), desc=f'{name}', unit='sample'):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), k)
      results[f'{name}_x{factor}_{k}.png'] = whole_image.super_resolve(
        fn, x, factor, tile=tile, overlap=overlap, noises=noises(key)
      )

  def write(folder):
    for file, image in results.items():
      images.save_png(os.path.join(folder, file), image)

  written = user_images.write_all_or_nothing(output, write)
  print(f'{len(written)} files in {output}.')


def main(argv):
  del argv
  quiet_logs()
  F = flags.FLAGS
  run(
    workdir=F.workdir,
    checkpoint=F.checkpoint,
    config=F.config,
    input=F.input,
    output=F.output,
    num_samples=F.num_samples,
    temperature=F.temperature,
    seed=F.seed,
    batch_size=F.batch_size,
    whole_image=F.whole_image,
    tile=F.tile,
    overlap=F.overlap,
    max_pixels=F.max_pixels,
    pixel_kernel=F.pixel_kernel,
  )


def run(
  *,
  workdir: str | None,
  checkpoint: str | None,
  config,
  input: str,
  output: str,
  num_samples: int = 4,
  temperature: list[str] = ('1.0',),
  seed: int = 0,
  batch_size: int = 32,
  whole_image: bool = False,
  tile: int = 64,
  overlap: int = -1,
  max_pixels: int = MAX_PIXELS,
  pixel_kernel: str | None = None,
):
  """The flags' values -> samples in `output`; a user error ends in one `error:` line and exit 1, writing nothing."""
  from common.errors import UserError
  from launch import methods

  try:
    if config is not None:  # Checked whole, naming the bad field, before any run is read.
      methods.module(config.method).check_config(config)
    workdir, step = run_dir_and_step(checkpoint, workdir)
    if whole_image:
      whole_images(
        workdir=workdir,
        step=step,
        expected_config=config,
        files=input_files(input),
        output=output,
        num_samples=num_samples,
        seed=seed,
        tile=tile,
        overlap=overlap,
        temperatures=parse_temperatures(list(temperature)),
        max_pixels=max_pixels,
        pixel_kernel=pixel_kernel,
      )
      return
    super_resolve(
      workdir=workdir,
      step=step,
      expected_config=config,
      files=input_files(input),
      output=output,
      num_samples=num_samples,
      temperatures=parse_temperatures(list(temperature)),
      seed=seed,
      batch_size=batch_size,
      pixel_kernel=pixel_kernel,
    )
  except UserError as e:
    fail(e, code=1)


if __name__ == '__main__':
  use_huge_pages()
  try:
    define_flags()
  except Exception as e:
    fail(e)
  app.run(main, flags_parser=parse_flags)
