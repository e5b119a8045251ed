"""DCFNet (Wu et al., ICCV 2021) in Flax NNX, exactly as the official PyTorch model computes it.

The structure follows docs/dcfnet_architecture.md §1–§8, including the irregularities of the
official code: 3 BasicBlocks per HR-module branch, (nb+1)x(nb+1) `fcc_w` normalised over axis 0
(a dead last column; the last row only enters the denominators), the never-called `b2_conv_out`,
the stage-2 new branch built from pre-fusion features without a final ReLU, align-corners
bilinear upsampling and torch BatchNorm statistics.

Attribute names mirror the torch module names, so every `nnx.state(model)` path maps to one
state_dict key (`dcfnet_jax.convert.flax_path_to_torch_key`; rule in docs/model.md). Inputs and outputs are NHWC.
The network returns the raw head output; adding `lms` (residual learning) is the train/eval
step's decision (`DCFNet.default_residual`, `config.model.residual`).
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models import layers, ops
from dcfnet_jax.models.layers import BatchNorm, Conv, Sequential, normalize_fusion_weights
from dcfnet_jax.models.ops import FastFlag, barrier, resize_align_corners

Array = jax.Array
Dtype = Any

BRANCH_CHANNELS = (32, 64, 128)
BLOCKS_PER_BRANCH = 3  # the official builder loops range(1, 4): 3 blocks, not the 4 configured
LAYER1_BLOCKS = 4
BOTTLENECK_PLANES = 64
BOTTLENECK_EXPANSION = 4


def make_mms(ms: Array, *, fast: FastFlag = "auto") -> Array:
  """The half-resolution MS input: `ms` (N,h,w,C) resized to exactly (2h, 2w), align_corners=True.

  This is how the official train step derives `mms` from `ms` (docs/dcfnet_architecture.md
  §1). Pure jnp, jittable.
  """
  if ms.ndim != 4:
    raise ValueError(f"make_mms expects an NHWC array, got shape {ms.shape}")
  return resize_align_corners(ms, (2 * ms.shape[1], 2 * ms.shape[2]),
                              fast=ops.resolve_fast(fast))


class _Options:
  """Constructor options shared by every layer of one network (not a module; not stored)."""

  def __init__(self, fast: frozenset[str], dtype: Dtype, param_dtype: Dtype, precision,
               bn_momentum: float = layers.BN_MOMENTUM):
    self.bn_momentum = bn_momentum
    self.fast = fast
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision

  def conv(self, i: int, o: int, k: int, *, stride: int = 1, use_bias: bool = False,
           rngs: nnx.Rngs) -> Conv:
    return Conv(i, o, k, stride=stride, use_bias=use_bias, fast=self.fast, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision, rngs=rngs)

  def bn(self, c: int) -> BatchNorm:
    return BatchNorm(c, momentum=self.bn_momentum, fast=self.fast, dtype=self.dtype,
                     param_dtype=self.param_dtype)

  def conv_bn(self, i: int, o: int, k: int = 3, *, stride: int = 1, relu: bool,
              rngs: nnx.Rngs) -> Sequential:
    return layers.conv_bn(i, o, k, stride=stride, relu=relu, fast=self.fast, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision,
                          bn_momentum=self.bn_momentum, rngs=rngs)

  def fusion_weights(self, shape: tuple[int, ...]) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, self.param_dtype))


class BasicBlock(nnx.Module):
  """relu(BN(conv3x3(relu(BN(conv3x3(x))))) + x); never has a downsample in DCFNet."""

  def __init__(self, channels: int, *, opts: _Options, rngs: nnx.Rngs):
    self.fast = opts.fast
    self.conv1 = opts.conv(channels, channels, 3, rngs=rngs)
    self.bn1 = opts.bn(channels)
    self.conv2 = opts.conv(channels, channels, 3, rngs=rngs)
    self.bn2 = opts.bn(channels)

  def __call__(self, x: Array) -> Array:
    out = barrier(self.bn1(self.conv1(x), relu=True), self.fast)
    out = self.bn2(self.conv2(out))
    return barrier(jax.nn.relu(out + x), self.fast)


class Bottleneck(nnx.Module):
  """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4); block 0 of layer1 has `downsample`."""

  def __init__(self, in_features: int, planes: int, *, downsample: bool, opts: _Options,
               rngs: nnx.Rngs):
    out_features = planes * BOTTLENECK_EXPANSION
    self.fast = opts.fast
    self.conv1 = opts.conv(in_features, planes, 1, rngs=rngs)
    self.bn1 = opts.bn(planes)
    self.conv2 = opts.conv(planes, planes, 3, rngs=rngs)
    self.bn2 = opts.bn(planes)
    self.conv3 = opts.conv(planes, out_features, 1, rngs=rngs)
    self.bn3 = opts.bn(out_features)
    self.downsample = (opts.conv_bn(in_features, out_features, 1, relu=False, rngs=rngs)
                       if downsample else None)

  def __call__(self, x: Array) -> Array:
    out = barrier(self.bn1(self.conv1(x), relu=True), self.fast)
    out = barrier(self.bn2(self.conv2(out), relu=True), self.fast)
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return barrier(jax.nn.relu(out + residual), self.fast)


class ChannelFuseBlock(nnx.Module):
  """CFB: injects the MS image into a feature map (docs/dcfnet_architecture.md §3).

  relu(w0 * a + w1 * conv_up(ms)) with w = norm(rs_w), then exactly one BasicBlock.
  """

  def __init__(self, channels: int, num_bands: int, *, opts: _Options, rngs: nnx.Rngs):
    self.rs_w = opts.fusion_weights((2,))
    self.conv_up = opts.conv(num_bands, channels, 3, rngs=rngs)
    self.res_block = nnx.List([BasicBlock(channels, opts=opts, rngs=rngs)])

  def __call__(self, a: Array, ms: Array) -> Array:
    w = normalize_fusion_weights(self.rs_w[...]).astype(a.dtype)
    z = jax.nn.relu(w[0] * a + w[1] * self.conv_up(ms))
    return self.res_block[0](z)


class Transition1NewBranch(nnx.Module):
  """`transition1.1.0.0`: the second branch, CFB64(CBR(256->64, s2)(feat), mms)."""

  def __init__(self, in_features: int, channels: int, num_bands: int, *, opts: _Options,
               rngs: nnx.Rngs):
    self.b0_in_down = opts.conv_bn(in_features, channels, stride=2, relu=True, rngs=rngs)
    self.cfs_layers = nnx.List([ChannelFuseBlock(channels, num_bands, opts=opts, rngs=rngs)])

  def __call__(self, feat: Array, mms: Array) -> Array:
    return self.cfs_layers[0](self.b0_in_down(feat), mms)


class Stage2NewBranch(nnx.Module):
  """`stage2.0.transition_layers.2.0.0`: the third branch, from pre-fusion x0, x1 and ms.

  x2 = w0 * b1_in_down(x1) + w1 * CFB128(b1_down(x1 + b0_in_down(x0)), ms), w = norm(rs_w),
  with no ReLU after the sum. `b2_conv_out` is built (as in the official model) but never used.
  """

  def __init__(self, channels: Sequence[int], num_bands: int, *, opts: _Options,
               rngs: nnx.Rngs):
    c0, c1, c2 = channels
    self.rs_w = opts.fusion_weights((2,))
    self.b0_in_down = opts.conv_bn(c0, c1, stride=2, relu=True, rngs=rngs)
    self.b1_down = opts.conv_bn(c1, c2, stride=2, relu=True, rngs=rngs)
    self.b1_in_down = opts.conv_bn(c1, c2, stride=2, relu=True, rngs=rngs)
    self.b2_conv_out = opts.conv_bn(c2, c2, stride=2, relu=False, rngs=rngs)  # never called
    self.cfs_layers = nnx.List([ChannelFuseBlock(c2, num_bands, opts=opts, rngs=rngs)])

  def __call__(self, x0: Array, x1: Array, ms: Array) -> Array:
    w = normalize_fusion_weights(self.rs_w[...]).astype(x1.dtype)
    u = x1 + self.b0_in_down(x0)
    v = self.cfs_layers[0](self.b1_down(u), ms)
    p = self.b1_in_down(x1)
    return w[0] * p + w[1] * v


def _fuse_path(i: int, j: int, channels: Sequence[int], opts: _Options,
               rngs: nnx.Rngs) -> Sequential | None:
  """T_ij: brings branch j to branch i's resolution and width (dcfnet_architecture.md §5)."""
  if j == i:
    return None
  if j > i:  # 1x1 conv + BN, then align-corners upsampling (done in HRModule.__call__)
    return opts.conv_bn(channels[j], channels[i], 1, relu=False, rngs=rngs)
  steps = [opts.conv_bn(channels[j], channels[j], stride=2, relu=True, rngs=rngs)
           for _ in range(i - j - 1)]
  steps.append(opts.conv_bn(channels[j], channels[i], stride=2, relu=False, rngs=rngs))
  return Sequential(steps)


class HRModule(nnx.Module):
  """One HR module: per-branch BasicBlocks, then cross-branch fusion with norm(fcc_w).

  With `new_branch=True` (stage2) a third branch is grown by `transition_layers[2][0][0]` from
  the post-block, pre-fusion features.
  """

  def __init__(self, channels: Sequence[int], num_bands: int, *, new_branch: bool,
               opts: _Options, rngs: nnx.Rngs):
    nb = len(channels)
    self.num_branches = nb
    self.fast = opts.fast
    self.fcc_w = opts.fusion_weights((nb + 1, nb + 1))
    self.branches = nnx.List([
        nnx.List([BasicBlock(c, opts=opts, rngs=rngs) for _ in range(BLOCKS_PER_BRANCH)])
        for c in channels])
    self.fuse_layers = nnx.List([
        nnx.List([_fuse_path(i, j, channels, opts, rngs) for j in range(nb)])
        for i in range(nb)])
    if new_branch:
      grown = Stage2NewBranch(BRANCH_CHANNELS[:nb + 1], num_bands, opts=opts, rngs=rngs)
      self.transition_layers = nnx.List([None] * nb + [nnx.List([nnx.List([grown])])])
    else:
      self.transition_layers = None

  def __call__(self, xs: Sequence[Array], ms: Array) -> list[Array]:
    if len(xs) != self.num_branches:
      raise ValueError(f"HRModule expects {self.num_branches} inputs, got {len(xs)}")
    xs = list(xs)
    for b, blocks in enumerate(self.branches):
      for block in blocks:
        xs[b] = block(xs[b])
    w = normalize_fusion_weights(self.fcc_w[...]).astype(xs[0].dtype)
    ys = []
    for i in range(self.num_branches):
      acc = None
      for j in range(self.num_branches):
        if j == i:
          t = xs[j]
        elif j > i:
          t = resize_align_corners(self.fuse_layers[i][j](xs[j]), xs[i].shape[1:3],
                                   fast=self.fast)
        else:
          t = self.fuse_layers[i][j](xs[j])
        term = w[i, j] * t
        acc = term if acc is None else acc + term
      ys.append(barrier(jax.nn.relu(acc), self.fast))
    if self.transition_layers is not None:
      ys.append(self.transition_layers[self.num_branches][0][0](xs[0], xs[1], ms))
    return ys


class DCFNet(nnx.Module):
  """DCFNet for `num_bands` spectral bands; `__call__(pan, lms, mms, ms)` -> raw output (N,H,W,C).

  Args:
    num_bands: C, the number of MS bands (8 for WV3/WV2, 4 for QB/GF2).
    rngs: parameter initialisation (torch default initialisers, docs/dcfnet_architecture.md §7).
    dtype: compute dtype of convolutions and activations (e.g. bfloat16); BatchNorm statistics
      and the fusion-weight normalisation stay float32.
    param_dtype: dtype of parameters (float32; float64 for exactness tests under x64).
    fast: use the CPU-fast gradient formulations (True/False), "auto" = exactly when the
      default backend is the CPU, or a set of trick names (`ops.ALL_FAST_TRICKS`). Same
      mathematics either way; switch later with `model.set_attributes(fast=...)`.
    precision: `jax.lax.Precision` for convolutions and matmuls (e.g. HIGHEST for parity
      tests on GPU/TPU, whose default may use bfloat16 passes); None = backend default.
    head_init: "torch" (official: PyTorch's default init everywhere) or "zero": the head's last
      1x1 conv starts at zero weights and bias, so the raw output is 0 and a residual network
      starts exactly at lms (EXP) instead of an initial output of std ~0.4 that training must
      first cancel. Not the official init; the demo config uses it to learn in a few hundred
      steps.
    bn_momentum_torch: BatchNorm momentum in torch's convention (running = (1 − m)·running +
      m·batch); the official 0.01 (docs/dcfnet_architecture.md §2) lets the running
      statistics trail the weights by ~100 steps, too slow for runs of a few hundred steps
      (the demo uses 0.1, torch's default).
  """

  default_residual = True  # our train and eval steps both add lms (dcfnet_architecture.md §1)
  output_layer = ("last_layer", 3)  # the head's last 1x1 convolution (params path)

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, fast: FastFlag = "auto", precision=None,
               head_init: str = "torch", bn_momentum_torch: float = 1.0 - layers.BN_MOMENTUM):
    if not isinstance(num_bands, int) or num_bands < 1:
      raise ValueError(f"num_bands must be a positive int, got {num_bands!r}")
    if head_init not in ("torch", "zero"):
      raise ValueError(f"head_init must be 'torch' or 'zero', got {head_init!r}")
    if not 0.0 < bn_momentum_torch <= 1.0:
      raise ValueError(f"bn_momentum_torch must be in (0, 1], got {bn_momentum_torch!r}")
    opts = _Options(ops.resolve_fast(fast), dtype, param_dtype, precision,
                    bn_momentum=1.0 - bn_momentum_torch)
    self.num_bands = num_bands
    self.fast = opts.fast
    self.dtype = dtype
    self.out_dtype = jnp.promote_types(dtype, param_dtype)
    stem = 64
    self.conv1 = opts.conv(num_bands + 1, stem, 3, rngs=rngs)
    self.bn1 = opts.bn(stem)
    self.conv2 = opts.conv(stem, stem, 3, rngs=rngs)
    self.bn2 = opts.bn(stem)
    feat = BOTTLENECK_PLANES * BOTTLENECK_EXPANSION
    self.layer1 = nnx.List([
        Bottleneck(stem if k == 0 else feat, BOTTLENECK_PLANES, downsample=k == 0, opts=opts,
                   rngs=rngs)
        for k in range(LAYER1_BLOCKS)])
    c0, c1, c2 = BRANCH_CHANNELS
    self.transition1 = nnx.List([
        opts.conv_bn(feat, c0, stride=1, relu=True, rngs=rngs),
        nnx.List([nnx.List([Transition1NewBranch(feat, c1, num_bands, opts=opts, rngs=rngs)])]),
    ])
    self.stage2 = nnx.List([HRModule((c0, c1), num_bands, new_branch=True, opts=opts, rngs=rngs)])
    self.stage3 = nnx.List([HRModule((c0, c1, c2), num_bands, new_branch=False, opts=opts,
                                     rngs=rngs)])
    head = c0 + c1 + c2
    self.last_layer = Sequential([
        opts.conv(head, head, 1, use_bias=True, rngs=rngs),
        opts.bn(head),
        jax.nn.relu,
        opts.conv(head, num_bands, 1, use_bias=True, rngs=rngs),
    ])
    if head_init == "zero":
      out_conv = self.last_layer[3]
      out_conv.kernel[...] = jnp.zeros_like(out_conv.kernel[...])
      out_conv.bias[...] = jnp.zeros_like(out_conv.bias[...])

  def _check_inputs(self, pan: Array, lms: Array, mms: Array, ms: Array) -> None:
    c = self.num_bands
    if pan.ndim != 4 or pan.shape[-1] != 1:
      raise ValueError(f"pan must be (N,H,W,1) NHWC, got shape {pan.shape}")
    n, h, w, _ = pan.shape
    if h % 4 or w % 4:
      raise ValueError(f"pan height and width must be multiples of 4, got {h}x{w}")
    expected = {"lms": (n, h, w, c), "mms": (n, h // 2, w // 2, c), "ms": (n, h // 4, w // 4, c)}
    for name, arr in (("lms", lms), ("mms", mms), ("ms", ms)):
      if tuple(arr.shape) != expected[name]:
        raise ValueError(f"{name} must have shape {expected[name]} (N,H,W,C with C={c}) for pan "
                         f"{tuple(pan.shape)}, got {tuple(arr.shape)}")

  def stages(self, pan: Array, lms: Array, mms: Array, ms: Array) -> dict[str, list[Array]]:
    """The intermediate feature maps, NHWC (shapes for H=W=64 in docs/dcfnet_architecture.md §4).

    Returns {"layer1": [feat], "transition1": [x0, x1], "stage2": [x0, x1, x2],
    "stage3": [y0, y1, y2]}.
    """
    self._check_inputs(pan, lms, mms, ms)
    x = jnp.concatenate([pan, lms], axis=-1)  # pan first (builder mode "C")
    x = barrier(self.bn1(self.conv1(x), relu=True), self.fast)
    x = barrier(self.bn2(self.conv2(x), relu=True), self.fast)
    for block in self.layer1:
      x = block(x)
    ms = ms.astype(self.dtype)
    xs1 = [self.transition1[0](x), self.transition1[1][0][0](x, mms.astype(self.dtype))]
    xs1 = [barrier(v, self.fast) for v in xs1]
    xs2 = self.stage2[0](xs1, ms)
    xs3 = self.stage3[0](xs2, ms)
    return {"layer1": [x], "transition1": xs1, "stage2": xs2, "stage3": xs3}

  def head(self, xs: Sequence[Array]) -> Array:
    """`last_layer` on [y0, Up(y1), Up(y2)] (224 channels at full resolution), float32 out."""
    size = xs[0].shape[1:3]
    h = jnp.concatenate([xs[0]] + [resize_align_corners(v, size, fast=self.fast) for v in xs[1:]],
                        axis=-1)
    return self.last_layer(h).astype(self.out_dtype)

  def __call__(self, pan: Array, lms: Array, mms: Array, ms: Array) -> Array:
    """Raw network output (N,H,W,C); lms is *not* added here."""
    return self.head(self.stages(pan, lms, mms, ms)["stage3"])
