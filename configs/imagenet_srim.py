"""SRIM (conditional IMLE) on the paper's ImageNet subset, 32x32 -> 64x64 -> 128x128 (x4): section 3.

  python launch/train.py --config=configs/imagenet_srim.py --workdir=runs/srim \
      --config.data.folder=/data/srim_imagenet \
      --config.vgg.weights_path=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
  python launch/train.py --config=configs/imagenet_srim.py:port ...           # the authors' PyTorch port's choices
  python launch/train.py --config=configs/imagenet_srim.py:runlocal ...       # tiny smoke run (still needs the folder)

Meant for one modern GPU (the paper does not say; the port trains on one): 500k steps of batch 16, a selection of
640 images x 100 noises x 2 stages every 20k steps. Compare with table 1 (PSNR / SSIM on luminance vs bicubic and
SRGAN) and figures 4-7 (samples; several per input in figure 7).

Data: 20 ImageNet (ILSVRC2012) classes x 150 images; each image scaled anisotropically (no crop) to 128x128, the
input bicubic-downsampled to 32x32; train and test images disjoint; test images from the training classes and from
classes never seen in training (the human study takes 10 of each). The paper does not list its classes. tfds'
`imagenet2012` needs the ILSVRC2012 tars downloaded by hand and holds all 1000 classes, so the default source is an
image folder, one subfolder per class: the first 167 training images of the first 30 classes (sorted WordNet ids),
of which the last 10 (config.data.num_unseen_classes) are never trained on:

  for c in $(ls /data/ILSVRC2012/train | head -30); do mkdir -p /data/srim_imagenet/$c
    ls /data/ILSVRC2012/train/$c/*.JPEG | head -167 | xargs cp -t /data/srim_imagenet/$c; done

Of each of the 20 seen classes, a fixed 10% of the files (config.data.eval_fraction, per class) is held out: 17 of
167, the split 'eval' (340 images), which leaves the paper's 150 per class, 3,000 images, to training; the 10
unseen classes are the split 'eval_unseen'. (A folder of 150 per class would train on 135 per class, 2,700.) The full
tfds dataset instead: --config.data.source=tfds --config.data.name=imagenet2012 --config.data.manual_dir=<dir with
the tars> --config.data.num_unseen_classes=0.

Without --config.vgg.weights_path the distance uses untrained VGG19 features (the run says so once).
"""

import dataclasses

import ml_collections

from common import optim
from configs import defaults


def srim_config() -> ml_collections.ConfigDict:
  """Every field of a SRIM run, with the paper's values (the port's where the paper is silent)."""
  c = ml_collections.ConfigDict()
  c.method = 'srim'  # Trained by imle.train.
  c.seed = 0  # Parameter init, data order, pools and noises all derive from it.
  c.data = defaults.data_config()
  c.data.update(
    source='folder',
    name='imagenet2012',
    eval_split='validation',
    crop='none',
    highres_size=128,
    lowres_size=32,
    num_eval_examples=0,
    eval_fraction=0.1,
  )  # 17 of each class's 167 files (docstring)
  # The paper tests on its 20 training classes and on classes unseen in training; it does not say how many unseen
  # classes, but its human study takes one image from each of 10 seen and 10 unseen classes. So the last 10 class
  # subfolders are held out (the folder of the docstring holds 30); 0 trains on every class of the folder.
  c.data.num_unseen_classes = 10
  c.data.augment = 'none'  # Paper: none. Port: 'flip_rot90' (random flips and 90-degree rotations).
  c.model = ml_collections.ConfigDict(
    dict(  # Fields of imle.models.SRIMConfig (documented there).
      num_stages=2,  # Two x2 stages (section 2.3).
      num_convs=9,  # Convolutions per stage (section 2.5).
      channels=64,  # Port (the paper's number was lost).
      kernel_size=5,  # Port.
      noise_channels=5,  # Port: 5 channels of N(0, 1) at each stage's output resolution.
      norm='batch',  # Paper: batch norm between convs. Port: 'weight'.
      activation='relu',  # Paper. Port: 'leaky_relu'.
      leaky_relu_slope=0.2,  # Port, when activation='leaky_relu'.
      batch_norm_momentum=0.9,  # Decay of the running averages used in selection and sampling (torch's 0.1).
      batch_norm_epsilon=1e-5,
      init='default',  # Paper (silent): Flax's default conv init. Port: 'normal', N(0, init_stddev).
      # With init='normal'. 0.02 is the std of BasicSR's normal init, whose code the port builds on.
      init_stddev=0.02,
    )
  )
  c.vgg = ml_collections.ConfigDict(
    dict(  # Fields of imle.vgg19.VGGConfig.
      weights_path='',  # Keras .h5 or converted torchvision .npz (docs/srim_and_srgan.md); '' = untrained (warns).
      random_seed=0,
    )
  )  # Seed of the untrained VGG19.
  c.features = ml_collections.ConfigDict(
    dict(  # Fields of imle.features.FeatureConfig (section 2.2).
      components=('pixels', 'conv2_2', 'conv4_4'),  # phi = [w0 pixels, w1 conv2_2, w2 conv4_4] (pre-activations).
      weights=(),  # () = w_i = 1 / mean |phi_i| on training images ("same order"); the port: (1e-3, 1.0, 0.1).
      selection_components=('pixels', 'conv2_2', 'conv4_4'),  # Paper: all of phi. Port: ('conv4_4',).
      loss='l2',  # Paper: squared L2. Port: 'l1' (weighted mean absolute differences).
      projection_dim=1024,  # Paper: random Gaussian projection of the VGG features (its D was lost). Port: 0.
      projection_seed=0,
      num_weight_estimation_images=64,
      weights_tuned_for='',  # Port: 'torch', its weights were tuned on torchvision's VGG19 (refuses a Keras .h5).
      # 'bfloat16': the pool selection's VGG19 features and projection in bf16 (faster on GPU/TPU; the training loss
      # and the evaluation stay float32). benchmarks/imle_step.py --agreement measures the choices it changes.
      selection_dtype='float32',
    )
  )
  c.imle = ml_collections.ConfigDict(
    dict(  # Fields of imle.imle.IMLEConfig (section 2.4; numbers from the port).
      pool_size=640,  # Images whose noises are selected together.
      steps_per_pool=20_000,  # Training steps per pool.
      num_candidates=100,  # m noises per image and stage.
      noise_perturbation=0.1,  # Chosen noises + 0.1 N(0, 1), once per pool.
      intermediate_loss_weight=0.0,  # Loss on the final output only (paper and port).
      candidates_per_chunk=25,  # Memory of the search: up to rows_per_chunk x this images at once per device.
      rows_per_chunk=8,
      eval_num_candidates=100,  # m of eval/distance_stage*: nearest of m samples to each held-out image.
      # 'bfloat16': the selection's candidate images computed in bf16 (2/3 of the round's FLOPs; VGG19 is
      # config.features.selection_dtype). Training and evaluation stay float32. See benchmarks/imle_step.py.
      candidate_dtype='float32',
    )
  )
  # Every field of common.optim.OptimizerConfig (documented there): Adam as the port, lr 1e-4 halved at 80k, 160k, ...
  c.optimizer = ml_collections.ConfigDict(
    dataclasses.asdict(
      optim.OptimizerConfig(name='adam', learning_rate=1e-4, lr_halve_at=(80_000, 160_000, 240_000, 320_000))
    )
  )
  c.batch_size = 16  # Global batch of pool rows per step (port), split over all devices.
  c.num_train_steps = 500_000  # Port.
  c.log_every_steps = 100  # Train metrics and progress (steps/s, ETA).
  c.eval_every_steps = 20_000  # Nearest-of-m distance on the held-out images; 0 = never.
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 20_000  # PNG grid low-res | samples | truth (<workdir>/samples, TensorBoard); 0 = never.
  c.num_sample_images = 8  # Rows of that grid.
  c.num_samples_per_image = 4  # Samples per row (figure 7 shows several per input).
  # Luma of launch/evaluate.py's table (common/metrics.py): 'daala', xiph/daala's tools as SRIM's footnote says;
  # 'bt601', MATLAB's rgb2ycbcr with an 11x11 SSIM window, the super-resolution literature's.
  c.metrics_convention = 'daala'
  c.profile_steps = ()  # (first, last): jax.profiler trace of those steps into <workdir>/profile; () = off.
  return c


def use_port_choices(c: ml_collections.ConfigDict) -> None:
  """The ':port' variant: where the authors' PyTorch port deviates from the paper (DESIGN.md)."""
  c.model.update(norm='weight', activation='leaky_relu', init='normal')
  c.features.update(
    selection_components=('conv4_4',), projection_dim=0, loss='l1', weights=(1e-3, 1.0, 0.1), weights_tuned_for='torch'
  )
  c.data.augment = 'flip_rot90'


def shrink_for_smoke_run(c: ml_collections.ConfigDict) -> None:
  """The ':runlocal' variant: the same code paths, tiny sizes, a few steps; a minute or two on a CPU."""
  # 6 -> 12 -> 24: XLA's CPU convolutions are ~20x slower at a 2x2 output, conv4_4's size for a 16-pixel image.
  c.data.update(highres_size=24, lowres_size=6, num_eval_examples=8)
  c.model.update(num_convs=3, channels=8)
  c.features.update(projection_dim=64, num_weight_estimation_images=8)
  c.imle.update(
    pool_size=8, steps_per_pool=5, num_candidates=4, candidates_per_chunk=2, rows_per_chunk=4, eval_num_candidates=4
  )
  c.batch_size = 4
  c.num_train_steps = 10
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 5
  c.num_sample_images = 2
  c.num_samples_per_image = 2


def get_config(arg: str | None = None):
  c = srim_config()
  variants = [a for a in (arg or '').split(',') if a]
  if set(variants) - {'port', 'runlocal'}:
    raise ValueError(f"configs/imagenet_srim.py takes 'port', 'runlocal' or 'port,runlocal', got {arg!r}")
  if 'port' in variants:
    use_port_choices(c)
  if 'runlocal' in variants:
    shrink_for_smoke_run(c)
  return c.lock()
