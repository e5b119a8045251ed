"""Weight conversion torch <-> Flax: parity of outputs, BN statistics and an Adam step; files.

Parity is checked with non-uniform BN statistics/affines and fusion weights (ones would hide
axis mistakes in fcc_w), on the CPU default (fast) path and once on the plain path.
"""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from dcfnet_jax import checkpoint, convert, torch_ref  # noqa: E402
from dcfnet_jax.models import dcfnet  # noqa: E402

LR = 1e-4


# ---------------------------------------------------------------------------------------------
# Helpers


def _randomized_torch(bands: int, seed: int = 0, dtype=torch.float32) -> torch_ref.DCFNetTorch:
  """A reference model with random conv weights, BN affines and statistics, fcc_w and rs_w."""
  torch.manual_seed(seed)
  model = torch_ref.DCFNetTorch(bands)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
        m.num_batches_tracked.fill_(int(torch.randint(0, 10_000, (), generator=g)))
    for name, p in model.named_parameters():
      if name.endswith("fcc_w"):  # some negative entries exercise the ReLU
        p.copy_(2.3 * torch.rand(p.shape, generator=g) - 0.3)
      elif name.endswith("rs_w"):
        p.copy_(0.1 + 1.9 * torch.rand(p.shape, generator=g))
  return model.to(dtype)


def _inputs(bands: int, size: int, n: int, seed: int = 0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return {
      "pan": rng.random((n, size, size, 1)).astype(dtype),
      "lms": rng.random((n, size, size, bands)).astype(dtype),
      "ms": rng.random((n, size // 4, size // 4, bands)).astype(dtype),
      "gt": rng.random((n, size, size, bands)).astype(dtype),
  }


def _nchw(a: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _torch_forward(model, x) -> torch.Tensor:
  ms = _nchw(x["ms"])
  return model(_nchw(x["pan"]), _nchw(x["lms"]), torch_ref.make_mms_torch(ms), ms)


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


@nnx.jit
def _jax_forward(model, pan, lms, ms):
  return model(pan, lms, dcfnet.make_mms(ms), ms)


def _flax_by_torch_key(model) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in convert.to_numpy_state_dict(model).items()}


# ---------------------------------------------------------------------------------------------
# Eval-mode parity


@pytest.mark.parametrize("bands,size,n,fast", [
    (4, 64, 2, "auto"), (8, 64, 2, "auto"), (8, 256, 1, "auto"), (4, 64, 2, False)])
def test_eval_output_matches_torch(bands, size, n, fast):
  tm = _randomized_torch(bands, seed=bands + size).eval()
  model = convert.from_torch(tm.state_dict(), fast=fast)
  assert model.num_bands == bands
  x = _inputs(bands, size, n, seed=size)
  with torch.no_grad():
    ref = _nhwc(_torch_forward(tm, x))
  got = np.asarray(_jax_forward(model, x["pan"], x["lms"], x["ms"]))
  err = np.abs(got - ref).max()
  print(f"eval C={bands} {size}x{size} fast={fast}: max|diff| {err:.3g}, max|ref| "
        f"{np.abs(ref).max():.3g}")
  assert np.abs(ref).max() > 1e-2  # a meaningful output, not ~0
  assert err <= 1e-5


# ---------------------------------------------------------------------------------------------
# Train mode, BN statistics and one Adam step


def _jax_train_step(model, x):
  """One train-mode MSE(raw output, gt) Adam step: (output, grads, new params, new stats)."""
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(LR)  # torch defaults: betas (0.9, 0.999), eps 1e-8

  @jax.jit
  def step(params, rest, batch):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      ms = batch["ms"]
      out = m(batch["pan"], batch["lms"], dcfnet.make_mms(ms), ms)
      return jnp.mean(jnp.square(out - batch["gt"])), (out, nnx.state(m, nnx.Not(nnx.Param)))
    (_, (out, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return out, grads, optax.apply_updates(params, updates), new_rest

  out, grads, new_params, new_rest = step(params, rest, x)
  nnx.update(model, new_params, new_rest)
  flat_grads = {convert.flax_path_to_torch_key(tuple(getattr(p, "key", p) for p in path)):
                np.asarray(v.get_value() if hasattr(v, "get_value") else v)
                for path, v in nnx.to_flat_state(grads)}
  for key, g in flat_grads.items():
    if g.ndim == 4:
      flat_grads[key] = g.transpose(3, 2, 0, 1)
  return np.asarray(out), flat_grads, _flax_by_torch_key(model)


def _torch_train_step(tm, x):
  tm.train()
  opt = torch.optim.Adam(tm.parameters(), lr=LR)
  opt.zero_grad()
  out = _torch_forward(tm, x)
  torch.mean(torch.square(out - _nchw(x["gt"]))).backward()
  grads = {k: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape)))
           for k, p in tm.named_parameters()}
  opt.step()
  return _nhwc(out), grads, {k: v.numpy() for k, v in tm.state_dict().items()}


def test_train_step_matches_torch_float64():
  """Exact parity: train-mode output, gradients, BN running stats and parameters after Adam."""
  bands, size, n = 4, 32, 2
  with jax.enable_x64(True):
    tm = _randomized_torch(bands, seed=3, dtype=torch.float64)
    model = convert.from_torch(tm.state_dict(), param_dtype=jnp.float64, dtype=jnp.float64)
    x = _inputs(bands, size, n, seed=5, dtype=np.float64)
    out, grads, after = _jax_train_step(model, x)
  ref_out, ref_grads, ref_after = _torch_train_step(tm, x)
  assert out.dtype == np.float64
  scale = np.abs(ref_out).max()
  out_err = np.abs(out - ref_out).max() / scale
  # Per tensor, relative to its own largest entry; tensors whose gradient is zero up to
  # round-off (a conv bias right before a train-mode BN, e.g. last_layer.0.bias) are compared
  # on the scale of the largest gradient instead.
  g_max = max(np.abs(g).max() for g in ref_grads.values())
  grad_err = max(np.abs(grads[k] - g).max() / max(np.abs(g).max(), 1e-6 * g_max)
                 for k, g in ref_grads.items())
  assert np.abs(ref_grads["last_layer.0.bias"]).max() < 1e-12 * g_max
  param_err = max(np.abs(after[k] - v).max() for k, v in ref_after.items()
                  if not k.endswith("num_batches_tracked"))
  print(f"float64 train step: output rel {out_err:.3g}, worst per-tensor grad rel {grad_err:.3g},"
        f" params/BN stats after Adam max|diff| {param_err:.3g}")
  assert out_err < 1e-10
  assert set(grads) == set(ref_grads)
  assert grad_err < 1e-8
  for k, g in ref_grads.items():
    if not np.any(g):  # b2_conv_out and the dead last column of fcc_w
      assert not np.any(grads[k] if "fcc_w" not in k else grads[k][:, -1]), k
  assert param_err < 1e-10
  assert np.any(after["bn1.running_mean"] != _randomized_torch(bands, 3).bn1.running_mean.numpy())


def test_train_step_matches_torch_float32():
  """float32: outputs and BN statistics agree closely; gradients only in direction (DCFNET §11)."""
  bands, size, n = 8, 32, 2
  tm = _randomized_torch(bands, seed=7)
  model = convert.from_torch(tm.state_dict())
  x = _inputs(bands, size, n, seed=9)
  before = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
  out, grads, after = _jax_train_step(model, x)
  ref_out, ref_grads, ref_after = _torch_train_step(tm, x)
  out_err = np.abs(out - ref_out).max() / np.abs(ref_out).max()
  stat_err = max(np.abs(after[k] - v).max() / np.abs(v).max() for k, v in ref_after.items()
                 if k.endswith(("running_mean", "running_var")))
  keys = sorted(ref_grads)
  g_jax = np.concatenate([grads[k].ravel() for k in keys]).astype(np.float64)
  g_ref = np.concatenate([ref_grads[k].ravel() for k in keys]).astype(np.float64)
  cosine = g_jax @ g_ref / (np.linalg.norm(g_jax) * np.linalg.norm(g_ref))
  steps = {k: (after[k] - before[k], ref_after[k] - before[k]) for k in keys}
  step_err = np.concatenate([np.abs(a - b).ravel() for a, b in steps.values()]) / LR
  print(f"float32 train step: output rel {out_err:.3g}, BN stats rel {stat_err:.3g}, gradient "
        f"cosine {cosine:.8f}, Adam step diff/lr median {np.median(step_err):.3g} "
        f"p99 {np.quantile(step_err, 0.99):.3g}")
  assert out_err < 1e-4  # spec §11: ~2e-5
  assert stat_err < 1e-5
  assert cosine > 0.9999
  assert np.median(step_err) < 1e-2  # most Adam steps (≈ lr·sign(g)) agree
  assert np.quantile(step_err, 0.99) < 0.5


# ---------------------------------------------------------------------------------------------
# Round trips, nesting, errors


def test_round_trip_torch_flax_torch_is_exact():
  tm = _randomized_torch(8, seed=11)
  sd = tm.state_dict()
  model = convert.from_torch(sd)
  back = convert.to_torch(model, convert.num_batches_tracked(sd))
  assert list(back) == list(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
  zeros = convert.to_torch(model)  # counters unknown: written as int64 zeros
  assert all(int(v) == 0 and v.dtype == torch.int64 for k, v in zeros.items()
             if k.endswith("num_batches_tracked"))
  fresh = torch_ref.DCFNetTorch(8)
  fresh.load_state_dict(zeros, strict=True)
  assert torch.equal(fresh.stage3[0].fcc_w, tm.stage3[0].fcc_w)


def _variables(model) -> dict[str, np.ndarray]:
  return {k: v for k, v in _flax_by_torch_key(model).items()
          if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model+module", "module",
                                  "extra_entries"])
def test_checkpoint_variants_load(tmp_path, wrap):
  sd = _randomized_torch(4, seed=13).state_dict()
  prefixed = {f"module.{k}": v for k, v in sd.items()}
  obj = {"bare": sd, "state_dict": {"state_dict": sd}, "model+module": {"model": prefixed},
         "module": prefixed,
         "extra_entries": {"epoch": 100, "optimizer": {"lr": 1e-4}, "state_dict": sd}}[wrap]
  path = tmp_path / "ckpt.pth"
  torch.save(obj, path)
  model = convert.from_torch(path)
  got = _variables(model)
  assert got["conv1.weight"].shape == (64, 5, 3, 3)
  for k, v in got.items():
    np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)


def test_bad_checkpoints_give_listed_errors(tmp_path):
  sd = dict(_randomized_torch(4, seed=0).state_dict())
  del sd["conv1.weight"]
  del sd["stage3.0.fcc_w"]
  sd["head.extra.weight"] = torch.zeros(3)
  sd["stage2.0.fcc_w"] = torch.ones(4, 4)
  sd["bn1.running_var"] = torch.ones(65)
  with pytest.raises(convert.ConversionError) as info:
    convert.from_torch(sd, bands=4)
  msg = str(info.value)
  assert "2 missing keys" in msg and "conv1.weight" in msg and "stage3.0.fcc_w" in msg
  assert "1 unexpected keys" in msg and "head.extra.weight" in msg
  assert "2 wrong shapes" in msg
  assert "stage2.0.fcc_w: got (4, 4), expected (3, 3)" in msg
  assert "bn1.running_var: got (65,), expected (64,)" in msg
  # A 4-band checkpoint forced into an 8-band model: shapes of the band-dependent convs.
  with pytest.raises(convert.ConversionError, match=r"conv1.weight: got \(64, 5, 3, 3\), "
                                                    r"expected \(64, 9, 3, 3\)"):
    convert.from_torch(_randomized_torch(4).state_dict(), bands=8)
  with pytest.raises(convert.ConversionError, match="no nested one"):
    convert.from_torch({"epoch": 3, "weights": [1, 2]})
  pickled = tmp_path / "whole_module.pth"
  torch.save(torch_ref.DCFNetTorch(4), pickled)  # a pickled nn.Module, not a state_dict
  with pytest.raises(convert.ConversionError, match="weights_only=True"):
    convert.from_torch(pickled)
  with pytest.raises(FileNotFoundError):
    convert.from_torch(tmp_path / "missing.pth")


def test_command_line_round_trip(tmp_path, capsys, umask022):
  tm = _randomized_torch(4, seed=17)
  sd = tm.state_dict()
  torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "official.pth")
  (tmp_path / "conv").mkdir()  # output folders must exist (a missing one is refused)
  assert convert.main(["--from-torch", str(tmp_path / "official.pth"), "--out",
                       str(tmp_path / "conv" / "dcfnet_qb"), "--sensor", "qb"]) == 0
  out = tmp_path / "conv" / "dcfnet_qb.npz"
  meta = json.loads(out.with_suffix(".json").read_text())
  assert meta["model"] == "dcfnet" and meta["sensor"] == "qb" and meta["num_bands"] == 4
  assert meta["residual"] is False and meta["img_range"] == 2047.0
  arrays, _ = checkpoint.read_exported(out)
  np.testing.assert_array_equal(arrays["conv1/kernel"],
                                sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(arrays["stage3/0/fcc_w"], sd["stage3.0.fcc_w"].numpy())
  back = tmp_path / "back.pth"
  assert convert.main(["--to-torch", str(out), "--out", str(back)]) == 0
  loaded = torch.load(back, weights_only=True)
  umask022(out, out.with_suffix(".json"), back)
  assert list(loaded) == list(sd)
  for k, v in sd.items():
    assert torch.equal(loaded[k], v), k  # num_batches_tracked kept through the metadata
  assert convert.main(["--from-torch", str(tmp_path / "official.pth"), "--out",
                       str(tmp_path / "x"), "--sensor", "wv3"]) == 2
  assert re.search("has 4 bands.*'wv3' has 8", capsys.readouterr().err)
  assert convert.main(["--from-torch", str(tmp_path / "official.pth"), "--out",
                       str(tmp_path / "x")]) == 2
  assert "--from-torch needs --sensor" in capsys.readouterr().err
  assert not (tmp_path / "x.npz").exists()


def test_converted_file_loads_for_evaluation(tmp_path):
  """The exported file is what evaluation/pansharpen read (checkpoint.load_exported)."""
  tm = _randomized_torch(4, seed=19).eval()
  torch.save(tm.state_dict(), tmp_path / "official.pth")
  out = convert.convert_torch_file(tmp_path / "official.pth", tmp_path / "dcfnet_gf2", "gf2",
                                   residual=True)
  model, meta = checkpoint.load_exported(out)
  assert meta["residual"] is True and meta["img_range"] == 1023.0
  x = _inputs(4, 16, 1, seed=21)
  with torch.no_grad():
    ref = _nhwc(_torch_forward(tm, x))
  got = np.asarray(_jax_forward(model, x["pan"], x["lms"], x["ms"]))
  assert np.abs(got - ref).max() <= 1e-5


def test_numpy_paths_need_no_torch():
  """`import dcfnet_jax.convert` and numpy state_dicts work with torch unimportable."""
  code = (
      "import sys; sys.modules['torch'] = None\n"
      "import numpy as np\n"
      "import dcfnet_jax, dcfnet_jax.bench, dcfnet_jax.checkpoint\n"
      "from dcfnet_jax import convert\n"
      "from flax import nnx\n"
      "from dcfnet_jax.models import dcfnet\n"
      "abstract = nnx.eval_shape(lambda: dcfnet.DCFNet(4, rngs=nnx.Rngs(0)))\n"
      "sd = {k: np.full(s, 0.5, np.float32) for k, s in convert.expected_torch_keys(abstract)"
      ".items()}\n"
      "m = convert.from_torch(sd)\n"
      "back = convert.to_numpy_state_dict(m)\n"
      "assert set(back) == set(sd) and len(sd) == 400, len(sd)\n"
      "from dcfnet_jax.errors import InputError\n"
      "try:\n"
      "  convert.load_torch_state_dict('x.pth')\n"
      "except InputError as e:\n"
      "  assert 'dcfnet_jax[torch]' in str(e)\n"
      "else:\n"
      "  raise AssertionError('expected InputError')\n"
      "print('ok')\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
