"""Speed of the JAX DCFNet against the PyTorch reference (eager and torch.compile), one process.

  python -m dcfnet_jax.bench --batch-size 32 --size 64 --bands 8 --steps 20 \
      --frameworks jax,torch,torch-compile --precision fp32 --mode both --json bench.json

Each framework runs the same thing on the same batch: a training step (forward, MSE loss on the
residual output `net + lms`, backward, Adam lr 1e-4) and/or an inference forward in eval mode.
The steady-state time per step is the median of `--steps` timed steps after `--warmup` untimed
ones, each ended by `jax.block_until_ready` / `torch.cuda.synchronize`; the first call (tracing
and compilation for jax.jit and torch.compile) is reported apart. Achieved FLOP/s use the
convolution FLOPs of DCFNET.md §8 (the figure torch's flop counter gives), scaled to the size and
band count; XLA's own estimate is reported beside it.

Precision is pinned and recorded: fp32 disables TF32 on both sides and sets JAX's default matmul
precision to "highest"; tf32 allows TF32 on both; bf16 runs torch under bf16 autocast and the JAX
model with a bfloat16 compute dtype (parameters, loss and optimizer stay float32).

torch is optional: without it only the "jax" framework runs.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

FRAMEWORKS = ("jax", "torch", "torch-compile")
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("train", "infer", "both")

# Convolution multiply-accumulates per 64x64 sample (DCFNET.md §8): BASE + PER_BAND * bands.
_BASE_MACS_64 = 3_392_405_504
_PER_BAND_MACS_64 = 4_161_536
# Convs whose input is data (conv1 on [pan, lms]; the two conv_up on mms and ms) need no input
# gradient: their MACs per 64x64 sample are DATA_BASE + DATA_PER_BAND * bands.
_DATA_BASE_MACS_64 = 2_359_296
_DATA_PER_BAND_MACS_64 = 3_244_032


@dataclasses.dataclass
class BenchSettings:
  """What to run; the defaults are the official training shape (batch 32, 64x64, 8 bands)."""
  batch_size: int = 32
  steps: int = 20
  warmup: int = 3
  frameworks: tuple[str, ...] = FRAMEWORKS
  precision: str = "fp32"
  size: int = 64
  bands: int = 8
  mode: str = "both"
  learning_rate: float = 1e-4
  seed: int = 0
  threads: int = 0  # torch intra-op threads; 0 = all cores (os.cpu_count())
  devices: int = 1  # JAX devices the batch is split over (data parallel); torch uses one

  def validate(self) -> None:
    unknown = [f for f in self.frameworks if f not in FRAMEWORKS]
    if unknown or not self.frameworks:
      raise ValueError(f"frameworks {list(self.frameworks)}: expected a non-empty subset of "
                       f"{', '.join(FRAMEWORKS)}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if self.mode not in MODES:
      raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
    if self.size <= 0 or self.size % 4:
      raise ValueError(f"size {self.size}: must be a positive multiple of 4 (DCFNET.md §1)")
    for name in ("batch_size", "steps", "warmup", "bands", "devices"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.batch_size % self.devices:
      raise ValueError(f"batch_size {self.batch_size} must be a multiple of devices "
                       f"{self.devices}")


def conv_flops_per_sample(bands: int, size: int, train: bool) -> int:
  """Convolution FLOPs (2 per MAC) per sample, as torch's flop counter counts them.

  Every feature map lives at H, H/2 or H/4, so for a size that is a multiple of 4 the 64x64
  figures of DCFNET.md §8 scale exactly with (size/64)^2. A training step costs forward, input
  gradient and weight gradient (3x forward) minus the input gradients nobody needs (data inputs).
  """
  scale_num, scale_den = size * size, 64 * 64
  fwd = 2 * (_BASE_MACS_64 + _PER_BAND_MACS_64 * bands)
  if not train:
    return fwd * scale_num // scale_den
  data = 2 * (_DATA_BASE_MACS_64 + _DATA_PER_BAND_MACS_64 * bands)
  return (3 * fwd - data) * scale_num // scale_den


def make_batch(settings: BenchSettings) -> dict[str, np.ndarray]:
  """A random NHWC float32 batch in [0, 1] (pan, lms, ms, gt); mms is made inside each step."""
  rng = np.random.default_rng(settings.seed)
  n, s, c = settings.batch_size, settings.size, settings.bands
  return {
      "pan": rng.random((n, s, s, 1), dtype=np.float32),
      "lms": rng.random((n, s, s, c), dtype=np.float32),
      "ms": rng.random((n, s // 4, s // 4, c), dtype=np.float32),
      "gt": rng.random((n, s, s, c), dtype=np.float32),
  }


# ----------------------------------------------------------------------------- timing


def _time_loop(step: Callable[[], Any], sync: Callable[[Any], None], warmup: int,
               steps: int) -> tuple[dict[str, Any], Any]:
  """Runs `step` once (timed alone), warmup-1 more times, then `steps` timed, synced steps.

  Returns the timings and the last step's output.
  """
  t0 = time.perf_counter()
  sync(step())
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    sync(step())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    out = step()
    sync(out)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {
      "first_step_s": first,
      "compile_or_warmup_s": max(first - median, 0.0),
      "step_time_median_s": median,
      "step_time_min_s": min(times),
      "step_time_max_s": max(times),
      "step_times_s": times,
  }, out


# ----------------------------------------------------------------------------- JAX


def _jax_precision(precision: str) -> str:
  return {"fp32": "highest", "tf32": "tensorfloat32", "bf16": "default"}[precision]


def _jax_steps_from_train(settings: BenchSettings, batch: dict[str, np.ndarray]):
  """The training engineer's jitted steps (dcfnet_jax.train) on a one-device mesh.

  Returns (train_call, infer_call, args for XLA cost analysis) where each call runs one step.
  bf16 = `config.half_precision`: the model computes in bfloat16 with float32 parameters; the
  loss and the optimizer are float32. The predict step also clips to [0, 1] and scales to DN
  (negligible next to the network).
  """
  import jax
  from dcfnet_jax import config_lib, sharding, train

  config = config_lib.get_config("default")
  with config.unlocked():
    config.data.num_bands = settings.bands
    config.batch_size = settings.batch_size
    config.learning_rate = settings.learning_rate
    config.seed = settings.seed
    config.half_precision = settings.precision == "bf16"
    config.model.residual = True
  spec = train.model_spec(config)
  tx, schedule = train.make_optimizer(config, 1_000_000)
  if settings.devices > jax.device_count():
    raise ValueError(f"devices {settings.devices}: only {jax.device_count()} JAX devices present")
  mesh = sharding.make_mesh(jax.devices()[:settings.devices])
  state = train.create_train_state(config, spec, tx, mesh)
  device_batch = sharding.to_global_batch(batch, mesh)
  train_fn = train.make_train_step(spec, tx, schedule, mesh)
  predict_fn = train.make_predict_step(spec, config, mesh)
  carry = [state]

  def train_call():
    carry[0], metrics = train_fn(carry[0], device_batch)
    return metrics["loss"]

  def infer_call():
    return predict_fn(carry[0].params, carry[0].model_state, device_batch)

  cost_args = {"train": (train_fn, state, device_batch),
               "infer": (predict_fn, state.params, state.model_state, device_batch)}
  return train_call, infer_call, cost_args


def _jax_steps_local(settings: BenchSettings, batch: dict[str, np.ndarray]):
  """Equivalent steps written here, for when dcfnet_jax.train cannot build DCFNet."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  import optax
  from dcfnet_jax.models import dcfnet

  kwargs = {"dtype": jnp.bfloat16} if settings.precision == "bf16" else {}
  model = dcfnet.DCFNet(settings.bands, rngs=nnx.Rngs(settings.seed), **kwargs)
  device_batch = {k: jax.device_put(v) for k, v in batch.items()}
  tx = optax.adam(settings.learning_rate)
  model.train()
  train_def, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_def, _, _ = nnx.split(model, nnx.Param, ...)

  def forward(graphdef, params, rest, batch):
    m = nnx.merge(graphdef, params, rest, copy=True)
    ms = batch["ms"]
    out = m(batch["pan"], batch["lms"], dcfnet.make_mms(ms), ms).astype(jnp.float32)
    return out + batch["lms"], nnx.state(m, nnx.Not(nnx.Param))

  def train_step(params, rest, opt_state, batch):
    def loss_fn(params):
      pred, new_rest = forward(train_def, params, rest, batch)
      return jnp.mean(jnp.square(pred - batch["gt"])), new_rest
    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_rest, opt_state, loss

  train_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
  infer_fn = jax.jit(lambda p, r, b: forward(eval_def, p, r, b)[0])
  carry = [params, rest, tx.init(params)]

  def train_call():
    carry[0], carry[1], carry[2], loss = train_fn(*carry, device_batch)
    return loss

  def infer_call():
    return infer_fn(carry[0], carry[1], device_batch)

  cost_args = {"train": (train_fn, *carry, device_batch),
               "infer": (infer_fn, carry[0], carry[1], device_batch)}
  return train_call, infer_call, cost_args


def _run_jax(settings: BenchSettings, batch: dict[str, np.ndarray],
             modes: Sequence[str]) -> list[dict[str, Any]]:
  import jax

  results = []
  with jax.default_matmul_precision(_jax_precision(settings.precision)):
    try:
      calls = _jax_steps_from_train(settings, batch)
      source = "dcfnet_jax.train"
    except (ImportError, AttributeError, TypeError) as err:  # train API missing or changed
      if settings.devices > 1:
        raise
      calls = _jax_steps_local(settings, batch)
      source = f"local (dcfnet_jax.train unusable: {type(err).__name__}: {err})"
    train_call, infer_call, cost_args = calls
    flops = {mode: _xla_flops(*cost_args[mode]) for mode in modes}
    for mode in modes:
      call = train_call if mode == "train" else infer_call
      timing, out = _time_loop(call, jax.block_until_ready, settings.warmup, settings.steps)
      extra = {"loss": float(out)} if mode == "train" else {}
      results.append(_result("jax", mode, settings, timing, xla_flops_per_step=flops[mode],
                             jax_step_source=source, **extra))
  return results


def _xla_flops(jitted, *args) -> float | None:
  """XLA's cost-analysis FLOPs for one call (all ops, not only convolutions), if available."""
  try:
    cost = jitted.lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # pylint: disable=broad-except  (informative only)
    return None


# ----------------------------------------------------------------------------- PyTorch


@contextlib.contextmanager
def _torch_precision(precision: str):
  """Pins TF32 on or off for the duration (restored afterwards, so tests do not leak)."""
  import torch
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  allow = precision == "tf32"
  torch.backends.cuda.matmul.allow_tf32 = allow
  torch.backends.cudnn.allow_tf32 = allow
  try:
    yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run_torch(settings: BenchSettings, batch: dict[str, np.ndarray], modes: Sequence[str],
               compiled: bool) -> list[dict[str, Any]]:
  import torch
  from dcfnet_jax import torch_ref

  name = "torch-compile" if compiled else "torch"
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else (lambda _: None)
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)
              ) if settings.precision == "bf16" else contextlib.nullcontext
  tb = {k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))).to(device)
        for k, v in batch.items()}
  torch.manual_seed(settings.seed)
  model = torch_ref.DCFNetTorch(settings.bands).to(device)
  net = torch.compile(model) if compiled else model
  results = []
  with _torch_precision(settings.precision):
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

      timing, loss = _time_loop(step, sync, settings.warmup, settings.steps)
      results.append(_result(name, "train", settings, timing, loss=float(loss.detach())))
    if "infer" in modes:
      model.eval()

      def infer():
        with torch.inference_mode(), autocast():
          ms = tb["ms"]
          return net(tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms) + tb["lms"]

      timing, _ = _time_loop(infer, sync, settings.warmup, settings.steps)
      results.append(_result(name, "infer", settings, timing))
  return results


# ----------------------------------------------------------------------------- results


def _result(framework: str, mode: str, settings: BenchSettings, timing: dict[str, Any],
            **extra) -> dict[str, Any]:
  flops = conv_flops_per_sample(settings.bands, settings.size, mode == "train")
  flops *= settings.batch_size
  median = timing["step_time_median_s"]
  return {
      "framework": framework, "mode": mode, "status": "ok", **timing,
      "samples_per_s": settings.batch_size / median,
      "conv_flops_per_step": flops,
      "achieved_tflops": flops / median / 1e12,
      **{k: v for k, v in extra.items() if v is not None},
  }


def _failure(framework: str, mode: str, err: BaseException) -> dict[str, Any]:
  lines = traceback.format_exception_only(type(err), err)
  return {"framework": framework, "mode": mode, "status": "failed",
          "error": "".join(lines).strip()[-2000:]}


def _ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Median step time of JAX divided by that of each PyTorch variant (> 1: JAX is slower)."""
  ratios: dict[str, dict[str, float]] = {}
  ok = {(r["framework"], r["mode"]): r for r in results if r["status"] == "ok"}
  for (fw, mode), r in ok.items():
    if fw == "jax":
      continue
    jax_r = ok.get(("jax", mode))
    if jax_r:
      ratios.setdefault(mode, {})[f"jax/{fw}"] = (
          jax_r["step_time_median_s"] / r["step_time_median_s"])
  return ratios


def _environment(settings: BenchSettings, torch_threads: int | None) -> dict[str, Any]:
  import jax
  import flax
  env = {
      "python": platform.python_version(),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _pkg_version("jaxlib"),
      "flax": flax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_device": jax.devices()[0].device_kind,
      "jax_device_count": jax.device_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_flags_status": _xla_flags_status(),
      "jax_default_matmul_precision": _jax_precision(settings.precision),
      "jax_compute_dtype": "bfloat16" if settings.precision == "bf16" else "float32",
  }
  try:
    import torch
    env.update({
        "torch": torch.__version__,
        "torch_device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
        "torch_num_threads": torch_threads,
        "torch_allow_tf32_matmul": settings.precision == "tf32",
        "torch_cudnn_allow_tf32": settings.precision == "tf32",
        "torch_autocast": "bfloat16" if settings.precision == "bf16" else None,
    })
  except ImportError:
    env["torch"] = None
  return env


def _xla_flags_status() -> str | None:
  """What dcfnet_jax did about the XLA:CPU convolution flag on import (None if unknown)."""
  try:
    from dcfnet_jax import _xla_flags  # pylint: disable=g-import-not-at-top
    return _xla_flags.STATUS
  except ImportError:
    return None


def _pkg_version(name: str) -> str | None:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
  """Runs every requested framework and mode; failures are recorded, not raised."""
  settings.validate()
  progress = progress or (lambda msg: None)
  modes = ("train", "infer") if settings.mode == "both" else (settings.mode,)
  batch = make_batch(settings)
  results: list[dict[str, Any]] = []
  torch_threads = None
  saved_threads = None
  if any(f.startswith("torch") for f in settings.frameworks):
    try:
      import torch
      saved_threads = torch.get_num_threads()
      torch.set_num_threads(settings.threads or os.cpu_count() or 1)
      torch_threads = torch.get_num_threads()
    except ImportError:
      pass
  try:
    for fw in settings.frameworks:
      progress(f"{fw}: {', '.join(modes)} ...")
      try:
        if fw == "jax":
          results += _run_jax(settings, batch, modes)
        else:
          results += _run_torch(settings, batch, modes, compiled=fw == "torch-compile")
      except Exception as err:  # pylint: disable=broad-except  (reported, e.g. no compiler)
        results += [_failure(fw, mode, err) for mode in modes]
      for r in results[-len(modes):]:
        progress(_one_line(r))
  finally:
    if saved_threads is not None:
      import torch
      torch.set_num_threads(saved_threads)
  return {
      "settings": dataclasses.asdict(settings),
      "environment": _environment(settings, torch_threads),
      "conv_flops_per_sample": {
          "infer": conv_flops_per_sample(settings.bands, settings.size, False),
          "train": conv_flops_per_sample(settings.bands, settings.size, True)},
      "results": results,
      "time_ratio_jax_over": _ratios(results),
  }


def _one_line(r: dict[str, Any]) -> str:
  if r["status"] != "ok":
    return f"  {r['framework']} {r['mode']}: FAILED {r['error'].splitlines()[-1]}"
  return (f"  {r['framework']} {r['mode']}: {1e3 * r['step_time_median_s']:.1f} ms/step, "
          f"{r['samples_per_s']:.1f} samples/s, first call {r['first_step_s']:.1f} s")


def format_table(report: dict[str, Any]) -> str:
  """A Markdown table of the results, then the ratios."""
  s = report["settings"]
  env = report["environment"]
  lines = [
      f"batch {s['batch_size']}, {s['size']}x{s['size']}, {s['bands']} bands, "
      f"precision {s['precision']}, median of {s['steps']} steps after {s['warmup']} warm-up; "
      f"jax {env['jax']} on {env['jax_device']}, torch {env.get('torch')} on "
      f"{env.get('torch_device')} ({env.get('torch_num_threads')} threads), "
      f"{env['cpu_count']} CPUs",
      "",
      "| framework | mode | ms/step (median) | min | samples/s | conv TFLOP/s | first call s |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in report["results"]:
    if r["status"] != "ok":
      err = r["error"].splitlines()[-1][:80].replace("|", "/")
      lines.append(f"| {r['framework']} | {r['mode']} | failed: {err} | | | | |")
      continue
    lines.append(
        f"| {r['framework']} | {r['mode']} | {1e3 * r['step_time_median_s']:.1f} | "
        f"{1e3 * r['step_time_min_s']:.1f} | {r['samples_per_s']:.1f} | "
        f"{r['achieved_tflops']:.4f} | {r['first_step_s']:.2f} |")
  sources = {r["jax_step_source"] for r in report["results"] if "jax_step_source" in r}
  if sources:
    lines += ["", "JAX steps: " + "; ".join(sorted(sources)) + f"; XLA_FLAGS status: "
              f"{env.get('xla_flags_status')}"]
  for mode, ratios in report["time_ratio_jax_over"].items():
    lines.append("")
    lines.append(f"{mode}: time ratio " + ", ".join(
        f"{k} = {v:.2f}" for k, v in ratios.items()) + " (> 1: JAX slower)")
  return "\n".join(lines)


def _write_json(path: str, report: dict[str, Any]) -> None:
  path_obj = pathlib.Path(path)
  path_obj.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path_obj.parent, delete=False,
                                   suffix=".tmp") as f:
    json.dump(report, f, indent=2)
  os.replace(f.name, path_obj)


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchSettings, str | None]:
  p = argparse.ArgumentParser(prog="python -m dcfnet_jax.bench", description=__doc__.split("\n")[0])
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first (incl. the first call)")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                 help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
  p.add_argument("--precision", default="fp32", choices=PRECISIONS)
  p.add_argument("--size", type=int, default=64, help="pan/lms height and width (multiple of 4)")
  p.add_argument("--bands", type=int, default=8)
  p.add_argument("--mode", default="both", choices=MODES)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--json", default=None, help="write the full report here")
  a = p.parse_args(argv)
  settings = BenchSettings(
      batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
      frameworks=tuple(f.strip() for f in a.frameworks.split(",") if f.strip()),
      precision=a.precision, size=a.size, bands=a.bands, mode=a.mode, learning_rate=a.lr,
      seed=a.seed, threads=a.threads)
  try:
    settings.validate()
  except ValueError as err:
    p.error(str(err))
  return settings, a.json


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  settings, json_path = parse_args(argv)
  report = run_benchmark(settings, progress=lambda m: print(m, file=sys.stderr, flush=True))
  print(format_table(report))
  if json_path:
    _write_json(json_path, report)
    print(f"wrote {json_path}", file=sys.stderr)
  return report


if __name__ == "__main__":
  main()
