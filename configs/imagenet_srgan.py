"""SRGAN (Ledig et al. 2017), SRIM's comparison baseline, on SRIM's data: 32x32 -> 128x128 (x4).

  python launch/train.py --config=configs/imagenet_srgan.py --workdir=runs/srgan \
      --config.data.folder=/data/srim_imagenet \
      --config.vgg.weights_path=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
  python launch/train.py --config=configs/imagenet_srgan.py:runlocal ...   # tiny smoke run (still needs the folder)
  python launch/evaluate.py --config=configs/imagenet_srim.py --workdir=runs/srim --srgan_workdir=runs/srgan

Meant for one modern GPU: the paper's 1e6 SRResNet (pixel MSE) updates, then 1e5 SRGAN updates at lr 1e-4 and 1e5
at 1e-5, batch 16, in one run (imle/srgan.py says why). Compare with SRIM's table 1 (PSNR / SSIM on luminance:
bicubic, SRGAN, SRIM) and figures 4-6; Ledig et al.'s own numbers are on Set5/Set14/BSD100, not on this data.

Data: configs/imagenet_srim.py's data section, unchanged (the same folder, held-out files and sizes), so both methods
train and are scored on identical images. Without --config.vgg.weights_path the content loss uses untrained VGG19
features (the run says so once): the paper's VGG54 needs the trained weights (README, "VGG19 weights").
"""
import ml_collections

from configs import imagenet_srim


def srgan_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every field of an SRGAN run on `data` (an SRIM config's data section), with the paper's values."""
  c = ml_collections.ConfigDict()
  c.method = 'srgan'  # Trained by imle.srgan.
  c.seed = 0  # Parameter init and data order derive from it.
  c.data = ml_collections.ConfigDict(data.to_dict())
  c.model = ml_collections.ConfigDict(dict(  # Fields of imle.srgan.SRGANConfig (documented there).
      upsample_factor=4,  # Two sub-pixel convolution x2 upsamplers.
      generator_blocks=16,  # B residual blocks of 3x3 convs, batch norm, PReLU.
      generator_channels=64,
      discriminator_channels=(64, 64, 128, 128, 256, 256, 512, 512),  # 3x3 convs, stride 2 at every second.
      discriminator_dense=1024,
      leaky_relu_slope=0.2,
      batch_norm_momentum=0.9,  # Decay of the running averages used by evaluation and predict (torch's 0.1).
      batch_norm_epsilon=1e-5))
  c.srgan = ml_collections.ConfigDict(dict(  # Fields of imle.srgan.TrainConfig: phases, Adam, losses.
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
      adversarial_weight=1e-3))  # Generator loss = content + 1e-3 * (-log D(G(x))).
  c.vgg = ml_collections.ConfigDict(dict(  # Fields of imle.vgg19.VGGConfig.
      weights_path='',  # Keras .h5 or converted torchvision .npz (README); '' = untrained VGG19, with a warning.
      random_seed=0))  # Seed of the untrained VGG19.
  c.batch_size = 16  # Global batch, split over all devices (the paper's 16).
  c.num_train_steps = 1_200_000  # pretrain_steps + 2e5 GAN updates.
  c.log_every_steps = 100  # Train metrics and progress (steps/s, ETA).
  c.eval_every_steps = 20_000  # Pixel MSE, pSNR and SSIM (luminance) on the held-out images; 0 = never.
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 20_000  # PNG grid low-res | output | truth (<workdir>/samples, TensorBoard); 0 = never.
  c.num_sample_images = 8  # Rows of that grid.
  c.profile_steps = ()  # (first, last): jax.profiler trace of those steps into <workdir>/profile; () = off.
  return c


def shrink_for_smoke_run(c: ml_collections.ConfigDict) -> None:
  """The ':runlocal' variant: the same code paths, tiny sizes, a few steps of each phase."""
  c.model.update(generator_blocks=2, generator_channels=8, discriminator_channels=(8, 8, 16, 16, 16, 16, 32, 32),
                 discriminator_dense=32)
  c.srgan.update(pretrain_steps=5, lr_decay_after=3)
  c.batch_size = 4
  c.num_train_steps = 10
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 5
  c.num_sample_images = 2


def get_config(arg: str | None = None):
  if arg not in (None, '', 'runlocal'):
    raise ValueError(f"configs/imagenet_srgan.py takes no argument or 'runlocal', got {arg!r}")
  c = srgan_config(imagenet_srim.get_config('runlocal' if arg else None).data)
  if arg:
    shrink_for_smoke_run(c)
  return c.lock()
