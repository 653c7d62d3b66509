"""What several test modules share: the repository's root, tiny configs of each method and a tiny sampler model.
Test modules import from here (and tests/study/helpers.py), never from one another."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from configs import demo, demo_regression, demo_srim
from pixelsr import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, 'launch', 'sample.py')


def tiny_config(**overrides):
  """The demo's pixel recursive config at a size that trains a step in well under a second."""
  c = demo.get_config('runlocal')
  c.model.update(cond_blocks=1, cond_channels=8, prior_layers=1, prior_channels=6, prior_head_channels=12)
  c.data.num_eval_examples = 16
  c.batch_size = 8
  c.eval_every_steps = c.sample_every_steps = 0
  c.log_every_steps = c.checkpoint_every_steps = 5
  for k, v in overrides.items():
    c[k] = v
  return c


def tiny_regression_config(**overrides):
  c = demo_regression.get_config('runlocal')
  c.model.update(cond_blocks=1, cond_channels=8)
  c.data.num_eval_examples = 8
  c.batch_size = 4
  c.num_train_steps = 4
  c.eval_every_steps = c.sample_every_steps = 0
  c.log_every_steps = c.checkpoint_every_steps = 4
  for k, v in overrides.items():
    c[k] = v
  return c


def tiny_srim_config(**overrides):
  c = demo_srim.get_config('runlocal')
  c.data.update(num_eval_examples=8, random_crop_min=24, random_crop_max=48)  # 6 -> 12 -> 24
  c.model.update(num_convs=3, channels=8, kernel_size=3)
  # conv4_4 is tested against Keras in imle/test_vgg19.py; stopping at conv2_2 here compiles and runs 4x faster.
  c.features.update(
    components=('pixels', 'conv2_2'),
    selection_components=('pixels', 'conv2_2'),
    projection_dim=32,
    num_weight_estimation_images=8,
  )
  # Batches of the pool's size and m: evaluation reuses the pool selection's compiled search.
  c.imle.update(
    pool_size=8, steps_per_pool=4, num_candidates=4, candidates_per_chunk=4, rows_per_chunk=8, eval_num_candidates=4
  )
  c.optimizer.learning_rate = 3e-3
  c.batch_size = 8
  c.eval_every_steps = c.sample_every_steps = 0
  c.log_every_steps = c.checkpoint_every_steps = 5
  for k, v in overrides.items():
    c[k] = v
  return c


def checkpoint_params(workdir: str, step: int):
  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))
  return restored['params']


SAMPLER_TINY = dict(
  cond_blocks=1, cond_channels=8, prior_layers=3, prior_channels=12, prior_head_channels=24, init='lecun_normal'
)


def make_sampler_model(lowres_hw=(2, 3), batch=2, seed=0, **fields):
  """A tiny pixel recursive model, its variables and a random uint8 input, for the samplers' tests."""
  cfg = models.PixelSRConfig(**{**SAMPLER_TINY, **fields})
  model = models.PixelRecursiveSR(cfg)
  lowres = jax.random.randint(jax.random.key(seed + 1), (batch, *lowres_hw, cfg.num_colours), 0, 256)
  lowres = lowres.astype(jnp.uint8)
  highres = jnp.zeros((batch, *(s * cfg.upsample_factor for s in lowres_hw), cfg.num_colours), jnp.uint8)
  return model, model.init(jax.random.key(seed), lowres, highres), lowres


def sample_cli(*args):
  """launch/sample.py with `args`, from the repository's root."""
  return subprocess.run([sys.executable, SAMPLE, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
