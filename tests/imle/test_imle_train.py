"""SRIM trained end to end by the common loop: the distance falls, resume is exact, user errors are one line."""

import dataclasses
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from common import images, metrics, sharding, train_loop, user_images
from common.errors import UserError
from imle import evaluate, features, models, pools, train
from tests.helpers import REPO
from tests.helpers import tiny_srim_config as tiny_config

pytestmark = pytest.mark.usefixtures('compile_once')  # tests/conftest.py


def test_demo_run_lowers_the_distance_and_warns_once_about_untrained_vgg(tmp_path, caplog):
  workdir = str(tmp_path)
  with caplog.at_level(logging.WARNING):
    before = train.train_and_evaluate(tiny_config(num_train_steps=1, eval_every_steps=1), workdir)
    after = train.train_and_evaluate(
      tiny_config(num_train_steps=24, eval_every_steps=24, sample_every_steps=24, num_sample_images=2), workdir
    )
  # The IMLE objective on held-out crops: distance from each truth to the nearest of 4 samples (the same noises).
  assert after['eval/distance_stage2'] < 0.7 * before['eval/distance_stage2'], (before, after)
  assert after['train/pool_distance_stage2'] < before['train/pool_distance_stage2'], (before, after)
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'lowres_samples_truth_00000024.png')))
  assert grid.shape == (2 * 24 + 3 * 2, 4 * 24 + 5 * 2, 3)  # low-res | 2 samples | truth, 2 rows.
  untrained = [r for r in caplog.records if 'UNTRAINED' in r.getMessage()]
  assert len(untrained) == 2 and 'config.vgg.weights_path' in untrained[0].getMessage()  # Once per run.


def checkpoint_state(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))


def test_resume_inside_a_pool_is_exact_and_restores_for_sampling(tmp_path):
  # Pools start at state steps 0, 4, 8: the interrupted run stops at 6, inside the second pool, and selects the
  # third pool after resuming.
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  full = train.train_and_evaluate(tiny_config(num_train_steps=10, log_every_steps=2), straight)
  train.train_and_evaluate(tiny_config(num_train_steps=6, log_every_steps=2), interrupted)
  resumed = train.train_and_evaluate(tiny_config(num_train_steps=10, log_every_steps=2), interrupted)
  assert resumed['train/loss'] == full['train/loss']  # The window of steps 9 and 10.
  a, b = checkpoint_state(straight, 10), checkpoint_state(interrupted, 10)
  for part in ('params', 'batch_stats', 'pool_choice', 'pool_distance', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, a[part], b[part])
  assert not np.array_equal(a['pool_choice'], checkpoint_state(interrupted, 6)['pool_choice'])

  model, variables = train.restore(tiny_config(), straight)
  jax.tree.map(np.testing.assert_array_equal, variables, {'params': a['params'], 'batch_stats': a['batch_stats']})
  lowres = np.zeros((2, 6, 6, 3), np.uint8)
  assert models.sample(model, variables, lowres, jax.random.key(0), 3).shape == (2, 3, 24, 24, 3)

  # launch/sample.py on this run writes these samples for a user's image.
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import sample as sample_cli

  photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  sample_cli.super_resolve(
    workdir=straight,
    step=None,
    expected_config=None,
    files=[str(tmp_path / 'photo.png')],
    output=str(tmp_path / 'out'),
    num_samples=2,
    temperatures=[1.0],
    seed=3,
    batch_size=4,
  )
  x = user_images.to_model_input(photo, tiny_config().data, 3)[0][None]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), 0)
  expected = np.asarray(models.sample(model, variables, x, key, 2))[0]
  for k in range(2):
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out' / f'photo_tau1_{k}.png')), expected[k])

  # launch/evaluate.py's SRIM table: luminance scores of bicubic and of each sample, as computed directly.
  rows = evaluate.table(tiny_config(), straight, num_examples=4, num_samples=2, batch_size=4)
  x, y = evaluate.eval_examples(tiny_config().data, 4)
  bicubic = images.quantize(images.bicubic_upsample(x, y.shape[1:3]))
  bicubic_psnr = metrics.psnr_y(bicubic, y, convention='daala')  # The config's metrics_convention.
  assert rows['Bicubic']['psnr_y'] == pytest.approx(float(np.mean(bicubic_psnr)), rel=1e-5)
  key = train_loop.seed_key(tiny_config().seed, 'evaluate')
  drawn = np.asarray(models.sample(model, variables, x, jax.random.fold_in(key, 0), 2))
  assert rows['SRIM (per sample)']['ssim_y'] == pytest.approx(
    float(np.mean(metrics.ssim_y(drawn.reshape(-1, *drawn.shape[2:]), np.repeat(y, 2, 0), convention='daala'))),
    rel=1e-5,
  )
  assert rows['SRIM (per sample)']['diversity'] > 0


@pytest.mark.slow
def test_a_missing_weights_file_ends_in_one_error_line(tmp_path):
  flag = '--config.vgg.weights_path=/no/such/vgg19.h5'
  out = subprocess.run(
    [sys.executable, 'launch/train.py', '--config=configs/demo_srim.py:runlocal', f'--workdir={tmp_path}', flag],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert out.returncode == 1 and len(errors) == 1, out.stderr[-2000:]
  assert 'VGG19 weights file /no/such/vgg19.h5 does not exist' in errors[0] and 'Traceback' not in out.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_config_errors_name_the_field():
  bad = tiny_config()
  bad.imle.num_candidates = 0
  with pytest.raises(UserError, match='config.imle.num_candidates must be positive'):
    train.imle_config(bad, sharding.data_mesh())
  bad = tiny_config()
  bad.data.highres_size = 32
  with pytest.raises(UserError, match='config.data.highres_size=32'):
    train.model_config(bad)
  bad = tiny_config()
  bad.data.update(lowres_size=2, highres_size=8)
  bad.features.update(components=('pixels', 'conv4_4'), selection_components=('pixels',))
  with pytest.raises(UserError, match='conv4_4 has no pixels left'):
    train.feature_config(bad, train.stage_sides(bad, train.model_config(bad)))


def test_port_feature_weights_refuse_a_caffe_weights_file(monkeypatch):
  from configs import imagenet_srim
  from imle import vgg19

  port = imagenet_srim.get_config('port')
  assert (port.features.weights_tuned_for, port.data.augment, port.model.init) == ('torch', 'flip_rot90', 'normal')
  feature_cfg = train.feature_config(port, [64, 128])
  files = {'keras.h5': 'caffe', 'torchvision.npz': 'torch'}
  monkeypatch.setattr(vgg19, 'load_weights', lambda path: vgg19.VGGWeights({}, files[path], path))

  def load(path, **feature_overrides):
    port.vgg.weights_path = path
    return features.load_vgg(port, dataclasses.replace(feature_cfg, **feature_overrides))

  with pytest.raises(UserError) as error:
    load('keras.h5')
  message = str(error.value)
  assert message.startswith("config.features.weights=(0.001, 1.0, 0.1) were tuned for torchvision's")
  assert "keras.h5 expects Caffe's (BGR, 0-255" in message
  assert 'python -m imle.vgg19 convert --pth vgg19-dcbb9e9d.pth' in message
  assert "--config.features.weights='()'" in message
  assert load('torchvision.npz').preprocessing == 'torch'
  assert load('keras.h5', weights=()).preprocessing == 'caffe'  # Estimated weights fit any file.
  assert load('keras.h5', weights_tuned_for='').preprocessing == 'caffe'


def test_pool_selection_in_parts_for_a_progress_bar_equals_one_call(capsys):
  config = tiny_config()
  config.imle.rows_per_chunk = 2  # select() computes 2 rows at once, so the pool of 8 goes in 4 parts of 2 blocks
  mesh = sharding.data_mesh()
  cfg = train.model_config(config)
  sides = train.stage_sides(config, cfg)
  feature_map, frozen = train.make_frozen(config, train.feature_config(config, sides), sides, mesh)
  state = train.create_train_state(config, jax.random.key(0), mesh)
  in_parts, _ = train.compile_steps(train.setup(config, mesh, feature_map, frozen), state)
  one_call = train.PoolTrainStep(in_parts.search, in_parts.train, frozen, train.imle_config(config, mesh))
  batch = next(pools.pool_batches(config, train.imle_config(config, mesh), 0, 0, 1))
  results = []
  for step in (in_parts, one_call):
    copy = jax.tree.map(lambda x: x.copy(), state)  # the step donates its state
    results.append(jax.device_get(step(copy, sharding.to_global(dict(batch), mesh), jax.random.key(1))[0]))
  assert in_parts._num_chunks == 4 and one_call._num_chunks == 1
  np.testing.assert_array_equal(results[0].pool_choice, results[1].pool_choice)
  np.testing.assert_allclose(results[0].pool_distance, results[1].pool_distance, rtol=1e-6)
  assert len(set(results[0].pool_choice[:, 0].tolist())) > 1  # the candidates chosen differ between rows
  assert 'Selecting pool 0' in capsys.readouterr().err
