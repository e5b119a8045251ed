"""The accelerator suite's Markdown: the BENCHMARKS.md section naming the device (tables of the
patches runs, best JAX vs best PyTorch, BatchNorm folding, scenes, scaling, the bf16 check)."""

from __future__ import annotations

from typing import Any

_NAMES = {("jax", "fp32"): "JAX fp32", ("jax", "tf32"): "JAX TF32", ("jax", "bf16"): "JAX bf16",
          ("torch", "fp32"): "PyTorch eager fp32", ("torch", "tf32"): "PyTorch eager TF32",
          ("torch", "bf16"): "PyTorch eager AMP bf16",
          ("torch-compile", "fp32"): "torch.compile fp32",
          ("torch-compile", "tf32"): "torch.compile TF32",
          ("torch-compile", "bf16"): "torch.compile AMP bf16"}
_MODE_NAMES = {"train": "training step", "infer": "inference"}


def name(r: dict[str, Any]) -> str:
  """The display name of a record's configuration, e.g. "torch.compile AMP bf16"."""
  return _NAMES.get((r["framework"], r["precision"]), f"{r['framework']} {r['precision']}")


def best_ratios(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Per (mode, batch): the fastest JAX and PyTorch configurations and their speed ratio."""
  out = {}
  ok = [r for r in report["results"] if r["section"] == "patches" and r["status"] == "ok"]
  for mode in ("train", "infer"):
    for batch in sorted({r["batch_size"] for r in ok}):
      rows = [r for r in ok if r["mode"] == mode and r["batch_size"] == batch]
      jax_rows = [r for r in rows if r["framework"] == "jax"]
      torch_rows = [r for r in rows if r["framework"] != "jax"]
      if not jax_rows or not torch_rows:
        continue
      bj = max(jax_rows, key=lambda r: r["samples_per_s"])
      bt = max(torch_rows, key=lambda r: r["samples_per_s"])
      out[f"{mode}/{batch}"] = {"jax": name(bj), "jax_samples_per_s": bj["samples_per_s"],
                                "torch": name(bt), "torch_samples_per_s": bt["samples_per_s"],
                                "speedup": bj["samples_per_s"] / bt["samples_per_s"]}
  return out


def folding_pair(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
  """(unfolded, folded) JAX inference records of the same batch and precision, if both ran."""
  folding = [r for r in report["results"] if r["section"] == "folding" and r["status"] == "ok"]
  for other in folding:
    for r in report["results"]:
      if (r["section"] == "patches" and r["framework"] == "jax" and r["mode"] == "infer"
          and r["status"] == "ok" and r["fold"] != other["fold"]
          and (r["batch_size"], r["precision"]) == (other["batch_size"], other["precision"])):
        return (other, r) if r["fold"] else (r, other)
  return None


def render_markdown(report: dict[str, Any], command: str) -> str:
  """The BENCHMARKS.md section: device, versions, tables, ratios, folding, scaling, bf16."""
  dev, env, cfg = report["device"], report["environment"], report["config"]
  title = "tiny CPU check of the command, not a benchmark" if report["tiny"] else dev["kind"]
  lines = [f"# Accelerator benchmark: {title}", "",
           f"Device: **{dev['kind']}** (JAX backend `{dev['backend']}`, {dev['count']} "
           f"device(s)); JAX {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}; "
           f"{report['torch']}; Python {env.get('python')}; {report['date']}.", "",
           f"Command: `{command}` ({report['measure_s']:.0f} s of measurements). "
           f"{cfg['size']}x{cfg['size']} patches, {cfg['bands']} bands; median of "
           f"{cfg['steps']} steps after {cfg['warmup']} warm-up; first call (compilation) apart. "
           "fp32: TF32 off and JAX matmul precision highest; TF32: TF32 on both sides; bf16: "
           "JAX bfloat16 compute with float32 parameters, PyTorch AMP (bf16 autocast).", ""]
  for mode, what in (("train", "Training step (forward, MSE, backward, Adam)"),
                     ("infer", "Inference (eval-mode forward)")):
    rows = [r for r in report["results"] if r["section"] == "patches" and r["mode"] == mode]
    if rows:
      lines += [f"## {what}", "", "| configuration | batch | samples/s | ms/step | conv TFLOP/s "
                "| first call s |", "|---|---|---|---|---|---|"]
      lines += [_row(r) for r in sorted(rows, key=lambda r: (-r["batch_size"], r["framework"],
                                                              r["precision"]))]
      lines.append("")
  ratios = best_ratios(report)
  if ratios:
    lines += ["## Best JAX vs best PyTorch", "", "| mode, batch | best JAX | best PyTorch | "
              "JAX / PyTorch (samples/s) |", "|---|---|---|---|"]
    for key, v in ratios.items():
      mode, batch = key.split("/")
      lines.append(f"| {mode}, {batch} | {v['jax']} ({v['jax_samples_per_s']:.0f}/s) | "
                   f"{v['torch']} ({v['torch_samples_per_s']:.0f}/s) | **{v['speedup']:.2f}×** |")
    lines.append("")
  lines += _folding_lines(report) + _scene_lines(report) + _scaling_lines(report)
  lines += _bf16_lines(report["bf16_check"])
  if report["skipped"]:
    lines += ["", f"Skipped (time budget {cfg['budget_s']:.0f} s): " + "; ".join(report["skipped"])]
  failed = [r for r in report["results"] if r["status"] != "ok"]
  if failed:
    lines += ["", "Failed: " + "; ".join(f"{r['label']} {r['framework']} {r['mode']}: "
                                          f"{_error(r)}" for r in failed)]
  return "\n".join(lines) + "\n"


def _folding_lines(report: dict[str, Any]) -> list[str]:
  pair = folding_pair(report)
  if pair is None:
    return []
  plain, folded = pair
  default = "folded" if folded.get("fold_setting") is None else "not folded"
  return [f"## BatchNorm folding (JAX inference, batch {plain['batch_size']}, "
          f"{plain['precision']})", "", "| BatchNorm | samples/s | ms/step |", "|---|---|---|",
          f"| not folded | {plain['samples_per_s']:.1f} | "
          f"{1e3 * plain['step_time_median_s']:.1f} |",
          f"| folded into the convolutions | {folded['samples_per_s']:.1f} | "
          f"{1e3 * folded['step_time_median_s']:.1f} |", "",
          f"Folded / not folded: **{folded['samples_per_s'] / plain['samples_per_s']:.3f}×** "
          f"samples/s (the predictor's default on this backend: {default}).", ""]


def _scene_lines(report: dict[str, Any]) -> list[str]:
  cfg = report["config"]
  scene = [r for r in report["results"] if r["section"] == "scene"]
  if not scene:
    return []
  lines = [f"## Whole-scene inference ({cfg['scene_size']}x{cfg['scene_size']}, batch "
           f"{cfg['scene_batch']})", "", "| configuration | PAN Mpixel/s | ms/scene | "
           "first call s |", "|---|---|---|---|"]
  for r in scene:
    if r["status"] != "ok":
      lines.append(f"| {name(r)} | failed: {_error(r)} | | |")
      continue
    mpix = r["samples_per_s"] * r["size"] ** 2 / 1e6
    lines.append(f"| {name(r)} | {mpix:.2f} | {1e3 * r['step_time_median_s']:.1f} | "
                 f"{r['first_step_s']:.1f} |")
  return lines + [""]


def _scaling_lines(report: dict[str, Any]) -> list[str]:
  cfg = report["config"]
  scaling = [r for r in report["results"] if r["section"] == "scaling" and r["status"] == "ok"]
  if not scaling:
    return []
  base = scaling[0]["samples_per_s"] / scaling[0]["devices"]
  lines = [f"## Device scaling (JAX {_MODE_NAMES[scaling[0]['mode']]}, "
           f"{scaling[0]['precision']}, {cfg['scaling_per_device_batch']} per device)", "",
           "| devices | global batch | samples/s | efficiency |", "|---|---|---|---|"]
  for r in scaling:
    eff = r["samples_per_s"] / (base * r["devices"])
    lines.append(f"| {r['devices']} | {r['batch_size']} | {r['samples_per_s']:.1f} | {eff:.0%} |")
  if report["device"]["count"] == 1:
    lines.append("\nOne device only: no scaling measured beyond 1.")
  return lines + [""]


def _bf16_lines(c: dict[str, Any]) -> list[str]:
  lines = ["## bf16 check (same weights, same batch, the predictor without lms and clipping)",
           "", f"JAX bf16 vs fp32: relative L2 error {c['jax_rel_l2_error']:.2e}, max abs "
           f"{c['jax_max_abs_error']:.2e} (output RMS {c['fp32_output_rms']:.3f}; compute dtype "
           f"{c['jax_compute_dtype']}; expected between {c['min_error']:.0e} and "
           f"{c['bound']:.0e})."]
  if "torch_amp_rel_l2_error" in c:
    lines.append(f"PyTorch AMP vs JAX fp32: {c['torch_amp_rel_l2_error']:.2e} (output dtype "
                 f"{c['torch_amp_output_dtype']}); PyTorch fp32 vs JAX fp32: "
                 f"{c['torch_fp32_vs_jax_fp32_rel_l2']:.2e}.")
  return lines


def _error(r: dict[str, Any]) -> str:
  return r["error"].splitlines()[-1][:120].replace("|", "/")


def _row(r: dict[str, Any]) -> str:
  if r["status"] != "ok":
    return f"| {name(r)} | {r['batch_size']} | failed: {_error(r)} | | | |"
  return (f"| {name(r)} | {r['batch_size']} | {r['samples_per_s']:.1f} | "
          f"{1e3 * r['step_time_median_s']:.1f} | {r['achieved_tflops']:.2f} | "
          f"{r['first_step_s']:.1f} |")
