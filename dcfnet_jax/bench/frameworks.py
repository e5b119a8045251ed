"""The steps each framework runs in a benchmark: JAX (the package's train step and predictor) and
the PyTorch reference (eager or torch.compile), on the same batch.

bf16 = `config.half_precision` in JAX (bfloat16 compute, float32 parameters, loss and optimizer)
and bf16 autocast in PyTorch. torch is an optional extra, imported on use by `import_torch()`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from dcfnet_jax import config_lib, inference, optim, sharding, steps
from dcfnet_jax.bench.measure import BenchSettings, result, time_loop
from dcfnet_jax.errors import InputError
from dcfnet_jax.train_state import create_train_state, initial_weights, model_spec

JAX_MATMUL_PRECISION = {"fp32": "highest", "tf32": "tensorfloat32", "bf16": "default"}


# ----------------------------------------------------------------------------- JAX


def bench_config(settings: BenchSettings) -> ml_collections.ConfigDict:
  """The training config of a benchmark: the default DCFNet, residual, at these settings."""
  config = config_lib.get_config("default")
  with config.unlocked():
    config.data.num_bands = settings.bands
    config.batch_size = settings.batch_size
    config.learning_rate = settings.learning_rate
    config.seed = settings.seed
    config.half_precision = settings.precision == "bf16"
    config.model.residual = True
  return config


def bench_mesh(devices: int) -> jax.sharding.Mesh:
  """A data-parallel mesh over the first `devices` JAX devices."""
  if devices > jax.device_count():
    raise InputError(f"devices {devices}: only {jax.device_count()} JAX devices present")
  return sharding.make_mesh(jax.devices()[:devices])


class CompiledOnFirstCall:
  """A jitted computation lowered and compiled on its first call (so the first call's time
  includes compilation, as for a plain jit), its lowering kept for XLA's cost analysis."""

  def __init__(self, lower: Callable[[], Any]):
    self._lower = lower
    self.lowered = None
    self._compiled = None

  def __call__(self, *args):
    if self._compiled is None:
      self.lowered = self._lower()
      self._compiled = self.lowered.compile()
    return self._compiled(*args)

  def flops(self) -> float | None:
    """XLA's cost-analysis FLOPs for one call (all ops, not only convolutions), if known."""
    try:
      cost = self.lowered.cost_analysis()
      if isinstance(cost, (list, tuple)):
        cost = cost[0]
      return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # pylint: disable=broad-except  (informative only)
      return None


def jax_steps(settings: BenchSettings, batch: dict[str, np.ndarray], modes: Sequence[str]
              ) -> tuple[dict[str, Callable[[], Any]], dict[str, CompiledOnFirstCall], Any]:
  """The training code's jitted train step and/or the one predictor on `settings.devices`
  devices: ({mode: call running one step}, {mode: its computation}, the predictor or None).

  The weights are initialised on the first device and replicated (one initialisation compile
  per model, whatever the mesh); the optimiser exists only for a training step. The predictor
  also clips to [0, 1] and scales to DN (negligible next to the network).
  """
  config = bench_config(settings)
  spec = model_spec(config)
  mesh = bench_mesh(settings.devices)
  replicated = sharding.replicated_sharding(mesh)
  device_batch = sharding.to_global_batch(batch, mesh)
  calls, computations, predictor = {}, {}, None
  if "train" in modes:
    tx, schedule = optim.make_optimizer(config, 1_000_000)
    state = jax.device_put(create_train_state(config, tx, bench_mesh(1)), replicated)
    train_fn = steps.make_train_step(spec, tx, schedule, mesh)
    train = computations["train"] = CompiledOnFirstCall(
        lambda: train_fn.lower(state, device_batch))
    carry = [state]

    def train_call():
      carry[0], metrics = train(carry[0], device_batch)
      return metrics["loss"]

    calls["train"] = train_call
  if "infer" in modes:
    weights = jax.device_put(initial_weights(config, bench_mesh(1)), replicated)
    predictor = inference.Predictor(spec, img_range=float(config.data.img_range), mesh=mesh,
                                    fold=settings.fold)
    infer = computations["infer"] = CompiledOnFirstCall(
        lambda: predictor.lower(*weights, device_batch))
    inputs = [device_batch[k] for k in ("pan", "lms", "ms")]  # the lowering's argument order
    calls["infer"] = lambda: infer(*weights, *inputs)
  return calls, computations, predictor


def run_jax(settings: BenchSettings, batch: dict[str, np.ndarray],
            modes: Sequence[str]) -> list[dict[str, Any]]:
  """JAX records for `modes`; inference records say whether BatchNorm was folded."""
  results = []
  with jax.default_matmul_precision(JAX_MATMUL_PRECISION[settings.precision]):
    calls, computations, predictor = jax_steps(settings, batch, modes)
    for mode in modes:
      timing, out = time_loop(calls[mode], jax.block_until_ready, settings.warmup,
                              settings.steps)
      extra = {"loss": float(out)} if mode == "train" else {"fold": predictor.fold}
      results.append(result("jax", mode, settings, timing,
                            xla_flops_per_step=computations[mode].flops(), **extra))
  return results


# ----------------------------------------------------------------------------- PyTorch


def import_torch() -> tuple[Any, Any]:
  """(torch, dcfnet_jax.torch_ref), imported on first use: torch is an optional extra."""
  return importlib.import_module("torch"), importlib.import_module("dcfnet_jax.torch_ref")


@contextlib.contextmanager
def torch_precision(precision: str):
  """Pins TF32 on or off for the duration (restored afterwards, so tests do not leak)."""
  torch, _ = import_torch()
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  allow = precision == "tf32"
  torch.backends.cuda.matmul.allow_tf32 = allow
  torch.backends.cudnn.allow_tf32 = allow
  try:
    yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to_torch_batch(batch: dict[str, np.ndarray], device) -> dict[str, Any]:
  """NHWC numpy arrays as NCHW torch tensors on `device`."""
  torch, _ = import_torch()
  return {k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))).to(device)
          for k, v in batch.items()}


def run_torch(settings: BenchSettings, batch: dict[str, np.ndarray], modes: Sequence[str],
              compiled: bool) -> list[dict[str, Any]]:
  """PyTorch reference records for `modes` (eager, or torch.compile when `compiled`)."""
  torch, torch_ref = import_torch()
  name = "torch-compile" if compiled else "torch"
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)
              ) if settings.precision == "bf16" else contextlib.nullcontext
  tb = to_torch_batch(batch, device)
  torch.manual_seed(settings.seed)
  model = torch_ref.DCFNetTorch(settings.bands).to(device)
  net = torch.compile(model) if compiled else model
  results = []
  with torch_precision(settings.precision):
    if "train" in modes:
      model.train()
      opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)

      def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
          ms = tb["ms"]
          out = net(tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms)
        loss = torch.mean(torch.square(out.float() + tb["lms"] - tb["gt"]))
        loss.backward()
        opt.step()
        return loss

      timing, loss = time_loop(step, sync, settings.warmup, settings.steps)
      results.append(result(name, "train", settings, timing, loss=float(loss.detach())))
    if "infer" in modes:
      model.eval()

      def infer():
        with torch.inference_mode(), autocast():
          ms = tb["ms"]
          return net(tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms) + tb["lms"]

      timing, _ = time_loop(infer, sync, settings.warmup, settings.steps)
      results.append(result(name, "infer", settings, timing))
  return results
