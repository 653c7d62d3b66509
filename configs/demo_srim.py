"""SRIM's quickstart: a small two-stage IMLE model, 7x7 -> 14x14 -> 28x28, on the photographs that ship with
scikit-image (no download).

  python launch/train.py --config=configs/demo_srim.py                    # workdir runs/demo_srim
  python launch/train.py --config=configs/demo_srim.py:runlocal           # tiny smoke run, a minute or two

Meant for a laptop or a 2-core CPU: a few minutes. It logs the training distance falling, selects the noises of a
new pool every 50 steps (logging the pool's mean nearest-sample distance), evaluates the distance from held-out
crops to the nearest of 8 samples (eval/distance_stage2), and writes a grid low-res | 4 samples | truth to
runs/demo_srim/samples. Everything else is the paper's configs/imagenet_srim.py: the feature distance with pixels,
conv2_2 and conv4_4, the random projection, hierarchical selection, batch norm. No VGG19 weights ship with the
library, so unless --config.vgg.weights_path is given the distance uses untrained VGG19 features (the run says so).
Why 28 and not 32 pixels: conv4_4 of a 16-pixel stage-1 output is 2x2, where XLA's CPU convolutions are ~20x slower
than at 1x1 or 3x3; 14 pixels gives 1x1.
"""
from configs import imagenet_srim


def get_config(arg: str | None = None):
  c = imagenet_srim.srim_config()
  c.data.update(source='embedded', crop='random', random_crop_min=28, random_crop_max=96, highres_size=28,
                lowres_size=7, num_eval_examples=32, num_unseen_classes=0)  # Photos have no classes to hold out.
  c.model.update(channels=32)
  c.features.num_weight_estimation_images = 32
  c.imle.update(pool_size=32, steps_per_pool=50, num_candidates=8, candidates_per_chunk=8, rows_per_chunk=8,
                eval_num_candidates=8)
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
  return c.lock()
