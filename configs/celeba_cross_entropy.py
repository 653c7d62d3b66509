"""The per-pixel cross-entropy model (section 3.1, eq. 4) on CelebA: the conditioning network alone (no PixelCNN
prior), each sub-pixel an independent 256-way softmax; configs/celeba_pixelcnn.py otherwise.

  python launch/train.py --config=configs/celeba_cross_entropy.py --workdir=runs/celeba_cross_entropy
  python launch/train.py --config=configs/celeba_cross_entropy.py:runlocal --workdir=/tmp/smoke   # tiny smoke run

Meant for the paper's hardware (8 GPUs). Compare with figure 2's "cross-entropy" column: crisper than L2 regression,
yet blind to the dependencies between pixels. Needs CelebA prepared by tfds (see docs/pixel_recursive.md, "Datasets").
"""

from configs import celeba_pixelcnn


def get_config(arg: str | None = None):
  c = celeba_pixelcnn.get_config(arg).unlock()
  c.model.use_prior = False
  c.loss = 'O1'  # CE(A + 0) = CE(A); O2 would count the same term twice.
  return c.lock()
