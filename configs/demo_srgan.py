"""SRGAN's quickstart, beside configs/demo_srim.py: a small SRResNet + discriminator, 7x7 -> 28x28 (x4), on the
photographs that ship with scikit-image (no download).

  python launch/train.py --config=configs/demo_srgan.py                   # workdir runs/demo_srgan
  python launch/train.py --config=configs/demo_srgan.py:runlocal          # tiny smoke run
  python launch/evaluate.py --config=configs/demo_srim.py --workdir=runs/demo_srim --srgan_workdir=runs/demo_srgan

Meant for a laptop or a 2-core CPU: a few minutes. The first 150 steps pretrain the generator on the pixel MSE
(SRResNet), the next 150 are GAN steps (content + 1e-3 adversarial loss) at lr 1e-4, then 1e-5 after 100 of them, as
the paper's schedule in miniature. Data: demo_srim.py's data section (the same crops and held-out rows), so the
two demos are scored on the same images. Smaller than the paper's networks (6 residual blocks of 32 channels, a
discriminator of half the width) and a shallower content layer; everything else is configs/imagenet_srgan.py.

Why conv2_2 and not the paper's conv5_4: no VGG19 weights ship with the library, so unless --config.vgg.weights_path
is given the content loss uses untrained VGG19 features (the run says so), and conv5_4 of a 28-pixel image is 1x1.
Those features hold almost nothing of the image, the adversarial term dominates, and the GAN phase drifts away from
the input (measured with conv5_4: pixel MSE 0.057 -> 0.31 in 100 GAN steps). conv2_2 (14x14) keeps it tied.
"""
from configs import demo_srim, imagenet_srgan


def get_config(arg: str | None = None):
  if arg not in (None, '', 'runlocal'):
    raise ValueError(f"configs/demo_srgan.py takes no argument or 'runlocal', got {arg!r}")
  c = imagenet_srgan.srgan_config(demo_srim.get_config(arg).data)
  c.model.update(generator_blocks=6, generator_channels=32, discriminator_channels=(32, 32, 64, 64, 128, 128, 256, 256),
                 discriminator_dense=256)
  c.srgan.update(pretrain_steps=150, lr_decay_after=100, content_layer='conv2_2')
  c.batch_size = 16
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 150
  c.checkpoint_every_steps = 150
  c.sample_every_steps = 300
  c.num_sample_images = 4
  if arg == 'runlocal':
    imagenet_srgan.shrink_for_smoke_run(c)
  return c.lock()
