"""Speed of the JAX DCFNet against the PyTorch reference (eager and torch.compile), one process.

  python -m dcfnet_jax.bench --batch-size 32 --size 64 --bands 8 --steps 20 \
      --frameworks jax,torch,torch-compile --precision fp32 --mode both --json bench.json

Each framework runs the same thing on the same batch: a training step (forward, MSE loss on the
residual output `net + lms`, backward, Adam lr 1e-4) and/or an inference forward in eval mode.
The steady-state time per step is the median of `--steps` timed steps after `--warmup` untimed
ones, each ended by `jax.block_until_ready` / `torch.cuda.synchronize`; the first call (tracing
and compilation for jax.jit and torch.compile) is reported apart. Achieved FLOP/s use the
convolution FLOPs of docs/dcfnet_architecture.md §8 (the figure torch's flop counter gives),
scaled to the size and band count; XLA's own estimate is reported beside it.

Precision is pinned and recorded: fp32 disables TF32 on both sides and sets JAX's default matmul
precision to "highest"; tf32 allows TF32 on both; bf16 runs torch under bf16 autocast and the JAX
model with a bfloat16 compute dtype (parameters, loss and optimizer stay float32).

torch is optional: without it only the "jax" framework runs (it is imported by `_torch()`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import numpy as np

from dcfnet_jax import cli, config_lib, files, inference, optim, sharding, steps, xla_flags
from dcfnet_jax.errors import InputError
from dcfnet_jax.train_state import create_train_state, model_spec

log = logging.getLogger(__name__)

FRAMEWORKS = ("jax", "torch", "torch-compile")
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("train", "infer", "both")

# Convolution multiply-accumulates per 64x64 sample (docs/dcfnet_architecture.md §8):
# BASE + PER_BAND * bands.
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

  def validate(self) -> None:
    unknown = [f for f in self.frameworks if f not in FRAMEWORKS]
    if unknown or not self.frameworks:
      raise InputError(f"frameworks {list(self.frameworks)}: expected a non-empty subset of "
                       f"{', '.join(FRAMEWORKS)}")
    if self.precision not in PRECISIONS:
      raise InputError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if self.mode not in MODES:
      raise InputError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
    if self.size <= 0 or self.size % 4:
      raise InputError(f"size {self.size}: must be a positive multiple of 4 "
                       "(docs/dcfnet_architecture.md §1)")
    for name in ("batch_size", "steps", "warmup", "bands"):
      if getattr(self, name) < 1:
        raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")


def conv_flops_per_sample(bands: int, size: int, train: bool) -> int:
  """Convolution FLOPs (2 per MAC) per sample, as torch's flop counter counts them.

  Every feature map lives at H, H/2 or H/4, so for a size that is a multiple of 4 the 64x64
  figures of docs/dcfnet_architecture.md §8 scale exactly with (size/64)^2. A training step
  costs forward, input gradient and weight gradient (3x forward) minus the input gradients
  nobody needs (data inputs).
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


def _jax_steps(settings: BenchSettings, batch: dict[str, np.ndarray]):
  """The training code's jitted train step and the one predictor, on a one-device mesh.

  Returns (train_call, infer_call, lowered computations for XLA's cost analysis) where each
  call runs one step. bf16 = `config.half_precision`: the model computes in bfloat16 with
  float32 parameters; the loss and the optimizer are float32. The predictor also clips to
  [0, 1] and scales to DN (negligible next to the network).
  """
  config = config_lib.get_config("default")
  with config.unlocked():
    config.data.num_bands = settings.bands
    config.batch_size = settings.batch_size
    config.learning_rate = settings.learning_rate
    config.seed = settings.seed
    config.half_precision = settings.precision == "bf16"
    config.model.residual = True
  spec = model_spec(config)
  tx, schedule = optim.make_optimizer(config, 1_000_000)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = create_train_state(config, tx, mesh)
  device_batch = sharding.to_global_batch(batch, mesh)
  train_fn = steps.make_train_step(spec, tx, schedule, mesh)
  predictor = inference.Predictor(spec, img_range=float(config.data.img_range), mesh=mesh)
  carry = [state]

  def train_call():
    carry[0], metrics = train_fn(carry[0], device_batch)
    return metrics["loss"]

  def infer_call():
    return predictor(carry[0].params, carry[0].model_state, device_batch)

  lowered = {"train": lambda: train_fn.lower(state, device_batch),
             "infer": lambda: predictor.lower(state.params, state.model_state, device_batch)}
  return train_call, infer_call, lowered


def _run_jax(settings: BenchSettings, batch: dict[str, np.ndarray],
             modes: Sequence[str]) -> list[dict[str, Any]]:
  results = []
  with jax.default_matmul_precision(_jax_precision(settings.precision)):
    train_call, infer_call, lowered = _jax_steps(settings, batch)
    flops = {mode: _xla_flops(lowered[mode]) for mode in modes}
    for mode in modes:
      call = train_call if mode == "train" else infer_call
      timing, out = _time_loop(call, jax.block_until_ready, settings.warmup, settings.steps)
      extra = {"loss": float(out)} if mode == "train" else {}
      results.append(_result("jax", mode, settings, timing, xla_flops_per_step=flops[mode],
                             **extra))
  return results


def _xla_flops(lower: Callable[[], Any]) -> float | None:
  """XLA's cost-analysis FLOPs for one call (all ops, not only convolutions), if available."""
  try:
    cost = lower().cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # pylint: disable=broad-except  (informative only)
    return None


# ----------------------------------------------------------------------------- PyTorch


def _torch() -> tuple[Any, Any]:
  """(torch, dcfnet_jax.torch_ref), imported on first use: torch is an optional extra."""
  return importlib.import_module("torch"), importlib.import_module("dcfnet_jax.torch_ref")


@contextlib.contextmanager
def _torch_precision(precision: str):
  """Pins TF32 on or off for the duration (restored afterwards, so tests do not leak)."""
  torch, _ = _torch()
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
  torch, torch_ref = _torch()
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
      "xla_flags_status": xla_flags.status(),
      "jax_default_matmul_precision": _jax_precision(settings.precision),
      "jax_compute_dtype": "bfloat16" if settings.precision == "bf16" else "float32",
  }
  try:
    torch, _ = _torch()
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


def _pkg_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
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
      torch, _ = _torch()
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
      torch, _ = _torch()
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
  if any(r["framework"] == "jax" for r in report["results"]):
    lines += ["", "JAX steps: dcfnet_jax.steps (train) and inference.Predictor (infer); "
              f"XLA:CPU flag: {env.get('xla_flags_status')}"]
  for mode, ratios in report["time_ratio_jax_over"].items():
    lines.append("")
    lines.append(f"{mode}: time ratio " + ", ".join(
        f"{k} = {v:.2f}" for k, v in ratios.items()) + " (> 1: JAX slower)")
  return "\n".join(lines)


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.bench", __doc__)
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
  return p


def settings_from_args(a: argparse.Namespace) -> BenchSettings:
  settings = BenchSettings(
      batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
      frameworks=tuple(f.strip() for f in a.frameworks.split(",") if f.strip()),
      precision=a.precision, size=a.size, bands=a.bands, mode=a.mode, learning_rate=a.lr,
      seed=a.seed, threads=a.threads)
  settings.validate()
  return settings


def run(args: argparse.Namespace) -> int:
  settings = settings_from_args(args)
  if args.json:  # refused before the benchmark, not after it
    files.check_output_file(args.json, flag="--json")
  xla_flags.warn_if_unset(jax.default_backend())
  report = run_benchmark(settings, progress=log.info)
  print(format_table(report))
  if args.json:
    files.write_json(args.json, report)
    log.info("wrote %s", args.json)
  failed = [r for r in report["results"] if r["status"] != "ok"]
  return 1 if failed and len(failed) == len(report["results"]) else 0


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
