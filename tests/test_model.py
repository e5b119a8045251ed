"""DCFNet network: structure, counts, fusion weights, BatchNorm semantics, gradients, fast path."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data_file
from flax import nnx

from dcfnet_jax import config_lib
from dcfnet_jax import convert
from dcfnet_jax import models
from dcfnet_jax.models import layers
from dcfnet_jax.models import ops
from dcfnet_jax.models.dcfnet import DCFNet, make_mms

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PARAMS = {8: 2_915_783, 4: 2_905_667}  # docs/dcfnet_architecture.md §8
BN_STAT_ELEMENTS = 11_136
BN_LAYERS = 65
B2_CONV_OUT = ("stage2", 0, "transition_layers", 2, 0, 0, "b2_conv_out")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _inputs(n, h, w, c, seed=0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 4)
  pan = jax.random.uniform(k[0], (n, h, w, 1), dtype)
  lms = jax.random.uniform(k[1], (n, h, w, c), dtype)
  ms = jax.random.uniform(k[2], (n, h // 4, w // 4, c), dtype)
  gt = jax.random.uniform(k[3], (n, h, w, c), dtype)
  return pan, lms, make_mms(ms), ms, gt


@pytest.fixture(scope="module")
def model4():
  """A 4-band DCFNet with random non-uniform fusion weights (ones would hide axis mistakes)."""
  model = DCFNet(4, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  for _, module in nnx.iter_modules(model):
    for name in ("rs_w", "fcc_w"):
      var = getattr(module, name, None)
      if isinstance(var, nnx.Param):
        var[...] = jnp.asarray(rng.uniform(0.2, 1.8, var.shape), jnp.float32)
  return model


# Every CPU formulation (also those off by default), so that all are verified.
ALL = ops.ALL_FAST_TRICKS


# --- structure and counts --------------------------------------------------------------------

@pytest.mark.parametrize("bands", [8, 4])
def test_parameter_and_batch_stat_counts(bands):
  model = nnx.eval_shape(lambda: DCFNet(bands, rngs=nnx.Rngs(0)))
  assert _count(nnx.state(model, nnx.Param)) == PARAMS[bands]
  assert _count(nnx.state(model, nnx.BatchStat)) == BN_STAT_ELEMENTS
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)]
  assert len(bns) == BN_LAYERS
  b2 = model
  for key in B2_CONV_OUT:
    b2 = b2[key] if isinstance(key, int) else getattr(b2, key)
  assert _count(nnx.state(b2, nnx.Param)) == 147_712


def test_state_paths_map_one_to_one_to_torch_state_dict():
  expected = {}
  for line in data_file("dcfnet_torch_state_dict_C8.txt").read_text().splitlines():
    if line.startswith("#") or not line.strip():
      continue
    key, shape, _ = line.split("\t")
    if not key.endswith("num_batches_tracked"):
      expected[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  model = nnx.eval_shape(lambda: DCFNet(8, rngs=nnx.Rngs(0)))
  names = {k: shape for k, shape in convert.expected_torch_keys(model).items()
           if not k.endswith("num_batches_tracked")}
  assert len(names) == len(nnx.to_flat_state(nnx.state(model))) == 335
  assert names == expected
  assert convert.flax_path_to_torch_key(("last_layer", 1, "var")) == "last_layer.1.running_var"


def test_stage_shapes_and_eval_determinism_under_jit_at_128x96(model4):
  n, h, w, c = 2, 128, 96, 4
  pan, lms, mms, ms, _ = _inputs(n, h, w, c)
  graphdef, state = nnx.split(model4)

  @jax.jit
  def run(pan, lms, mms, ms):
    net = nnx.merge(graphdef, state, copy=True)
    net.eval()
    feats = net.stages(pan, lms, mms, ms)
    return feats, net.head(feats["stage3"])

  feats, out = run(pan, lms, mms, ms)
  hr = [(n, h, w, 32), (n, h // 2, w // 2, 64), (n, h // 4, w // 4, 128)]
  assert {k: [x.shape for x in v] for k, v in feats.items()} == {
      "layer1": [(n, h, w, 256)], "transition1": hr[:2], "stage2": hr, "stage3": hr}
  assert out.shape == (n, h, w, c) and out.dtype == jnp.float32
  out = np.asarray(out)
  assert np.isfinite(out).all()
  # Eval mode: deterministic, and a sample's output does not depend on the rest of the batch.
  np.testing.assert_array_equal(out, np.asarray(run(pan, lms, mms, ms)[1]))
  other = _inputs(n, h, w, c, seed=7)
  mixed = [jnp.stack([b[0], a[0]]) for a, b in zip((pan, lms, mms, ms), other)]
  out_mixed = np.asarray(run(*mixed)[1])
  np.testing.assert_allclose(out_mixed[1], out[0], rtol=1e-5, atol=1e-6)


def test_bad_input_shapes_raise_clear_errors(model4):
  pan, lms, mms, ms, _ = _inputs(1, 16, 16, 4)
  with pytest.raises(ValueError, match="multiples of 4"):
    model4(pan[:, :14], lms[:, :14], mms, ms)
  with pytest.raises(ValueError, match=r"lms must have shape \(1, 16, 16, 4\)"):
    model4(pan, lms[..., :3], mms, ms)
  with pytest.raises(ValueError, match="mms must have shape"):
    model4(pan, lms, ms, ms)
  with pytest.raises(ValueError, match=r"pan must be \(N,H,W,1\)"):
    model4(lms, lms, mms, ms)


# --- fusion weights -------------------------------------------------------------------------

def _np_norm(w):
  w = np.maximum(np.asarray(w, np.float64), 0)
  return w / (w.sum(axis=0, keepdims=True) + 1e-4)


def test_normalize_fusion_weights_formula():
  w = np.array([[0.5, -1.0, 2.0], [1.5, -2.0, 0.1], [3.0, -0.5, 0.0]], np.float32)
  got = np.asarray(layers.normalize_fusion_weights(jnp.asarray(w)))
  np.testing.assert_allclose(got, _np_norm(w), rtol=1e-6)
  assert np.all(got[:, 1] == 0)  # an all-negative column gives zero weights, not NaN


def _hr_inputs(n=2, h=8, w=8, seed=1):
  k = jax.random.split(jax.random.key(seed), 4)
  xs = [jax.random.uniform(k[0], (n, h, w, 32)),
        jax.random.uniform(k[1], (n, h // 2, w // 2, 64)),
        jax.random.uniform(k[2], (n, h // 4, w // 4, 128))]
  return xs, jax.random.uniform(k[3], (n, h // 4, w // 4, 4))


def test_hr_fusion_uses_fcc_w_normalised_over_axis0(model4):
  net = nnx.clone(model4)
  net.eval()
  hr = net.stage3[0]
  xs, ms = _hr_inputs()
  ys = hr(xs, ms)
  # Expected from the submodules and numpy-normalised weights: y_i = relu(sum_j W[i,j] T_ij(x_j)).
  xb = list(xs)
  for b, blocks in enumerate(hr.branches):
    for block in blocks:
      xb[b] = block(xb[b])
  weights = _np_norm(hr.fcc_w[...])
  for i in range(3):
    acc = 0
    for j in range(3):
      if j == i:
        t = xb[j]
      elif j > i:
        t = ops.resize_align_corners(hr.fuse_layers[i][j](xb[j]), xb[i].shape[1:3])
      else:
        t = hr.fuse_layers[i][j](xb[j])
      acc = acc + weights[i, j] * np.asarray(t, np.float64)
    np.testing.assert_allclose(np.asarray(ys[i]), np.maximum(acc, 0), rtol=1e-5, atol=1e-5)
  # The dead last column never matters; the last row only enters the denominators.
  hr.fcc_w[:, 3] = jnp.asarray([5.0, -3.0, 0.7, 2.0])
  ys_dead = hr(xs, ms)
  for a, b in zip(ys, ys_dead):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  hr.fcc_w[3, 0] = hr.fcc_w[3, 0] + 1.0
  assert not np.allclose(np.asarray(hr(xs, ms)[0]), np.asarray(ys[0]))


def test_negative_fcc_w_entry_removes_that_path(model4):
  net = nnx.clone(model4)
  net.eval()
  hr = net.stage3[0]
  xs, ms = _hr_inputs()
  xs_other = [xs[0], xs[1] + 0.5, xs[2]]
  assert not np.allclose(np.asarray(hr(xs, ms)[0]), np.asarray(hr(xs_other, ms)[0]))
  hr.fcc_w[0, 1] = -0.3  # W[0,1] = 0: output 0 no longer sees branch 1
  np.testing.assert_array_equal(np.asarray(hr(xs, ms)[0]), np.asarray(hr(xs_other, ms)[0]))


def test_channel_fuse_block_rs_w(model4):
  net = nnx.clone(model4)
  net.eval()
  cfb = net.transition1[1][0][0].cfs_layers[0]
  k = jax.random.split(jax.random.key(3), 3)
  a = jax.random.uniform(k[0], (2, 8, 8, 64))
  m = jax.random.uniform(k[1], (2, 8, 8, 4))
  cfb.rs_w[...] = jnp.asarray([0.3, 1.7])
  w = _np_norm(cfb.rs_w[...])
  expected = cfb.res_block[0](jax.nn.relu(w[0] * a + w[1] * cfb.conv_up(m)))
  np.testing.assert_allclose(np.asarray(cfb(a, m)), np.asarray(expected), rtol=1e-5, atol=1e-6)
  cfb.rs_w[...] = jnp.asarray([-1.0, 2.0])  # no path from a
  np.testing.assert_array_equal(np.asarray(cfb(a, m)), np.asarray(cfb(a * 3 + 1, m)))
  cfb.rs_w[...] = jnp.asarray([2.0, -1.0])  # no path from the MS image
  np.testing.assert_array_equal(np.asarray(cfb(a, m)), np.asarray(cfb(a, m * 2 + 1)))


def test_stage2_new_branch_reads_pre_fusion_features(model4):
  net = nnx.clone(model4)
  net.eval()
  hr = net.stage2[0]
  xs, ms = _hr_inputs()
  ys = hr(xs[:2], ms)
  xb = list(xs[:2])
  for b, blocks in enumerate(hr.branches):
    for block in blocks:
      xb[b] = block(xb[b])
  grown = hr.transition_layers[2][0][0]
  np.testing.assert_array_equal(np.asarray(ys[2]), np.asarray(grown(xb[0], xb[1], ms)))
  w = _np_norm(grown.rs_w[...])
  p = grown.b1_in_down(xb[1])
  v = grown.cfs_layers[0](grown.b1_down(xb[1] + grown.b0_in_down(xb[0])), ms)
  np.testing.assert_allclose(np.asarray(ys[2]), np.asarray(w[0] * p + w[1] * v), rtol=1e-5,
                             atol=1e-6)
  grown.rs_w[...] = jnp.asarray([1.0, -1.0])  # only the b1_in_down path is left
  np.testing.assert_array_equal(np.asarray(hr(xs[:2], ms)[2]),
                                np.asarray(hr([xs[0] + 1.0, xs[1]], ms * 0.5)[2]))


# --- BatchNorm semantics and modes ----------------------------------------------------------

@pytest.mark.parametrize("fast", [False, True])
def test_batch_norm_train_matches_torch_semantics(fast):
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 3, 5, 4)).astype(np.float32)
  bn = layers.BatchNorm(4, fast=fast)
  bn.scale[...] = jnp.asarray([1.0, 2.0, 0.5, -1.0])
  bn.bias[...] = jnp.asarray([0.0, 1.0, -1.0, 3.0])
  y = np.asarray(bn(jnp.asarray(x), relu=False))
  mean = x.mean(axis=(0, 1, 2))
  var_biased = x.var(axis=(0, 1, 2))
  var_unbiased = x.reshape(-1, 4).var(axis=0, ddof=1)
  expected = (x - mean) / np.sqrt(var_biased + 1e-5) * np.asarray(bn.scale[...]) + np.asarray(
      bn.bias[...])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.01 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.var[...]), 0.99 + 0.01 * var_unbiased, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x), relu=True)), np.maximum(expected, 0),
                             rtol=1e-5, atol=1e-5)
  bn.eval()
  running = (x - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + 1e-5)
  np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), running * np.asarray(
      bn.scale[...]) + np.asarray(bn.bias[...]), rtol=1e-5, atol=1e-5)


@nnx.jit
def _jit_call(model, *args):
  return model(*args)


@pytest.fixture(scope="module")
def train_run(model4):
  """One jitted train-mode forward at 64x64 (batch 2) of a copy of model4: (net, inputs, out)."""
  net = nnx.clone(model4)
  net.train()
  inputs = _inputs(2, 64, 64, 4, seed=3)[:4]
  before = jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat))
  out = np.asarray(_jit_call(net, *inputs))
  return net, inputs, out, before


def test_train_mode_at_64x64_updates_bn_stats_like_torch(train_run):
  net, (pan, lms, mms, ms), out, before = train_run
  assert out.shape == (2, 64, 64, 4) and np.isfinite(out).all()
  conv1_out = np.asarray(net.conv1(jnp.concatenate([pan, lms], -1)), np.float64)
  np.testing.assert_allclose(np.asarray(net.bn1.mean[...]), 0.01 * conv1_out.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-7)
  unbiased = conv1_out.reshape(-1, 64).var(axis=0, ddof=1)
  np.testing.assert_allclose(np.asarray(net.bn1.var[...]), 0.99 + 0.01 * unbiased, rtol=1e-5)
  b2 = net.stage2[0].transition_layers[2][0][0].b2_conv_out[1]
  np.testing.assert_array_equal(np.asarray(b2.var[...]), 1.0)  # never called, never updated
  after = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat)))
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after)]
  assert sum(changed) == 2 * (BN_LAYERS - 1)  # every BN but b2_conv_out's


def test_eval_mode_leaves_bn_stats_alone(model4):
  net = nnx.clone(model4)
  net.eval()
  before = jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat))
  net.stage3[0](*_hr_inputs())
  net.last_layer(jnp.ones((2, 4, 4, 224)))
  for a, b in zip(jax.tree.leaves(before),
                  jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(net, nnx.BatchStat)))):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_keeps_float32_params_and_stats(train_run):
  config = config_lib.get_config("demo")
  with config.unlocked():
    config.half_precision = True
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  assert model.dtype == jnp.bfloat16 and model.conv1.dtype == jnp.bfloat16
  # The same weights as the float32 run (train mode ignores the running stats), in bfloat16.
  trained, inputs, ref, _ = train_run
  net = nnx.clone(trained)
  net.set_attributes(dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(net, nnx.Param))} == {jnp.dtype("float32")}
  out = _jit_call(net, *inputs)
  assert out.dtype == jnp.float32
  out = np.asarray(out)
  assert np.isfinite(out).all()
  assert {x.dtype for x in jax.tree.leaves(nnx.state(net, nnx.BatchStat))} == {
      jnp.dtype("float32")}
  # bfloat16 through 64 train-mode BN layers at initialisation: ~15% relative RMS difference.
  rel_rms = np.linalg.norm(out - ref) / np.linalg.norm(ref)
  assert rel_rms < 0.3, rel_rms


# --- gradients and the fast path in float64 -------------------------------------------------

def _x64_grad_fns(graphdef, state, batch):
  """Compiled value-and-grad of the plain and the fast model, compiled concurrently.

  XLA compiles with the GIL released, so the two compilations use both cores.
  """
  def make(fast):
    def loss_fn(params, rest):
      net = nnx.merge(graphdef, params, rest, copy=True)
      net.set_attributes(fast=ALL if fast else False)
      out = net(*batch[:4])
      loss = jnp.mean(jnp.square(out + batch[1] - batch[4]))
      return loss, (out, nnx.state(net, nnx.BatchStat))
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(*state)

  lowered = [make(False), make(True)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return list(pool.map(lambda low: low.compile(), lowered))


def test_fast_path_equals_plain_path_and_gradient_reach_in_float64(model4):
  with jax.enable_x64(True):
    f64 = jnp.float64
    # model4's weights (non-uniform fusion weights) in float64, computing in float64.
    model = nnx.clone(model4)
    model.set_attributes(dtype=f64, out_dtype=f64, fast=False)
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(x, f64), nnx.state(model)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(f64)}
    batch = _inputs(2, 16, 16, 4, seed=2, dtype=f64)
    plain_fn, fast_fn = _x64_grad_fns(graphdef, (params, rest), batch)
    (_, plain), plain_grads = plain_fn(params, rest)
    (_, fast), fast_grads = fast_fn(params, rest)

    assert plain[0].dtype == f64
    np.testing.assert_allclose(np.asarray(fast[0]), np.asarray(plain[0]), rtol=0, atol=1e-12)
    for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(fast[1])):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-14)
    grads_plain = nnx.to_flat_state(plain_grads)
    grads_fast = dict(nnx.to_flat_state(fast_grads))
    scale = max(float(np.abs(np.asarray(g.get_value())).max()) for _, g in grads_plain)
    for path, g in grads_plain:
      gp, gf = np.asarray(g.get_value()), np.asarray(grads_fast[path].get_value())
      tol = 1e-10 * max(float(np.abs(gp).max()), 1e-3 * scale)
      assert np.abs(gf - gp).max() <= tol, (path, np.abs(gf - gp).max(), tol)

    for path, g in grads_plain:
      g = np.asarray(g.get_value())
      if path[:len(B2_CONV_OUT)] == B2_CONV_OUT:
        assert np.all(g == 0), path  # never called
      elif path[-1] == "fcc_w":
        nb = g.shape[0] - 1
        assert np.all(g[:, nb] == 0), path  # the dead column
        assert np.all(g[:, :nb] != 0), path  # incl. the last row (denominators only)
      elif path == ("last_layer", 0, "bias"):
        # A bias right before train-mode BN has zero gradient in exact arithmetic.
        assert np.abs(g).max() < 1e-10 * scale
      else:
        assert np.abs(g).max() > 1e-8 * scale, path


@pytest.mark.parametrize("stride,in_ch,out_ch", [(2, 3, 5), (2, 5, 3), (1, 5, 3)])
def test_fast_conv_gradients_match_autodiff(stride, in_ch, out_ch):
  """Phase input gradient (stride 2) and output-channel-major kernel gradient (in > out)."""
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (2, 6, 10, in_ch), jnp.float64)
    kernel = jax.random.normal(k[1], (3, 3, in_ch, out_ch), jnp.float64)
    dy = jax.random.normal(k[2], (2, 6 // stride, 10 // stride, out_ch), jnp.float64)

    def vjp(fast, x, kernel, dy):
      _, f = jax.vjp(lambda a, b: ops.conv2d(a, b, stride, fast=ALL if fast else False), x,
                     kernel)
      return f(dy)

    plain, fast = jax.jit(lambda *a: (vjp(False, *a), vjp(True, *a)))(x, kernel, dy)
    for a, b in zip(plain, fast):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (32, 16), (9, 5)])
def test_resize_align_corners_paths_agree_with_numpy(size):
  x = np.random.default_rng(0).normal(size=(2, 4, 5, 3))

  def ref_axis(a, axis, n_out):
    n_in = a.shape[axis]
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    i0 = np.floor(src).astype(int).clip(0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = (src - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return (1 - t) * np.take(a, i0, axis) + t * np.take(a, i1, axis)

  expected = ref_axis(ref_axis(x, 2, size[1]), 1, size[0])
  with jax.enable_x64(True):
    for fast in (False, ALL):
      got = ops.resize_align_corners(jnp.asarray(x), size, fast=fast)
      np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_make_mms_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  ms = np.random.default_rng(0).random((2, 16, 12, 4), np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(ms).permute(0, 3, 1, 2),
                                        size=(32, 24), mode="bilinear", align_corners=True)
  ref = ref.permute(0, 2, 3, 1).numpy()
  for fast in (False, ALL):
    got = np.asarray(make_mms(jnp.asarray(ms), fast=fast))
    assert got.shape == (2, 32, 24, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


# --- registry, packaging, CLI ----------------------------------------------------------------

def test_create_model_registry_and_residual():
  config = config_lib.get_config("demo")
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  assert isinstance(model, DCFNet) and model.num_bands == 4 and model.dtype == jnp.float32
  assert models.resolve_residual(config, model) is True
  with config.unlocked():
    config.model.residual = False
    config.model.name = "nope"
  assert models.resolve_residual(config, model) is False
  with pytest.raises(ValueError, match="unknown config.model.name 'nope'.*dcfnet"):
    models.create_model(config, nnx.Rngs(0))
  assert "dcfnet" in models.model_names()


def _run(code_or_args, env_extra=None, timeout=600):
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable] + code_or_args, capture_output=True, text=True,
                        env=env, cwd=REPO_ROOT, timeout=timeout, check=False)


def test_summary_cli_reports_param_count():
  proc = _run(["-m", "dcfnet_jax.summary", "--config=configs/demo.py"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[-1] == f"params: {PARAMS[4]}"
  assert any("BatchNorm statistics (mean + var): 11,136" in line for line in lines)
  assert any(line.startswith("stage2.0.transition_layers.2.0.0.b2_conv_out.0") for line in lines)


def test_head_init_zero_starts_a_residual_network_at_lms():
  torch_init = DCFNet(4, rngs=nnx.Rngs(0))
  zero = DCFNet(4, rngs=nnx.Rngs(0), head_init="zero")
  assert _count(nnx.state(zero, nnx.Param)) == PARAMS[4]
  out_conv = zero.last_layer[3]
  assert not np.any(np.asarray(out_conv.kernel[...])) and not np.any(np.asarray(out_conv.bias[...]))
  # Everything else keeps the official initialisation.
  np.testing.assert_array_equal(np.asarray(zero.conv1.kernel[...]),
                                np.asarray(torch_init.conv1.kernel[...]))
  assert np.std(np.asarray(torch_init.last_layer[3].kernel[...])) > 0.01
  zero.eval()
  pan, lms, mms, ms, _ = _inputs(2, 16, 16, 4, seed=4)
  np.testing.assert_array_equal(np.asarray(_jit_call(zero, pan, lms, mms, ms)), 0.0)
  with pytest.raises(ValueError, match="head_init must be 'torch' or 'zero'"):
    DCFNet(4, rngs=nnx.Rngs(0), head_init="zeros")


def test_bn_momentum_option_reaches_every_batch_norm():
  fast = DCFNet(4, rngs=nnx.Rngs(0), bn_momentum_torch=0.1)
  momenta = [m.momentum for _, m in nnx.iter_modules(fast) if isinstance(m, layers.BatchNorm)]
  assert len(momenta) == BN_LAYERS and np.allclose(momenta, 0.9, rtol=0, atol=1e-12)
  official = DCFNet(4, rngs=nnx.Rngs(0))
  assert np.allclose([m.momentum for _, m in nnx.iter_modules(official)
                      if isinstance(m, layers.BatchNorm)], 0.99, rtol=0, atol=1e-12)
  pan, lms, _, _, _ = _inputs(2, 16, 16, 4, seed=5)
  conv1_out = fast.conv1(jnp.concatenate([pan, lms], -1))
  fast.bn1.use_running_average = False
  fast.bn1(conv1_out)
  np.testing.assert_allclose(np.asarray(fast.bn1.mean[...]),
                             0.1 * np.asarray(conv1_out, np.float64).mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-7)
  config = config_lib.get_config("demo")
  demo = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  assert demo.bn1.momentum == pytest.approx(1.0 - config.model.bn_momentum_torch)
  with pytest.raises(ValueError, match="bn_momentum_torch must be in"):
    DCFNet(4, rngs=nnx.Rngs(0), bn_momentum_torch=0.0)
