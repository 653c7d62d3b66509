"""config.profile_steps: a jax.profiler trace of the chosen train steps under <workdir>/profile."""

import glob
import os

import pytest

from common.errors import UserError
from pixelsr import regression
from tests.helpers import tiny_regression_config as tiny_config


def test_profile_steps_write_a_trace_under_the_workdir(tmp_path):
  regression.train_and_evaluate(tiny_config(profile_steps=(2, 3)), str(tmp_path))
  for name in ('*.xplane.pb', 'perfetto_trace.json.gz'):  # TensorBoard's and Perfetto's formats.
    traces = glob.glob(os.path.join(tmp_path, 'profile', 'plugins', 'profile', '*', name))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, (name, os.listdir(tmp_path))


def test_no_profile_by_default(tmp_path):
  regression.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'profile'))


@pytest.mark.parametrize('steps', [(3,), (0, 2), (3, 2), (1, 2, 3)])
def test_bad_profile_steps_name_the_field(tmp_path, steps):
  with pytest.raises(UserError, match=r'config\.profile_steps must be'):
    regression.train_and_evaluate(tiny_config(profile_steps=steps), str(tmp_path))
  assert not os.listdir(tmp_path)
