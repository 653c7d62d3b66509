"""examples/ablation.py: each arm's config change reaches the loss it trains, and the table has a row per arm."""

import math
import os
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, os.path.join(REPO, 'examples'))
import ablation  # noqa: E402  (examples/ is not a package)


@pytest.mark.slow
def test_the_objectives_ablation_trains_each_arm_with_its_own_loss(tmp_path):
  results = ablation.run(steps=2, size='tiny', workdir=str(tmp_path))
  assert list(results) == list(ablation.ARMS)
  o2, o1 = results['O2 (eq. 8)'], results['O1 (eq. 7)']
  # Eq. 8 is eq. 7 plus the conditioning network's own cross entropy; eq. 7 is the joint cross entropy alone.
  assert o2['train/O2'] == pytest.approx(o2['train/ce_joint'] + o2['train/ce_cond'], rel=1e-5)
  assert o1['train/O1'] == pytest.approx(o1['train/ce_joint'], rel=1e-5)
  assert 'train/O2' not in o1 and 'train/O1' not in o2
  assert sorted(os.listdir(tmp_path)) == ['o1', 'o2']
  rows = ablation.table(results).splitlines()
  assert len(rows) == 2 + len(ablation.ARMS) and rows[2].startswith('| O2 (eq. 8) |')
  assert all(math.isfinite(float(cell)) for row in rows[2:] for cell in row.strip('|').split('|')[1:])


def test_arm_config_changes_only_the_named_fields():
  config = ablation.arm_config({'loss': 'O1', 'model.prior_channels': 16}, steps=7, size='tiny')
  assert (config.loss, config.model.prior_channels, config.num_train_steps) == ('O1', 16, 7)
  assert config.model.cond_blocks == ablation.demo.get_config('runlocal').model.cond_blocks
