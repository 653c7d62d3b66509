"""The quickstart: a small pixel recursive model on the photographs that ship with scikit-image (no download).

  python launch/train.py                      # = --config=configs/demo.py --workdir=runs/demo

For a laptop or a 2-core CPU: 6 to 8 minutes (benchmarks/README.md). It shows the loss falling, writes a labelled sample
grid (input | bicubic | tau = 1.0 | tau = 1.2 | greedy | truth) to runs/demo/samples and ends with the held-out bits
per colour value of the model against bicubic, and the command that trains on (pixelsr/summary.py). Random crops of 7
photos are a tiny data set, so expect textures, not faces; the paper-size runs are configs/celeba_pixelcnn.py and
configs/lsun_pixelcnn.py.
"""

from configs import defaults


def get_config(arg: str | None = None):
  c = defaults.pixelcnn_config()
  c.data.source = 'embedded'
  c.data.crop = 'random'
  c.data.random_crop_min = 32
  c.data.random_crop_max = 96
  c.data.num_eval_examples = 128
  c.model.update(cond_blocks=2, prior_layers=4, prior_channels=32, prior_head_channels=128)
  # Appendix A's RMSProp (lr 4e-4, mean square from 1) on eq. 8's per-image sum, its schedule compressed: the rate
  # halved at steps 500, 1000 and 1500 rather than every 500k. At a constant rate the first ResNet stage's inner
  # ReLUs die from step ~500 on, in some seeds over half of a site's channels; the early halvings keep them alive
  # (benchmarks/README.md, "The demo's optimiser").
  c.optimizer.lr_halve_at = (500, 1000, 1500)
  c.batch_size = 8
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.sample_every_steps = 1000  # With each eval: the cached sampler draws the 4-image grid in about a second.
  c.num_sample_images = 4
  # launch/evaluate.py: the held-out crops above; NN over 20k training crops (2,000 steps of 8 see 16,000).
  c.evaluate.update(num_examples=128, batch_size=64, nn_database_size=20_000, num_figure_rows=6)
  if arg == 'runlocal':
    defaults.shrink_for_smoke_run(c)
  return c.lock()
