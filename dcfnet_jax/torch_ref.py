"""A PyTorch DCFNet from docs/dcfnet_architecture.md: parity tests, weight conversion, benchmarks.

This is an independent implementation of the official network (PanCollection, builder mode "C"):
NCHW, torch default initialisation, and a `state_dict()` whose keys, order and shapes are exactly
those of the official model (`tests/data/dcfnet_torch_state_dict_C8.txt`), so official
checkpoints load into it unchanged and files it writes load into the official model.

Every irregularity of the official code is reproduced on purpose (docs/dcfnet_architecture.md
§10): 3 blocks per HR-module branch, the (nb+1)x(nb+1) `fcc_w` normalised over axis 0, the
unused `b2_conv_out`, the stage2 new branch computed from pre-fusion features with no ReLU, BN
momentum 0.01 / eps 1e-5 and align_corners=True bilinear resizing.

`forward(pan, lms, mms, ms)` returns the raw head output; lms is *not* added
(docs/dcfnet_architecture.md §1).

torch is an optional dependency: only this module, `convert` (its torch paths) and `bench`
import it.
"""

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

BN_MOMENTUM = 0.01  # torch convention (new = (1-m)*old + m*batch)
BN_EPS = 1e-5
NORM_EPS = 1e-4  # added to the sum in the fusion-weight normalisation
BRANCH_CHANNELS = (32, 64, 128)
BLOCKS_PER_BRANCH = 3  # the option lists 4, the builder's range(1, n) builds 3


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, bias=False)


def _cbr(cin: int, cout: int, stride: int, relu: bool = True) -> nn.Sequential:
  """conv3x3 -> BN (-> ReLU): keys `.0` (conv) and `.1` (BN)."""
  layers = [_conv3x3(cin, cout, stride), _bn(cout)]
  if relu:
    layers.append(nn.ReLU(inplace=True))
  return nn.Sequential(*layers)


def normalize_weights(w: torch.Tensor) -> torch.Tensor:
  """relu(w) / (sum over axis 0 of relu(w) + 1e-4): the rs_w / fcc_w normalisation."""
  w = F.relu(w)
  return w / (w.sum(dim=0) + NORM_EPS)


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
  """Bilinear resize with align_corners=True (not half-pixel)."""
  return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def make_mms_torch(ms: torch.Tensor) -> torch.Tensor:
  """The half-resolution MS input: `ms` (N,C,h,w) resized to exactly (2h, 2w), align_corners."""
  return upsample(ms, (2 * ms.shape[-2], 2 * ms.shape[-1]))


class BasicBlock(nn.Module):
  """relu(BN(conv(relu(BN(conv(x))))) + x); never has a downsample."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv1 = _conv3x3(channels, channels)
    self.bn1 = _bn(channels)
    self.conv2 = _conv3x3(channels, channels)
    self.bn2 = _bn(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block; `downsample` only where channels change."""

  expansion = 4

  def __init__(self, cin: int, planes: int = 64):
    super().__init__()
    cout = planes * self.expansion
    self.conv1 = _conv1x1(cin, planes)
    self.bn1 = _bn(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = _bn(planes)
    self.conv3 = _conv1x1(planes, cout)
    self.bn3 = _bn(cout)
    self.downsample = (nn.Sequential(_conv1x1(cin, cout), _bn(cout)) if cin != cout else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(y + residual)


class ChannelFuseBlock(nn.Module):
  """CFB(c): injects an MS image `m` into a c-channel feature `a` (dcfnet_architecture.md §3)."""

  def __init__(self, num_bands: int, channels: int):
    super().__init__()
    self.rs_w = nn.Parameter(torch.ones(2))
    self.conv_up = _conv3x3(num_bands, channels)
    self.res_block = nn.Sequential(BasicBlock(channels))  # exactly one block

  def forward(self, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    w = normalize_weights(self.rs_w)
    z = F.relu(w[0] * a + w[1] * self.conv_up(m))
    return self.res_block(z)


class Stage1Transition(nn.Module):
  """transition1[1][0][0]: x1 = CFB64(CBR(256->64, s2)(feat), mms)."""

  def __init__(self, num_bands: int, cin: int = 256, cout: int = 64):
    super().__init__()
    self.b0_in_down = _cbr(cin, cout, stride=2)
    self.cfs_layers = nn.Sequential(ChannelFuseBlock(num_bands, cout))

  def forward(self, feat: torch.Tensor, mms: torch.Tensor) -> torch.Tensor:
    return self.cfs_layers[0](self.b0_in_down(feat), mms)


class Stage2NewBranch(nn.Module):
  """stage2.transition_layers[2][0][0], "TransitionFPN": the 128-channel branch.

  docs/dcfnet_architecture.md §5.
  """

  def __init__(self, num_bands: int):
    super().__init__()
    c0, c1, c2 = BRANCH_CHANNELS
    self.rs_w = nn.Parameter(torch.ones(2))
    self.b0_in_down = _cbr(c0, c1, stride=2)
    self.b1_down = _cbr(c1, c2, stride=2)
    self.b1_in_down = _cbr(c1, c2, stride=2)
    self.b2_conv_out = _cbr(c2, c2, stride=2, relu=False)  # built, never called
    self.cfs_layers = nn.Sequential(ChannelFuseBlock(num_bands, c2))

  def forward(self, x0: torch.Tensor, x1: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
    w = normalize_weights(self.rs_w)
    u = x1 + self.b0_in_down(x0)
    v = self.cfs_layers[0](self.b1_down(u), ms)
    p = self.b1_in_down(x1)
    return w[0] * p + w[1] * v  # no ReLU


def _fuse_path(i: int, j: int) -> nn.Module | None:
  """T_ij of dcfnet_architecture.md §5, nested as the official code (so state_dict keys match)."""
  ci, cj = BRANCH_CHANNELS[i], BRANCH_CHANNELS[j]
  if j == i:
    return None
  if j > i:  # conv1x1 + BN; the upsampling happens in forward
    return nn.Sequential(_conv1x1(cj, ci), _bn(ci))
  steps = [_cbr(cj, cj, stride=2) for _ in range(i - j - 1)]
  steps.append(_cbr(cj, ci, stride=2, relu=False))
  return nn.Sequential(*steps)


class HRModule(nn.Module):
  """One HR module with `num_branches` branches, cross-branch fusion and (stage2) a new branch."""

  def __init__(self, num_bands: int, num_branches: int, new_branch: bool):
    super().__init__()
    self.num_branches = num_branches
    self.fcc_w = nn.Parameter(torch.ones(num_branches + 1, num_branches + 1))
    self.branches = nn.ModuleList([
        nn.Sequential(*[BasicBlock(BRANCH_CHANNELS[b]) for _ in range(BLOCKS_PER_BRANCH)])
        for b in range(num_branches)
    ])
    self.fuse_layers = nn.ModuleList([
        nn.ModuleList([_fuse_path(i, j) for j in range(num_branches)])
        for i in range(num_branches)
    ])
    if new_branch:
      self.transition_layers = nn.ModuleList(
          [None] * num_branches + [nn.Sequential(nn.Sequential(Stage2NewBranch(num_bands)))])
    else:
      self.transition_layers = None

  def forward(self, xs: list[torch.Tensor], ms: torch.Tensor) -> list[torch.Tensor]:
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    w = normalize_weights(self.fcc_w)
    outs = []
    for i in range(self.num_branches):
      y = None
      for j in range(self.num_branches):
        path = self.fuse_layers[i][j]
        if j == i:
          t = xs[j]
        elif j > i:
          t = upsample(path(xs[j]), xs[i].shape[-2:])
        else:
          t = path(xs[j])
        y = w[i, j] * t if y is None else y + w[i, j] * t
      outs.append(F.relu(y))
    if self.transition_layers is not None:  # new branch from the pre-fusion x0, x1
      outs.append(self.transition_layers[self.num_branches][0][0](xs[0], xs[1], ms))
    return outs


class DCFNetTorch(nn.Module):
  """DCFNet (builder mode "C"): `forward(pan, lms, mms, ms)` -> raw (N, C, H, W) head output."""

  def __init__(self, num_bands: int = 8):
    super().__init__()
    if num_bands < 1:
      raise ValueError(f"num_bands must be positive, got {num_bands}")
    self.num_bands = num_bands
    self.conv1 = _conv3x3(num_bands + 1, 64)
    self.bn1 = _bn(64)
    self.conv2 = _conv3x3(64, 64)
    self.bn2 = _bn(64)
    self.layer1 = nn.Sequential(*[Bottleneck(64 if b == 0 else 256) for b in range(4)])
    c0, c1, _ = BRANCH_CHANNELS
    self.transition1 = nn.ModuleList([
        _cbr(256, c0, stride=1),
        nn.Sequential(nn.Sequential(Stage1Transition(num_bands, 256, c1))),
    ])
    self.stage2 = nn.Sequential(HRModule(num_bands, 2, new_branch=True))
    self.stage3 = nn.Sequential(HRModule(num_bands, 3, new_branch=False))
    head = sum(BRANCH_CHANNELS)
    self.last_layer = nn.Sequential(
        nn.Conv2d(head, head, 1), _bn(head), nn.ReLU(inplace=True), nn.Conv2d(head, num_bands, 1))

  def forward(self, pan: torch.Tensor, lms: torch.Tensor, mms: torch.Tensor,
              ms: torch.Tensor) -> torch.Tensor:
    _check_inputs(pan, lms, mms, ms, self.num_bands)
    x = torch.cat([pan, lms], dim=1)  # pan first
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    feat = self.layer1(x)
    xs = [self.transition1[0](feat), self.transition1[1][0][0](feat, mms)]
    xs = self.stage2[0](xs, ms)
    y0, y1, y2 = self.stage3[0](xs, ms)
    size = y0.shape[-2:]
    h = torch.cat([y0, upsample(y1, size), upsample(y2, size)], dim=1)
    return self.last_layer(h)


def _check_inputs(pan, lms, mms, ms, num_bands: int) -> None:
  n, _, h, w = lms.shape
  expected = {
      "pan": (n, 1, h, w), "lms": (n, num_bands, h, w),
      "mms": (n, num_bands, h // 2, w // 2), "ms": (n, num_bands, h // 4, w // 4)}
  got = {"pan": pan.shape, "lms": lms.shape, "mms": mms.shape, "ms": ms.shape}
  if h % 4 or w % 4:
    raise ValueError(f"lms height/width must be multiples of 4, got {tuple(lms.shape)}")
  bad = [f"{k}: got {tuple(got[k])}, expected {v}" for k, v in expected.items()
         if tuple(got[k]) != v]
  if bad:
    raise ValueError("DCFNetTorch inputs (NCHW) have wrong shapes: " + "; ".join(bad))
