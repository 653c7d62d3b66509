"""SRGAN (imle/srgan.py): the networks' layout, pixel shuffle, the losses by hand, updates that touch only their own
network, exact resume across the pretraining/GAN boundary, the launchers, and SRIM's table with its SRGAN row."""
import dataclasses
import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from common import checkpoint, images, metrics, sharding, train_loop, trainer, user_images
from common.errors import UserError
from configs import demo_srgan, imagenet_srgan
from imle import evaluate, models, srgan, train, vgg19
from tests.test_imle_train import tiny_config as tiny_srim_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('compile_once')  # tests/conftest.py
TINY = srgan.SRGANConfig(generator_blocks=2, generator_channels=8, discriminator_channels=(4, 4, 8, 8, 8, 8, 16, 16),
                         discriminator_dense=16)


def tiny_config(**overrides):
  c = demo_srgan.get_config('runlocal')
  # The data of tests/test_imle_train.py's tiny SRIM runs (6 -> 24), so that both appear in one table.
  c.data.update(num_eval_examples=8, random_crop_min=24, random_crop_max=48)
  c.model.update(generator_blocks=1, generator_channels=8, discriminator_channels=(4, 4, 8, 8, 8, 8, 16, 16),
                 discriminator_dense=16)
  c.srgan.update(pretrain_steps=3, lr_decay_after=2, content_layer='conv2_2', learning_rate=1e-3,
                 pretrain_learning_rate=1e-3)
  c.batch_size = 4
  c.eval_every_steps = c.sample_every_steps = 0
  c.log_every_steps = c.checkpoint_every_steps = 2
  for k, v in overrides.items():
    c[k] = v
  return c


def test_pixel_shuffle_is_depth_to_space():
  x = np.arange(2 * 2 * 3 * 12, dtype=np.float32).reshape(2, 2, 3, 12)  # r = 2, 3 output channels.
  out = np.asarray(srgan.pixel_shuffle(jnp.asarray(x), 2))
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
  variables = jax.eval_shape(lambda: srgan.Generator(srgan.SRGANConfig()).init(jax.random.key(0), lowres))
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
  model = srgan.Generator(TINY)
  variables = model.init(jax.random.key(0), lowres)
  out = model.apply(variables, jax.random.uniform(jax.random.key(1), (2, 6, 6, 3)))
  assert out.shape == (2, 24, 24, 3) and float(jnp.abs(out).max()) <= 1.0


def test_discriminator_layers_and_strides():
  model = srgan.Discriminator(srgan.SRGANConfig())
  x = jnp.zeros((1, 128, 128, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  logits, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']),
                                 variables)
  sides = [state['intermediates'][f'conv{i}']['__call__'][0].shape[1:] for i in range(1, 9)]
  assert sides == [(128, 128, 64), (64, 64, 64), (64, 64, 128), (32, 32, 128), (32, 32, 256), (16, 16, 256),
                   (16, 16, 512), (8, 8, 512)]  # Stride 2 at every second conv.
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
  got = srgan.content_loss({'conv1_1': {'kernel': kernel, 'bias': bias}}, jnp.asarray(fake), jnp.asarray(real),
                           layer='conv1_1', preprocessing='caffe', scale=1 / 12.75)
  assert float(got) == pytest.approx(expected, rel=1e-4)
  assert expected > 0


def test_adversarial_losses_by_hand():
  def d(logit):
    return 1 / (1 + math.exp(-logit))
  fake = jnp.array([0.0, 2.0, -1.0])
  assert float(srgan.generator_adversarial_loss(fake)) == pytest.approx(
      -(math.log(d(0)) + math.log(d(2)) + math.log(d(-1))) / 3, rel=1e-6)  # 0.7111
  real = jnp.array([0.0, 2.0])
  assert float(srgan.discriminator_loss(real, fake[::2])) == pytest.approx(
      -(math.log(d(0)) + math.log(d(2))) / 2 - (math.log(1 - d(0)) + math.log(1 - d(-1))) / 2, rel=1e-6)  # 0.9132
  # Far from 0, from logits: no log(0).
  assert float(srgan.discriminator_loss(jnp.array([100.0]), jnp.array([-100.0]))) == pytest.approx(0, abs=1e-30)


def changed(a, b):
  return jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b))


def test_each_update_changes_only_its_own_network():
  cfg = TINY
  train_cfg = srgan.TrainConfig(content_layer='conv2_2')
  tx = srgan.make_optimizer(train_cfg)
  config = tiny_config()
  config.model.update(**dataclasses.asdict(cfg))
  state = srgan.create_train_state(config, jax.random.key(0), sharding.data_mesh())
  rng = np.random.default_rng(0)
  batch = {'lowres': rng.integers(0, 256, (4, 6, 6, 3), np.uint8),
           'highres': rng.integers(0, 256, (4, 24, 24, 3), np.uint8)}
  frozen = {'vgg': vgg19.random_weights(0).up_to(('conv2_2',))}
  lr = jnp.float32(1e-3)
  g_new, g_metrics = jax.jit(lambda s: srgan.generator_update(s, batch, frozen, cfg=cfg, train_cfg=train_cfg,
                                                              preprocessing='caffe', tx=tx, lr=lr))(state)
  assert not any(changed(g_new.discriminator, state.discriminator))
  assert all(changed(g_new.generator.params, state.generator.params))  # Every parameter has a gradient.
  assert all(changed(g_new.generator.batch_stats, state.generator.batch_stats))
  assert float(g_metrics['loss']) == pytest.approx(
      float(g_metrics['content_loss'] + 1e-3 * g_metrics['adversarial_loss']), rel=1e-6)

  fake = srgan.Generator(cfg).apply({'params': state.generator.params, 'batch_stats': state.generator.batch_stats},
                                    batch['lowres'] / np.float32(255))
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
  jax.tree.map(np.testing.assert_array_equal, variables,
               {'params': state.generator.params, 'batch_stats': state.generator.batch_stats})
  photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  x = user_images.to_model_input(photo, tiny_config().data, 3)[0][None]
  expected = np.asarray(srgan.predict(model, variables, x))[0]
  assert expected.shape == (24, 24, 3) and expected.dtype == np.uint8
  # Inference mode: an output does not depend on what else is in the batch.
  np.testing.assert_array_equal(np.asarray(srgan.predict(model, variables, np.concatenate([x, 255 - x])))[0],
                                expected)

  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import sample as sample_cli
  sample_cli.super_resolve(workdir=straight, step=None, expected_config=None, files=[str(tmp_path / 'photo.png')],
                           output=str(tmp_path / 'out'), num_samples=3, temperatures=[1.0], seed=3, batch_size=4)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'photo_tau1_0.png')), expected)
  assert not (tmp_path / 'out' / 'photo_tau1_1.png').exists()  # Deterministic: one output.


@pytest.mark.slow
def test_whole_image_through_the_launcher_equals_the_untiled_generator(srgan_run, tmp_path):
  """launch/sample.py --whole_image: a 21x13 photo (odd, not a multiple of the tile) -> 84x52, in tiles of 8 with the
  receptive radius as context, equal to the generator run on the whole image at once."""
  straight = srgan_run[0]
  photo = np.random.default_rng(1).integers(0, 256, (13, 21, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  out = subprocess.run([sys.executable, 'launch/sample.py', f'--workdir={straight}',
                        f'--input={tmp_path / "photo.png"}', f'--output={tmp_path / "out"}', '--whole_image',
                        '--tile=8'],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert 'photo.png: 21x13 -> 84x52' in out.stdout
  model, variables = srgan.restore(tiny_config(), straight)
  expected = np.asarray(srgan.predict(model, variables, photo[None]))[0]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / 'photo_x4_0.png')), expected)


def test_srim_table_has_bicubic_srgan_and_srim_rows(srgan_run, tmp_path):
  srgan_dir, srim_dir = srgan_run[0], str(tmp_path / 'srim')
  srim_config = tiny_srim_config(num_train_steps=2)
  train.train_and_evaluate(srim_config, srim_dir)
  results, figures = evaluate.tables(srim_config, srim_dir, num_examples=4, num_samples=2, batch_size=4,
                                     srgan_workdir=srgan_dir, figure_rows=3)
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
  expected = {'Bicubic': (metrics.psnr_y(bicubic, y), metrics.ssim_y(bicubic, y), 0.0),
              'SRGAN': (metrics.psnr_y(predicted, y), metrics.ssim_y(predicted, y), 0.0),
              'SRIM (per sample)': (metrics.psnr_y(flat, truth), metrics.ssim_y(flat, truth),
                                    metrics.diversity(flat, 2))}
  for name, (psnr, ssim, diversity) in expected.items():
    assert rows[name]['psnr_y'] == pytest.approx(float(np.mean(psnr)), rel=1e-5), name
    assert rows[name]['ssim_y'] == pytest.approx(float(np.mean(ssim)), rel=1e-5), name
    assert rows[name]['diversity'] == pytest.approx(float(np.mean(diversity)), rel=1e-5, abs=1e-12), name
  assert rows['SRIM (per sample)']['diversity'] > 0

  # Figure: input | bicubic | SRGAN | 2 SRIM samples | truth, 3 examples.
  figure = figures['held-out']
  np.testing.assert_array_equal(figure, images.make_grid([x[:3], bicubic[:3], predicted[:3], drawn[:3, 0],
                                                          drawn[:3, 1], y[:3]]))
  paths = evaluate.write(results, srim_dir, 'note', figures)
  assert sorted(os.path.basename(p) for p in paths) == ['figure_srim.png', 'table_srim.csv', 'table_srim.md']
  md = open(os.path.join(srim_dir, 'table_srim.md')).read()
  assert f'| SRGAN | {rows["SRGAN"]["psnr_y"]:.2f} | {rows["SRGAN"]["ssim_y"]:.3f} | 0.0000 |' in md

  with pytest.raises(UserError, match="holds a config.method='srim' run; --srgan_workdir takes"):
    evaluate.tables(srim_config, srim_dir, num_examples=4, srgan_workdir=srim_dir)

  # An SRGAN run alone: Bicubic and SRGAN rows, the same numbers.
  alone = evaluate.table(tiny_config(), srgan_dir, num_examples=4, batch_size=4)
  assert list(alone) == ['Bicubic', 'SRGAN'] and alone['SRGAN'] == pytest.approx(rows['SRGAN'])


@pytest.mark.slow
def test_launch_train_runs_the_srgan_demo_and_writes_checkpoints(tmp_path):
  # The runlocal demo through both phases.
  out = subprocess.run([sys.executable, 'launch/train.py', '--config=configs/demo_srgan.py:runlocal',
                        f'--workdir={tmp_path}', '--config.num_train_steps=6', '--config.srgan.pretrain_steps=3',
                        '--config.checkpoint_every_steps=3'],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
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
  config.data.update(source='folder', folder=str(tmp_path / 'photos'), crop='none', eval_fraction=0.25,
                     num_unseen_classes=1)
  results, figures = evaluate.tables(config, srgan_run[0], num_examples=0, batch_size=4, figure_rows=1)
  assert list(results) == ['seen', 'unseen'] and list(figures) == ['seen', 'unseen']
  model, variables = srgan.restore(config, srgan_run[0])
  for label, split, count in (('seen', 'eval', 2), ('unseen', 'eval_unseen', 4)):
    x, y = evaluate.eval_examples(config.data, 0, split)
    assert len(x) == count
    predicted = np.asarray(srgan.predict(model, variables, x))
    assert results[label]['SRGAN']['psnr_y'] == pytest.approx(float(np.mean(metrics.psnr_y(predicted, y))), rel=1e-5)
  evaluate.write(results, str(tmp_path / 'out'), 'note', figures)
  md = open(tmp_path / 'out' / 'table_srim.md').read().splitlines()
  assert md[0] == '| Method | Images | pSNR (Y) | SSIM (Y) | Diversity |'
  assert [line.split(' | ')[:2] for line in md[2:6]] == [['| Bicubic', 'seen'], ['| Bicubic', 'unseen'],
                                                         ['| SRGAN', 'seen'], ['| SRGAN', 'unseen']]
  assert (tmp_path / 'out' / 'figure_srim_unseen.png').exists() and (tmp_path / 'out' / 'figure_srim.png').exists()


def test_table_psnr_scores_an_exact_match_as_one_level_off_on_one_pixel():
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (2, 24, 24, 3), np.uint8) for _ in range(2))
  np.testing.assert_allclose(evaluate.psnr_y(a, b), metrics.psnr_y(a, b), rtol=1e-6)
  # Y of one image, 24 x 24 x 1: 10 log10(255^2 x 576) dB.
  np.testing.assert_allclose(evaluate.psnr_y(a, a), 10 * np.log10(255.0 ** 2 * 576), rtol=1e-6)
