"""The XLA:CPU option of fast convolution gradients (dcfnet_jax.xla_flags): per compilation.

The checks that need a clean environment (no XLA_FLAGS, which conftest sets for the tests' own
jits) run in a subprocess.
"""

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys

import pytest

from dcfnet_jax import xla_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VERIFIED = xla_flags.flag_verified_for(importlib.metadata.version("jaxlib"))


def _run(code: str, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  env.pop(xla_flags.OPT_OUT_ENV, None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        cwd=REPO_ROOT, timeout=timeout, check=False)


def test_options_only_on_the_cpu_and_only_when_wanted(monkeypatch):
  monkeypatch.delenv(xla_flags.OPT_OUT_ENV, raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  expected = {xla_flags.YNN_FLAG_NAME: xla_flags.YNN_WITHOUT_CONVOLUTIONS} if VERIFIED else None
  assert xla_flags.compiler_options("cpu") == expected
  assert xla_flags.status().startswith("per-jit option") == VERIFIED
  for platform in ("gpu", "cuda", "rocm", "tpu", "METAL"):  # nothing is given off the CPU
    assert xla_flags.compiler_options(platform) is None
  monkeypatch.setenv(xla_flags.OPT_OUT_ENV, "1")
  assert xla_flags.compiler_options("cpu") is None
  assert xla_flags.status() == f"not set ({xla_flags.OPT_OUT_ENV} is set)"
  monkeypatch.delenv(xla_flags.OPT_OUT_ENV)
  monkeypatch.setenv("XLA_FLAGS", f"{xla_flags.YNN_FLAG_NAME}=+individual_convolution")
  assert xla_flags.compiler_options("cpu") is None  # the user's own setting wins
  assert xla_flags.status().startswith("set in XLA_FLAGS")
  assert xla_flags.flag_verified_for("0.10.2") and xla_flags.flag_verified_for("0.12.0.1")
  assert not xla_flags.flag_verified_for("0.10.1") and not xla_flags.flag_verified_for("0.13.0")


def test_import_is_side_effect_free_and_configure_explicit():
  code = ("import sys; sys.modules['torch'] = None\n"
          "import os, dcfnet_jax, dcfnet_jax.models, dcfnet_jax.models.dcfnet\n"
          "assert 'tensorflow' not in sys.modules\n"
          "print('IMPORT=' + os.environ.get('XLA_FLAGS', ''))\n"
          "print('STATUS=' + dcfnet_jax.configure_xla_cpu())\n"
          "print('FLAGS=' + os.environ.get('XLA_FLAGS', ''))\n")
  proc = _run(code)
  assert proc.returncode == 0, proc.stderr
  out = dict(line.split("=", 1) for line in proc.stdout.strip().splitlines())
  assert out["IMPORT"] == ""  # importing changes nothing
  assert (xla_flags.YNN_FLAG in out["FLAGS"]) == VERIFIED, out
  assert out["STATUS"].startswith("set in XLA_FLAGS") == VERIFIED, out
  opted_out = _run(code, {xla_flags.OPT_OUT_ENV: "1"})
  assert opted_out.returncode == 0, opted_out.stderr
  assert xla_flags.YNN_FLAG not in opted_out.stdout


def test_cli_modules_leave_jax_uninitialised():
  """Importing a tool does not start JAX's backend (so that `configure_xla_cpu()` and
  `--xla_force_host_platform_device_count` still work after the imports)."""
  modules = ["main", "evaluate", "compare", "bench", "convert", "summary", "pansharpen.cli",
             "classical.cli", "data.make_dataset", "data.make_demo"]
  code = ("import importlib\n"
          f"for m in {modules!r}: importlib.import_module('dcfnet_jax.' + m)\n"
          "from jax._src import xla_bridge\n"  # private, in a test only
          "print(xla_bridge.backends_are_initialized())\n")
  proc = _run(code)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "False"


# Without XLA_FLAGS: (1) jaxlib's default YNNPACK list is the one the per-jit value is derived
# from (same compiled program as the explicit YNN_DEFAULT); (2) the package's train step and
# predictor carry the option: no convolution in a YNNPACK fusion, while the same step jitted
# without options has some (so the check is not vacuous). A small network (DiCNN1) keeps the
# compilations short; XLA's choice of library does not depend on the network.
_PROBE = r"""
import functools, hashlib, json, re
import jax, jax.numpy as jnp, numpy as np
from dcfnet_jax import config_lib, inference, optim, sharding, steps, xla_flags
from dcfnet_jax.train_state import create_train_state, model_spec

def text(lowered, opts=None):
  return lowered.compile(opts).as_text() if opts else lowered.compile().as_text()

def fingerprint(t):
  return hashlib.md5(re.sub(r"metadata=\{[^}]*\}|stack_frame_id=\d+", "", t).encode()).hexdigest()

def ynn_convolutions(t):
  return sum(1 for l in t.splitlines() if "__ynn_fusion" in l and "conv_general_dilated" in l)

out = {}
x, k, w = jnp.ones((16, 64, 64, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 256))
def f(x, k, w):
  y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.mean(jax.nn.relu(y) @ w, axis=(0, 1, 2)).sum()
probe = jax.jit(jax.grad(f, argnums=(1, 2))).lower(x, k, w)
out["default_is_ynn_default"] = fingerprint(text(probe)) == fingerprint(
    text(probe, {xla_flags.YNN_FLAG_NAME: xla_flags.YNN_DEFAULT}))

config = config_lib.get_config("default")
with config.unlocked():
  config.model.name, config.data.num_bands, config.batch_size = "dicnn1", 4, 8
spec = model_spec(config)
tx, schedule = optim.make_optimizer(config, 100)
mesh = sharding.make_mesh(jax.devices()[:1])
state = create_train_state(config, tx, mesh)
rng = np.random.default_rng(0)
shapes = dict(pan=(8, 64, 64, 1), lms=(8, 64, 64, 4), ms=(8, 16, 16, 4), gt=(8, 64, 64, 4))
batch = {k: rng.random(s, dtype=np.float32) for k, s in shapes.items()}
plain = jax.jit(functools.partial(steps.train_step, spec=spec, tx=tx, schedule=schedule))
out["train_default"] = ynn_convolutions(text(plain.lower(state, batch)))
out["train_package"] = ynn_convolutions(text(
    steps.make_train_step(spec, tx, schedule, mesh).lower(state, batch)))
predictor = inference.Predictor(spec, img_range=1.0, mesh=mesh)
predict = jax.jit(functools.partial(inference.predict_dn, **predictor.static))
args = (state.params, state.model_state, batch["pan"], batch["lms"], batch["ms"])
out["predict_default"] = ynn_convolutions(text(predict.lower(*args)))
out["predict_package"] = ynn_convolutions(text(predictor.lower(state.params, state.model_state,
                                                               batch)))
print("RESULT=" + json.dumps(out))
"""


def test_package_jits_keep_convolutions_out_of_ynnpack_without_xla_flags():
  if not VERIFIED:
    pytest.skip("the option is not verified for this jaxlib: the package gives none")
  proc = _run(_PROBE)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT=")[-1])
  assert out["default_is_ynn_default"], out  # jaxlib's default list is the one we start from
  assert out["train_default"] > 0 and out["predict_default"] > 0, out  # YNNPACK would take them
  assert out["train_package"] == 0 and out["predict_package"] == 0, out
