"""Figure 2 of the pixel recursive paper (section 3.2): three small models on MNIST corners, one config family.

  python launch/corners.py                                           # trains all three, writes figure2.png + table
  python launch/train.py --config=configs/mnist_corners.py:pixelcnn --workdir=runs/mnist_corners/pixelcnn
  python launch/train.py --config=configs/mnist_corners.py:ce,runlocal --workdir=/tmp/smoke   # tiny smoke run

The argument picks the model: 'l2' (L2 regression: the conditioning network with one output, as table 1's baseline
but predicting the output itself, not a tanh residual over the input: model.residual=False), 'ce' (per-pixel
cross-entropy: the conditioning network alone, eq. 4) or 'pixelcnn' (conditioning network + PixelCNN prior, loss O2,
as the paper's model; the default); add ',runlocal' for a tiny smoke run. Meant for a 2-core CPU: launch/corners.py
trains the three in minutes (docs/pixel_recursive.md, figure 2). Compare with figure 2: L2 draws two blurry digits,
cross-entropy two crisper ones, PixelCNN samples one digit in one corner.

Data (common/mnist.py): the input is the 28x28 digit resized (antialiased bicubic) to 16x16; the output is a 16x16
black canvas with the digit resized to 8x8 in its upper-left or upper-right quadrant, each with probability 1/2, so
upsample_factor is 1. 16x16 keeps the digit legible and the PixelCNN's 256 sequential sub-pixels cheap to sample;
8x8 corners fill the quadrants, which the mode measure (pixelsr/corners.py) reads. Digits: the official t10k IDX
file in ../shared/data/mnist (the first 9,000 train, the last 1,000 are the test set); tfds 'mnist' (train / test)
with --config.data.mnist_source=tfds. 256 grey levels, as the paper's models.
"""

from configs import defaults

MODELS = ('l2', 'ce', 'pixelcnn')


def get_config(arg: str | None = None):
  model, *options = (arg or 'pixelcnn').split(',')
  if model not in MODELS or any(o != 'runlocal' for o in options):
    raise ValueError(
      f"configs/mnist_corners.py takes 'l2', 'ce' or 'pixelcnn', optionally with ',runlocal'; got {arg!r}"
    )
  c = defaults.pixelcnn_config()
  c.data.update(
    source='mnist_corners',
    name='mnist',
    train_split='train',
    eval_split='test',
    lowres_size=16,
    highres_size=16,
    corner_digit_size=8,
  )
  c.data.num_eval_examples = 0  # All 1,000 held-out digits: a forward pass over them takes a second.
  # Appendix A's layout, narrowed: 3 ResNet blocks of 3x3 convs (+ the stem) see 7 pixels around an output pixel,
  # enough to read the input digit's part that lands there once scaled by 1/2 (16x16 -> an 8x8 quadrant). 4 gated
  # layers reach 11 columns back on the current row and +-11 on the rows above: the other quadrant.
  c.model.update(
    num_colours=1,
    upsample_factor=1,
    cond_channels=32,
    cond_blocks=3,
    prior_channels=32,
    prior_layers=4,
    prior_kernel=5,
    prior_first_kernel=7,
    prior_head_channels=64,
  )
  # Adam, not the paper's RMSProp: with RMSProp (momentum 0.9, lr 1e-3 or 3e-3) the PixelCNN's samples stayed at
  # 30-47% single-mode after 2,000-4,000 steps (blank or both corners), with Adam 92-97% (docs/pixel_recursive.md).
  c.optimizer.update(name='adam', learning_rate=1e-3, lr_halve_at=(1_500, 2_500))
  c.batch_size = 16
  c.num_train_steps = 3_000
  c.log_every_steps = 100
  c.eval_every_steps = 1_500
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 1_500  # The cached sampler draws the 8-image grid in well under a second.
  c.num_sample_images = 8
  if model == 'ce':
    c.model.use_prior = False
    c.loss = 'O1'  # CE(A + 0) = CE(A); O2 would count the same term twice.
  if 'runlocal' in options:
    defaults.shrink_for_smoke_run(c)
  if model == 'l2':
    c = defaults.regression_config(c)  # With its zero_init_last=True the untrained model outputs 0: mid-grey.
    # The paper's L2 model predicts the output (per-pixel squared error on it), not a residual over the input: the
    # input digit is not in the output, and a white input pixel + tanh(residual) can never go below mid-grey.
    c.model.residual = False
  return c.lock()
