"""One source for every default: each config section that a dataclass types holds exactly the dataclass's fields, and
its defaults, except where an experiment deliberately differs (EXCEPTIONS, each with its reason)."""

import dataclasses

import pytest

from common import optim
from configs import defaults, imagenet_srgan, imagenet_srim
from imle import features, imle, srgan, srgan_models, vgg19
from imle import models as imle_models
from pixelsr import models as pixelsr_models


def _configs():
  pixelcnn = defaults.pixelcnn_config()
  srim = imagenet_srim.srim_config()
  return {
    'pixelcnn': (pixelcnn, {'model': pixelsr_models.PixelSRConfig, 'optimizer': optim.OptimizerConfig}),
    'regression': (
      defaults.regression_config(pixelcnn),
      {'model': pixelsr_models.ConditioningConfig, 'optimizer': optim.OptimizerConfig},
    ),
    'srim': (
      srim,
      {
        'model': imle_models.SRIMConfig,
        'features': features.FeatureConfig,
        'imle': imle.IMLEConfig,
        'vgg': vgg19.VGGConfig,
        'optimizer': optim.OptimizerConfig,
      },
    ),
    'srgan': (
      imagenet_srgan.srgan_config(srim.data),
      {'model': srgan_models.SRGANConfig, 'srgan': srgan.TrainConfig, 'vgg': vgg19.VGGConfig},
    ),
  }


# (base config, section, field) -> why the experiment's value is not the dataclass's default.
EXCEPTIONS = {
  ('pixelcnn', 'optimizer', 'lr_halve_every'): "appendix A halves the rate every 500k steps; OptimizerConfig's "
  'default schedule is constant',
  ('regression', 'optimizer', 'lr_halve_every'): 'the pixel recursive schedule, which the baseline shares',
  ('regression', 'model', 'zero_init_last'): 'ours: the baseline never leaves bicubic at table 2 init (README)',
  ('srim', 'optimizer', 'name'): "the SRIM port's Adam",
  ('srim', 'optimizer', 'learning_rate'): "the SRIM port's 1e-4",
  ('srim', 'optimizer', 'lr_halve_at'): "the SRIM port's halvings every 80k steps",
}


@pytest.mark.parametrize('name', ['pixelcnn', 'regression', 'srim', 'srgan'])
def test_config_sections_hold_their_dataclass_defaults(name):
  config, sections = _configs()[name]
  for section, cls in sections.items():
    default = dataclasses.asdict(cls())
    assert set(config[section]) == set(default), f'config.{section} of {name} and {cls.__name__} differ in fields'
    for field, value in default.items():
      ours = config[section][field]
      if (name, section, field) in EXCEPTIONS:
        assert ours != value, f'{name}: config.{section}.{field} now equals the default; drop its EXCEPTIONS entry'
      else:
        assert ours == value, (
          f'{name}: config.{section}.{field} = {ours!r} but {cls.__name__}.{field} = {value!r}; '
          'change the default in one place, or list the difference in EXCEPTIONS with its reason'
        )


def test_the_exceptions_name_real_fields():
  configs = _configs()
  for name, section, field in EXCEPTIONS:
    assert field in {f.name for f in dataclasses.fields(configs[name][1][section])}
