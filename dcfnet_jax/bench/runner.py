"""One benchmark run: every requested framework and mode on one batch (`run_benchmark`), the
environment it ran in, JAX/PyTorch time ratios and the Markdown table of `python -m
dcfnet_jax.bench`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
from collections.abc import Callable
from typing import Any

import flax
import jax

from dcfnet_jax import xla_flags
from dcfnet_jax.bench import frameworks, measure


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


def _environment(settings: measure.BenchSettings, torch_threads: int | None) -> dict[str, Any]:
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
      "jax_default_matmul_precision": frameworks.JAX_MATMUL_PRECISION[settings.precision],
      "jax_compute_dtype": "bfloat16" if settings.precision == "bf16" else "float32",
  }
  try:
    torch, _ = frameworks.import_torch()
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


def run_benchmark(settings: measure.BenchSettings, progress: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
  """Runs every requested framework and mode; failures are recorded, not raised."""
  settings.validate()
  progress = progress or (lambda msg: None)
  modes = ("train", "infer") if settings.mode == "both" else (settings.mode,)
  batch = measure.make_batch(settings)
  results: list[dict[str, Any]] = []
  torch_threads = None
  saved_threads = None
  if any(f.startswith("torch") for f in settings.frameworks):
    try:
      torch, _ = frameworks.import_torch()
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
          results += frameworks.run_jax(settings, batch, modes)
        else:
          results += frameworks.run_torch(settings, batch, modes,
                                          compiled=fw == "torch-compile")
      except Exception as err:  # pylint: disable=broad-except  (reported, e.g. no compiler)
        results += [measure.failure(fw, mode, err) for mode in modes]
      for r in results[-len(modes):]:
        progress(_one_line(r))
  finally:
    if saved_threads is not None:
      torch, _ = frameworks.import_torch()
      torch.set_num_threads(saved_threads)
  return {
      "settings": dataclasses.asdict(settings),
      "environment": _environment(settings, torch_threads),
      "conv_flops_per_sample": {
          "infer": measure.conv_flops_per_sample(settings.bands, settings.size, False),
          "train": measure.conv_flops_per_sample(settings.bands, settings.size, True)},
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
              f"XLA:CPU option: {env.get('xla_flags_status')}"]
  for mode, ratios in report["time_ratio_jax_over"].items():
    lines.append("")
    lines.append(f"{mode}: time ratio " + ", ".join(
        f"{k} = {v:.2f}" for k, v in ratios.items()) + " (> 1: JAX slower)")
  return "\n".join(lines)
