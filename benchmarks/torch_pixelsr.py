"""The paper's pixel recursive model written in plain PyTorch (eager, NCHW, fp32): the port a researcher would write
in an afternoon, kept here as the speed reference of `benchmarks/cpu_train_step.py`. The library never imports it.

Same architecture and FLOPs as `pixelsr.models.PixelRecursiveSR`: the conditioning ResNet (stem, B blocks per scale,
stride-2 transposed convs with a ReLU, a 1x1 to C x 256 logits), the gated PixelCNN prior (a first layer split into
a (k//2) x k vertical conv and a masked 1 x (k//2+1) horizontal conv, gated layers with a (k//2+1) x k vertical conv,
a masked 1 x (k//2+1) horizontal conv, a 1x1 from the down-shifted vertical stack and a masked 1x1 out), the masked
1x1 head, the O2 loss and RMSProp. Colour masks are multiplied into the weights on every call, as the JAX model does.
`load_flax_params` copies a JAX model's parameters in, so the benchmark checks that both compute the same loss.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixelsr import layers


def _mask(in_channels, out_channels, mask_type, num_colours, width, in_chunks=1, out_chunks=1) -> torch.Tensor:
  """The JAX model's (1, width, C_in, C_out) row mask as a torch (C_out, C_in, 1, width) weight mask."""
  m = layers.row_mask(
    width,
    layers.channel_groups(in_channels, num_colours, in_chunks),
    layers.channel_groups(out_channels, num_colours, out_chunks),
    mask_type,
  )
  return torch.from_numpy(np.ascontiguousarray(m.transpose(3, 2, 0, 1)))


class MaskedConv(nn.Conv2d):
  """A 1 x width conv over columns j-width+1 .. j, colour-masked at the current pixel."""

  def __init__(self, cin, cout, width, mask_type, num_colours, in_chunks=1, out_chunks=1):
    super().__init__(cin, cout, (1, width))
    self.register_buffer('mask', _mask(cin, cout, mask_type, num_colours, width, in_chunks, out_chunks))
    self.width = width

  def forward(self, x):
    return F.conv2d(F.pad(x, (self.width - 1, 0, 0, 0)), self.weight * self.mask, self.bias)


def down_shift(x):
  return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gate(x):
  a, b = x.chunk(2, dim=1)
  return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
  def __init__(self, p, k, num_colours):
    super().__init__()
    self.k = k
    self.vertical = nn.Conv2d(p, 2 * p, (k // 2 + 1, k))
    self.horizontal = MaskedConv(p, 2 * p, k // 2 + 1, 'B', num_colours, out_chunks=2)
    self.vertical_to_horizontal = nn.Conv2d(2 * p, 2 * p, 1)
    self.horizontal_out = MaskedConv(p, p, 1, 'B', num_colours)

  def forward(self, v, h):
    k = self.k
    v_pre = self.vertical(F.pad(v, (k // 2, k // 2, k // 2, 0)))
    h_pre = self.horizontal(h) + self.vertical_to_horizontal(down_shift(v_pre))
    return gate(v_pre), h + self.horizontal_out(gate(h_pre))


class PixelCNNPrior(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    p, k1, nc = cfg.prior_channels, cfg.prior_first_kernel, cfg.num_colours
    self.k1, self.nc, self.levels = k1, nc, cfg.num_levels
    self.first_vertical = nn.Conv2d(nc, p, (k1 // 2, k1))
    self.first_horizontal = MaskedConv(nc, p, k1 // 2 + 1, 'A', nc)
    self.gated = nn.ModuleList(GatedLayer(p, cfg.prior_kernel, nc) for _ in range(cfg.prior_layers))
    self.head = MaskedConv(p, cfg.prior_head_channels, 1, 'B', nc)
    self.logits = MaskedConv(cfg.prior_head_channels, nc * cfg.num_levels, 1, 'B', nc)

  def forward(self, y):
    k1 = self.k1
    v = self.first_vertical(F.pad(y, (k1 // 2, k1 // 2, k1 // 2 - 1, 0)))
    h = self.first_horizontal(y) + down_shift(v)
    for layer in self.gated:
      v, h = layer(v, h)
    logits = self.logits(F.relu(self.head(F.relu(h))))
    b, _, height, width = logits.shape
    return logits.view(b, self.nc, self.levels, height, width)


class ResNetBlock(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class ConditioningNet(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    c, nc = cfg.cond_channels, cfg.num_colours
    self.nc, self.levels = nc, cfg.num_levels
    self.stem = nn.Conv2d(nc, c, 3, padding=1)
    num_upsamples = int(np.log2(cfg.upsample_factor))
    self.stages = nn.ModuleList(
      nn.Sequential(*[ResNetBlock(c) for _ in range(cfg.cond_blocks)]) for _ in range(num_upsamples + 1)
    )
    # flax's 'SAME' stride-2 transposed conv is torch's unpadded one (2n+1 outputs) without the last row and column.
    self.upsample = nn.ModuleList(nn.ConvTranspose2d(c, c, 3, stride=2) for _ in range(num_upsamples))
    self.logits = nn.Conv2d(c, nc * cfg.num_levels, 1)

  def forward(self, x):
    h = self.stem(x)
    for i, stage in enumerate(self.stages):
      h = stage(h)
      if i < len(self.upsample):
        h = F.relu(self.upsample[i](h)[:, :, :-1, :-1])
    logits = self.logits(h)
    b, _, height, width = logits.shape
    return logits.view(b, self.nc, self.levels, height, width)


class PixelRecursiveSR(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.conditioning, self.prior = ConditioningNet(cfg), PixelCNNPrior(cfg)

  def forward(self, lowres, highres):
    signed = lambda x: x.float() / 127.5 - 1.0
    return self.conditioning(signed(lowres)), self.prior(signed(highres))


def o2_loss(cond_logits, prior_logits, highres):
  """CE(A + B) + CE(A), each the mean over sub-pixels (the JAX model's O2). Logits (B, C, K, H, W)."""
  target = highres.long()
  ce = lambda logits: F.cross_entropy(logits.transpose(1, 2), target)  # classes on dim 1: (B, K, C, H, W)
  return ce(cond_logits + prior_logits) + ce(cond_logits)


def make_train_step(model, lr=4e-4, autocast: bool = False):
  """One RMSProp step (decay 0.95, momentum 0.9, as appendix A) on an NCHW uint8 batch; returns the loss. With
  `autocast`, the one line a PyTorch user adds for speed: the forward pass and the loss under
  `torch.autocast('cpu', dtype=torch.bfloat16)` (convolutions and matmuls in bf16, cross-entropy in f32; the
  parameters, gradients and optimiser stay f32)."""
  opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.95, eps=1e-8, momentum=0.9)

  def step(lowres, highres):
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
      loss = o2_loss(*model(lowres, highres), highres)
    loss.backward()
    opt.step()
    return loss.detach()

  return step


def load_flax_params(model: PixelRecursiveSR, params: dict) -> None:
  """Copies the parameters of a `pixelsr.models.PixelRecursiveSR` (fp32) into `model`."""

  def conv(module, p, flip=False):
    kernel = np.asarray(p['kernel'])
    kernel = kernel.reshape(1, 1, *kernel.shape) if kernel.ndim == 2 else kernel  # Dense = 1x1 conv
    # flax's ConvTranspose correlates; torch's is the transpose of a convolution (flipped, in/out swapped).
    weight = kernel[::-1, ::-1].transpose(2, 3, 0, 1) if flip else kernel.transpose(3, 2, 0, 1)
    module.weight.data = torch.from_numpy(np.ascontiguousarray(weight))
    module.bias.data = torch.from_numpy(np.asarray(p['bias']).copy())

  cond, prior = params['conditioning'], params['prior']
  c = model.conditioning
  conv(c.stem, cond['stem'])
  for s, stage in enumerate(c.stages):
    for b, block in enumerate(stage):
      conv(block.conv1, cond[f'stage{s}_block{b}']['conv1'])
      conv(block.conv2, cond[f'stage{s}_block{b}']['conv2'])
  for s, up in enumerate(c.upsample):
    conv(up, cond[f'upsample{s}'], flip=True)
  conv(c.logits, cond['logits'])
  p = model.prior
  conv(p.first_vertical, prior['first']['vertical'])
  conv(p.first_horizontal, prior['first']['horizontal'])
  for i, g in enumerate(p.gated):
    for name in ('vertical', 'horizontal', 'vertical_to_horizontal', 'horizontal_out'):
      conv(getattr(g, name), prior[f'gated{i}'][name])
  conv(p.head, prior['head'])
  conv(p.logits, prior['logits'])
