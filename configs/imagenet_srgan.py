"""SRGAN (Ledig et al. 2017), SRIM's comparison baseline, on SRIM's data: 32x32 -> 128x128 (x4).

  python launch/train.py --config=configs/imagenet_srgan.py --workdir=runs/srgan \
      --config.data.folder=/data/srim_imagenet \
      --config.vgg.weights_path=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
  python launch/train.py --config=configs/imagenet_srgan.py:runlocal ...   # tiny smoke run (still needs the folder)
  python launch/train.py --config=configs/imagenet_srgan.py:tensorlayer ...  # the SRGAN SRIM scored (below)
  python launch/train.py --config=configs/imagenet_srgan.py:tensorlayer,runlocal ...
  python launch/evaluate.py --config=configs/imagenet_srim.py --workdir=runs/srim --srgan_workdir=runs/srgan

Meant for one modern GPU: the paper's 1e6 SRResNet (pixel MSE) updates, then 1e5 SRGAN updates at lr 1e-4 and 1e5
at 1e-5, batch 16, in one run (imle/srgan.py says why). Compare with SRIM's table 1 (PSNR / SSIM on luminance:
bicubic, SRGAN, SRIM) and figures 4-6; Ledig et al.'s own numbers are on Set5/Set14/BSD100, not on this data.

Data: configs/imagenet_srim.py's data section, unchanged (the same folder, held-out files and sizes), so both methods
train and are scored on identical images. Without --config.vgg.weights_path the content loss uses untrained VGG19
features (the run says so once): the paper's VGG54 needs the trained weights (docs/srim_and_srgan.md).

':tensorlayer' is the SRGAN whose numbers SRIM's table 1 reports (its footnote: tensorlayer/srgan, "Implementation
1"), read at commit 34ebf0ff (2018-10-13, the last TF1 version; its training code is that of 2018-03-10 but for
comments). Where it departs from the paper: the generator takes its input on [-1, 1], its first conv is 3x3 and its
last 1x1, with ReLU for PReLU; the discriminator is its SRGAN_d (4x4 stride-2 convs 64 ... 2048 and a residual tail,
no dense 1024); kernels N(0, 0.02), batch norm scales N(1, 0.02); the GAN-phase generator loss is pixel MSE + 2e-6 x
the MSE of VGG19's pool4 (ReLU(conv4_4) max-pooled, unscaled) of both images resized to 224x224 by TF1's bilinear
resize + 1e-3 x adversarial; the rate is decayed x0.1 every 1000 GAN epochs. As the paper: batch 16, Adam b1 0.9 at
1e-4, 16 residual blocks of 64, an MSE-only first phase, a fresh Adam for the GAN phase, D then G each GAN step, and
VGG19 with Caffe's preprocessing (machrisaa's vgg19.npy, the network of Keras' file).

Its schedule is in epochs: 101 MSE epochs (range(0, n_epoch_init + 1), n_epoch_init = 100), then 2001 GAN epochs
(n_epoch = 2000) at 1e-4, x0.1 at epoch 1000 and again at 2000. An epoch of SRIM's 3,000 training images (20
classes x 150; the held-out files come from beyond them) at batch 16 is 3,000 / 16 = 187.5 updates, so
(`epochs_to_steps`):
  pretrain_steps  = round(101 x 187.5)   = 18,938
  lr_decay_after  = 1,000 x 187.5        = 187,500 (1e-4, then 1e-5, then 1e-6 for the last 188 updates)
  GAN updates     = round(2,001 x 187.5) = 375,188;  num_train_steps = 18,938 + 375,188 = 394,126.
Not reproduced: its data. It trains on random 384x384 crops of DIV2K (96x96 inputs); SRIM says both methods trained
on its data, so the variant keeps SRIM's 128x128 images whole. And its inputs come from scipy.misc.imresize of a
float image, which first stretches each crop's range to 0-255 (bytescale): a contrast change the data pipeline here
does not make.
"""

import ml_collections

from configs import imagenet_srim

SRIM_TRAIN_IMAGES = 3_000  # 20 seen classes x 150 training images (the held-out files are beyond them).


def srgan_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every field of an SRGAN run on `data` (an SRIM config's data section), with the paper's values."""
  c = ml_collections.ConfigDict()
  c.method = 'srgan'  # Trained by imle.srgan.
  c.seed = 0  # Parameter init and data order derive from it.
  c.data = ml_collections.ConfigDict(data.to_dict())
  c.model = ml_collections.ConfigDict(
    dict(  # Fields of imle.srgan_models.SRGANConfig (documented there).
      upsample_factor=4,  # Two sub-pixel convolution x2 upsamplers.
      generator_blocks=16,  # B residual blocks of 3x3 convs, batch norm, PReLU.
      generator_channels=64,
      discriminator_channels=(64, 64, 128, 128, 256, 256, 512, 512),  # 3x3 convs, stride 2 at every second.
      discriminator_dense=1024,
      leaky_relu_slope=0.2,
      batch_norm_momentum=0.9,  # Decay of the running averages used by evaluation and predict (torch's 0.1).
      batch_norm_epsilon=1e-5,
      lowres_range='unit',  # The generator's input on [0, 1].
      generator_input_kernel=9,  # 9x9 first and last convs.
      generator_output_kernel=9,
      generator_activation='prelu',  # After the first conv, in the blocks and after the upsamplers.
      discriminator_layout='paper',  # Figure 4's VGG-like discriminator.
      init_normal_stddev=0.0,
    )
  )  # Flax's initialisers (the paper names none).
  c.srgan = ml_collections.ConfigDict(
    dict(  # Fields of imle.srgan.TrainConfig: phases, Adam, losses.
      pretrain_steps=1_000_000,  # SRResNet-MSE updates that start the generator (the paper's 1e6).
      pretrain_learning_rate=1e-4,
      learning_rate=1e-4,  # GAN phase, generator and discriminator...
      lr_decay_after=100_000,  # ...for 1e5 updates, then 1e-5 (lr_decay_factor) for the rest.
      lr_decay_factor=0.1,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      content_layer='conv5_4',  # VGG54: the 4th conv of block 5, after its ReLU.
      content_scale=1 / 12.75,  # Features scaled by this: the VGG loss times ~0.006, comparable to the MSE.
      adversarial_weight=1e-3,  # Generator loss = content + 1e-3 * (-log D(G(x))).
      content_scale_tuned_for='caffe',  # 1/12.75 is for Caffe-prepared VGG19 inputs (Keras' .h5); others refused.
      pixel_weight=0.0,  # No pixel MSE in the GAN phase.
      content_weight=1.0,  # The content term as content_scale makes it.
      content_resize='none',  # VGG sees the 128x128 images as they are...
      content_resize_size=224,  # ...(the side it would resize to).
      content_pool=False,  # conv5_4's features as they are, not pooled.
      lr_decay_staircase=False,
    )
  )  # One decay, after lr_decay_after GAN updates.
  c.vgg = ml_collections.ConfigDict(
    dict(  # Fields of imle.vgg19.VGGConfig.
      weights_path='',  # Keras .h5 or converted torchvision .npz (docs/srim_and_srgan.md); '' = untrained (warns).
      random_seed=0,
    )
  )  # Seed of the untrained VGG19.
  c.batch_size = 16  # Global batch, split over all devices (the paper's 16).
  c.num_train_steps = 1_200_000  # pretrain_steps + 2e5 GAN updates.
  c.log_every_steps = 100  # Train metrics and progress (steps/s, ETA).
  c.eval_every_steps = 20_000  # Pixel MSE, pSNR and SSIM (luminance) on the held-out images; 0 = never.
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 20_000  # PNG grid low-res | output | truth (<workdir>/samples, TensorBoard); 0 = never.
  c.num_sample_images = 8  # Rows of that grid.
  # Luma of launch/evaluate.py's table: 'daala' (SRIM's) or 'bt601' (configs/imagenet_srim.py says more). The eval
  # pSNR/SSIM logged during training stay BT.601.
  c.metrics_convention = 'daala'
  c.profile_steps = ()  # (first, last): jax.profiler trace of those steps into <workdir>/profile; () = off.
  return c


def shrink_for_smoke_run(c: ml_collections.ConfigDict) -> None:
  """The ':runlocal' variant: the same code paths, tiny sizes, a few steps of each phase."""
  c.model.update(
    generator_blocks=2,
    generator_channels=8,
    discriminator_channels=(8, 8, 16, 16, 16, 16, 32, 32),
    discriminator_dense=32,
  )
  c.srgan.update(pretrain_steps=5, lr_decay_after=3)
  c.batch_size = 4
  c.num_train_steps = 10
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 5
  c.num_sample_images = 2


def epochs_to_steps(epochs: int, num_images: int = SRIM_TRAIN_IMAGES, batch_size: int = 16) -> int:
  """Updates that see as many images as `epochs` passes over `num_images` at `batch_size`."""
  return round(epochs * num_images / batch_size)


def use_tensorlayer(c: ml_collections.ConfigDict, num_images: int = SRIM_TRAIN_IMAGES) -> None:
  """The ':tensorlayer' variant: tensorlayer/srgan's choices (module docstring), its epochs as updates of
  c.batch_size over `num_images` training images."""
  c.model.update(
    lowres_range='signed',
    generator_input_kernel=3,
    generator_output_kernel=1,
    generator_activation='relu',
    discriminator_layout='tensorlayer',
    discriminator_channels=(64, 128, 256, 512, 1024, 2048),
    init_normal_stddev=0.02,
  )
  pretrain_steps = epochs_to_steps(101, num_images, c.batch_size)
  c.srgan.update(
    pretrain_steps=pretrain_steps,
    pixel_weight=1.0,
    content_layer='conv4_4',
    content_pool=True,
    content_scale=1.0,
    content_weight=2e-6,
    content_resize='tf1_bilinear',
    content_resize_size=224,
    lr_decay_after=epochs_to_steps(1000, num_images, c.batch_size),
    lr_decay_staircase=True,
  )
  c.num_train_steps = pretrain_steps + epochs_to_steps(2001, num_images, c.batch_size)


def get_config(arg: str | None = None):
  """arg: '', 'runlocal', 'tensorlayer' or 'tensorlayer,runlocal'."""
  options = set(filter(None, (arg or '').split(',')))
  if not options <= {'runlocal', 'tensorlayer'}:
    raise ValueError(
      f"configs/imagenet_srgan.py takes '', 'runlocal', 'tensorlayer' or 'tensorlayer,runlocal', got {arg!r}"
    )
  c = srgan_config(imagenet_srim.get_config('runlocal' if 'runlocal' in options else None).data)
  if 'tensorlayer' in options:
    use_tensorlayer(c)
  if 'runlocal' in options:
    shrink_for_smoke_run(c)
    if 'tensorlayer' in options:  # Its discriminator's six stride-2 convs, narrow; VGG at 32 pixels, not 224.
      c.model.discriminator_channels = (8, 8, 16, 16, 32, 32)
      c.srgan.content_resize_size = 32
  return c.lock()
