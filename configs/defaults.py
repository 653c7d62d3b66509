"""Shared defaults for the experiment configs: every field of a pixel recursive SR run, commented. The model and
optimiser sections are their dataclasses' fields with the dataclasses' defaults (pixelsr.models.PixelSRConfig,
common.optim.OptimizerConfig: one source, commented there); only what appendix A sets otherwise is set here.

Experiment files (celeba_pixelcnn.py, lsun_pixelcnn.py, demo.py, ...) start from `pixelcnn_config()` and change what
their experiment changes, so each file reads as the list of its differences from the paper's appendix A. The
regression baselines (*_regression.py) are `regression_config(<the pixelcnn experiment's config>)`.
"""

import dataclasses

import ml_collections

from common import optim
from pixelsr import models


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.source = 'tfds'  # 'tfds' (named dataset), 'folder' (a user's own images), 'embedded' (scikit-image photos) or
  # 'mnist_corners' (grey MNIST digits moved into an upper corner, section 3.2; common/mnist.py).
  d.name = 'celeb_a'  # tfds dataset name, e.g. 'celeb_a' or 'lsun/bedroom'.
  d.tfds_data_dir = ''  # '' = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  d.manual_dir = ''  # '' = tfds default <data_dir>/downloads/manual, for datasets that need a manual download.
  d.folder = ''  # Root of an image folder (source='folder'); images found recursively.
  d.train_split = 'train'  # tfds split used for training.
  d.eval_split = 'validation'  # tfds split held out for evaluation.
  d.eval_fraction = 0.1  # folder/embedded: share of each image (folder: of the files) held out for evaluation.
  d.num_eval_examples = 512  # Examples per evaluation; 0 = the whole eval split (not for 'embedded': no end).
  d.crop = 'celeba'  # 'celeba' (box around the face), 'centre' (largest centred square), 'random', 'none' (whole).
  d.celeba_crop_box = (40, 15, 148)  # (top, left, size) of the face square in the 178x218 aligned CelebA image.
  d.random_crop_min = 48  # 'random' crop: side of the square cut from the source image, sampled in [min, max].
  d.random_crop_max = 160
  d.highres_size = 32  # Side of the high-res target y.
  d.lowres_size = 8  # Side of the low-res input x.
  # The bicubic highres -> lowres operator (source -> highres is always antialiased): 'antialiased' (tf.image.resize
  # with antialias=True), 'no_antialias' (the same, antialias=False) or 'tf1' (tf.compat.v1.image.resize_bicubic: Keys
  # a = -0.75, no half-pixel centres; what the pixel recursive paper's TF1 pipeline most likely used). Consistency and
  # the Bicubic row of table 1 use it too.
  d.resize = 'antialiased'
  # Training examples only, keyed by (seed, example index): 'none' or 'flip_rot90' (one of the 8 flips / 90-degree
  # rotations of the high-res square, uniformly, before the low-res is made; the SRIM authors' PyTorch port).
  d.augment = 'none'
  # source='folder': hold out the last N class subfolders (sorted by name) whole, as the split 'eval_unseen'; 'train'
  # and 'eval' then use the other classes only. 0 = no classes held out.
  d.num_unseen_classes = 0
  d.shuffle_buffer = 10_000  # tfds: shuffle buffer re-mixing each epoch (folder/embedded permute whole epochs).
  # mnist_corners: where the digits come from: 'idx' (the raw IDX file in mnist_dir) or 'tfds' (tfds `name`, e.g.
  # 'mnist', with train_split / eval_split).
  d.mnist_source = 'idx'
  # mnist_corners, 'idx': folder of t10k-images-idx3-ubyte.gz; a relative path starts at the repository root, so the
  # default is the shared data folder beside the checkout, whatever the working directory.
  d.mnist_dir = '../shared/data/mnist'
  d.mnist_eval_digits = 1_000  # mnist_corners, 'idx': the last N digits of the file are held out for eval.
  d.corner_digit_size = 8  # mnist_corners: side of the digit in the output's corner (<= highres_size // 2).
  d.mnist_grey_levels = 256  # mnist_corners: both images rounded to this many grey levels over 0..255 (2 = binary).
  return d


def pixelcnn_config() -> ml_collections.ConfigDict:
  """Pixel recursive SR on CelebA with appendix A's hyper-parameters (table 2)."""
  c = ml_collections.ConfigDict()
  c.method = 'pixelcnn'  # Which package trains it: 'pixelcnn' (pixelsr.train) or 'regression' (pixelsr.regression).
  c.seed = 0  # Parameter init, data order and sample draws all derive from it.
  c.data = data_config()
  # Every field of pixelsr.models.PixelSRConfig, with its default (appendix A's value, documented there).
  c.model = ml_collections.ConfigDict(dataclasses.asdict(models.PixelSRConfig()))
  c.loss = 'O2'  # 'O2' = CE(A+B) + CE(A) (eq. 8); 'O1' = CE(A+B) (eq. 7).
  # The objective's scale: 'sum' = eq. 8 as written, each image's sub-pixels summed (the batch averaged); 'mean' =
  # averaged over sub-pixels too. Not neutral under TF1's RMSProp (pixelsr/losses.py). Logged losses are per sub-pixel.
  c.loss_reduction = 'sum'
  c.optimizer = ml_collections.ConfigDict(dataclasses.asdict(optim.OptimizerConfig()))  # Documented there.
  c.optimizer.lr_halve_every = 500_000  # Appendix A (OptimizerConfig's default is 0 = never).
  c.batch_size = 32  # Global batch, split over all devices of all hosts.
  # Parts of each device's batch that the train step differentiates one by one and averages: the same loss and
  # gradients up to float rounding, not an ablation. 0 = auto: on CPU up to 4 parts of >= 8 examples (XLA runs them
  # concurrently on its cores: benchmarks/README.md, "The batch in parts, and huge pages"), 1 on GPU/TPU.
  c.train_batch_parts = 0
  c.num_train_steps = 200_000  # 200k for faces, 2M for bedrooms.
  c.log_every_steps = 100  # Train metrics and progress (steps/s, ETA).
  c.eval_every_steps = 5_000  # Loss and bits/dim on the held-out split; 0 = never.
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 20_000  # PNG grid low-res | sample | truth (<workdir>/samples, TensorBoard); 0 = never.
  c.num_sample_images = 8  # Rows of that grid.
  c.sample_temperature = 1.0  # tau of the grid's samples (multiplies the logits; inf = greedy).
  c.profile_steps = ()  # (first, last): jax.profiler trace of those steps into <workdir>/profile; () = off.
  c.evaluate = evaluate_config()
  return c


def evaluate_config() -> ml_collections.ConfigDict:
  """launch/evaluate.py's fields: table 1 on the eval split (config.data.eval_split) of the run's data."""
  e = ml_collections.ConfigDict()
  e.num_examples = 1_000  # Eval examples scored, the first of the split (--num_examples overrides); 0 = all (tfds).
  e.batch_size = 100  # Examples per sampling and scoring step.
  e.temperatures = (1.0, 1.1, 1.2)  # tau of the sampled rows (table 1); all draw with the same keys.
  e.greedy = True  # Add the greedy row (tau = inf, argmax), as figure 6.
  e.nn_database_size = 162_770  # Training examples the NN baseline searches: CelebA's train split, in stream order.
  e.nn_chunk_size = 4_096  # Database entries per device step of the NN search; memory ~ num_examples x this x 4 B.
  e.num_figure_rows = 8  # Examples in table1.png (input | each method | ground truth).
  return e


# The fields of pixelsr.models.ConditioningConfig: what the regression baseline shares with the pixel recursive model.
CONDITIONING_FIELDS = tuple(f.name for f in dataclasses.fields(models.ConditioningConfig))


def regression_config(pixelcnn: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The L2 regression baseline of table 1 (section 5) for a pixel recursive config: its conditioning network with 3
  outputs and tanh (the same fields), trained on the same data by the same loop, optimiser and schedule."""
  c = ml_collections.ConfigDict(pixelcnn.to_dict())
  c.method = 'regression'
  c.model = ml_collections.ConfigDict({k: pixelcnn.model[k] for k in CONDITIONING_FIELDS})
  # Ours, not table 2's: the residual head and each ResNet block's second conv start at zero, so the untrained model
  # predicts the bicubic image. At table 2's init alone the trunk's activations reach a std of ~150 at CelebA size,
  # tanh(residual) starts saturated and the model never leaves bicubic (docs/pixel_recursive.md). False = the paper's.
  c.model.zero_init_last = True
  # config.loss_reduction is the pixel recursive model's (each image's squared errors summed): the paper says only
  # "L2", and the sum keeps the baseline on the model's optimiser scale (benchmarks/README.md, "Loss scale").
  for pixelcnn_only in ('loss', 'sample_temperature', 'evaluate'):
    del c[pixelcnn_only]
  return c


def shrink_for_smoke_run(c: ml_collections.ConfigDict) -> None:
  """The ':runlocal' variant: the same code paths with a tiny model and a few steps, for a CPU smoke run."""
  c.model.update(cond_blocks=1, prior_layers=2, prior_channels=12, prior_head_channels=32)
  c.batch_size = 8
  c.num_train_steps = 20
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 10
  c.data.num_eval_examples = 16
  c.num_sample_images = 4
  c.evaluate.update(num_examples=16, batch_size=8, nn_database_size=512, nn_chunk_size=256, num_figure_rows=4)
