"""One-command accelerator benchmark: JAX fp32/TF32/bf16 against the PyTorch reference.

  python -m dcfnet_jax.bench_accelerator --out-dir bench_gpu      # on a GPU/TPU machine
  python -m dcfnet_jax.bench_accelerator --tiny --out-dir /tmp/t  # seconds-to-minutes, CPU

On the accelerator, in one process and in this order (most important first), with the paper's
training shape (64x64 patches, 8 bands):
  1. training step and inference at batch 256: JAX in fp32, TF32 and bf16 (bfloat16 compute,
     float32 parameters), PyTorch eager in fp32, TF32 and AMP (bf16 autocast), and
     torch.compile in TF32 and AMP;
  2. inference on whole 1024x1024 scenes (Mpixel/s of PAN);
  3. 1 -> N device scaling of the JAX training step (per-device batch fixed);
  4. the same as 1. at batch 32, then torch.compile in fp32 and at batch 32 if time is left;
  5. a bf16 check: bf16 and fp32 outputs of the same weights on the same batch (proves bf16 ran
     and bounds its error).
Each measurement is `dcfnet_jax.bench.run_benchmark` (median of timed steps, compilation apart),
so the numbers mean what the single-run tool's numbers mean. A time budget (default 450 s of
measurements, under 8 minutes with start-up) skips the remaining items, and says so, rather
than running over. Nothing is fetched from the network.

Writes `<out-dir>/accelerator.json` (everything) and `<out-dir>/accelerator.md` (a section for
BENCHMARKS.md naming the device; copy it to docs/bench_accelerator.md and run
`python benchmarks/collect.py`). Without torch only JAX runs; without a GPU/TPU the command
stops with a message unless `--tiny` (the CPU check of the command itself, used by the tests).
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcfnet_jax import bench, convert, files
from dcfnet_jax.models import dcfnet

EXIT_NO_ACCELERATOR = 1
EXIT_USAGE = 2
PRECISIONS = ("fp32", "tf32", "bf16")
# bf16 vs fp32 outputs of one network on one batch: relative L2 error bound. bfloat16 keeps 8
# significant bits (relative rounding 2^-9 ~ 2e-3 per operation); through ~70 layers with
# BatchNorm the measured error is ~1e-2 (docs/bench_accelerator.md); 5e-2 fails only when
# something is broken, and an error of exactly 0 means bf16 did not run.
BF16_REL_ERROR_BOUND = 5e-2


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """What the suite runs; `full()` is the accelerator plan, `tiny()` the CPU check."""
  batch_sizes: tuple[int, ...] = (256, 32)
  precisions: tuple[str, ...] = PRECISIONS
  size: int = 64
  bands: int = 8
  steps: int = 20
  warmup: int = 3
  scene_size: int = 1024
  scene_batch: int = 1
  scaling_per_device_batch: int = 256
  scaling_precision: str = "tf32"
  max_devices: int = 0  # 0: all
  torch: bool = True
  torch_compile: bool = True
  budget_s: float = 450.0

  @classmethod
  def full(cls, **overrides) -> "SuiteConfig":
    return dataclasses.replace(cls(), **overrides)

  @classmethod
  def tiny(cls, **overrides) -> "SuiteConfig":
    base = cls(batch_sizes=(2,), size=16, steps=2, warmup=1, scene_size=32,
               scaling_per_device_batch=2, scaling_precision="fp32", max_devices=2,
               torch_compile=False, budget_s=600.0)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Item:
  """One measurement: a `bench.BenchSettings` plus what it is for in the report."""
  section: str  # "patches", "scene" or "scaling"
  settings: bench.BenchSettings
  label: str


def plan(cfg: SuiteConfig, torch_ok: bool, device_count: int) -> list[Item]:
  """The measurements in priority order (later ones are the first to be cut by the budget)."""
  def settings(**kw) -> bench.BenchSettings:
    base = dict(size=cfg.size, bands=cfg.bands, steps=cfg.steps, warmup=cfg.warmup)
    base.update(kw)
    return bench.BenchSettings(**base)

  largest = max(cfg.batch_sizes)
  first, smaller, later = [], [], []  # largest batch; other batches; remaining torch.compile
  for batch in cfg.batch_sizes:
    for prec in cfg.precisions:
      fws = ("jax",) + (("torch",) if torch_ok else ())
      (first if batch == largest else smaller).append(
          Item("patches", settings(batch_size=batch, precision=prec, frameworks=fws),
               f"batch {batch}, {prec}"))
      if torch_ok and cfg.torch_compile:
        compiled = Item("patches", settings(batch_size=batch, precision=prec,
                                            frameworks=("torch-compile",)),
                        f"batch {batch}, {prec}, torch.compile")
        # torch.compile costs minutes per setting: the best PyTorch settings (TF32 / AMP at
        # the largest batch) first, the rest only if the budget allows.
        best = prec != "fp32" and batch == largest
        (first if best else later).append(compiled)
  scene = []
  for prec in cfg.precisions:
    fws = ("jax",) + (("torch",) if torch_ok and prec != "fp32" else ())
    scene.append(Item("scene", settings(batch_size=cfg.scene_batch, size=cfg.scene_size,
                                        precision=prec, frameworks=fws, mode="infer",
                                        steps=max(2, cfg.steps // 4), warmup=1),
                      f"scene {cfg.scene_size}x{cfg.scene_size}, {prec}"))
  scaling = []
  n_max = device_count if not cfg.max_devices else min(cfg.max_devices, device_count)
  n = 1
  while n <= n_max:
    scaling.append(Item("scaling", settings(batch_size=cfg.scaling_per_device_batch * n,
                                            precision=scaling_precision(cfg),
                                            frameworks=("jax",), mode="train", devices=n),
                        f"{n} device(s)"))
    n *= 2
  # Headline (largest batch) first, then scenes and scaling, then the smaller batches.
  items = first + scene + scaling + smaller
  return items + later


def scaling_precision(cfg: SuiteConfig) -> str:
  """The scaling run's precision: the configured one if measured at all, else the first."""
  return cfg.scaling_precision if cfg.scaling_precision in cfg.precisions else cfg.precisions[0]


# ----------------------------------------------------------------------------- environment


def accelerator() -> tuple[str, str]:
  """(JAX backend, device kind), e.g. ("gpu", "NVIDIA H100 80GB HBM3")."""
  return jax.default_backend(), jax.devices()[0].device_kind


def torch_status(backend: str, tiny: bool) -> tuple[bool, str]:
  """Whether the PyTorch reference can run beside JAX here, and why not when it cannot."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  except ImportError:
    return False, "torch is not installed: JAX only (pip install torch for the comparison)"
  if tiny or backend == "cpu":
    return True, f"torch {torch.__version__} on the CPU"
  if not torch.cuda.is_available():
    return False, (f"torch {torch.__version__} sees no CUDA device while JAX runs on {backend}: "
                   "JAX only")
  return True, f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"


# ----------------------------------------------------------------------------- bf16 check


def _relative_error(test: np.ndarray, ref: np.ndarray) -> float:
  return float(np.linalg.norm(test - ref) / max(np.linalg.norm(ref), 1e-30))


def bf16_check(size: int, bands: int, batch: int = 2, seed: int = 0,
               torch_ok: bool = True) -> dict[str, Any]:
  """Eval-mode outputs of the same weights in fp32 and bf16, JAX and (if present) torch AMP.

  Inputs are smooth random images in [0, 1]; the residual `lms` is not added (it would hide
  the network's error). The error is relative L2 over the whole output. An error of 0 means
  bf16 was not used; more than BF16_REL_ERROR_BOUND means something is broken.
  """
  batch_np = bench.make_batch(bench.BenchSettings(batch_size=batch, size=size, bands=bands,
                                                  seed=seed))
  ms = jnp.asarray(batch_np["ms"])
  args = (jnp.asarray(batch_np["pan"]), jnp.asarray(batch_np["lms"]), dcfnet.make_mms(ms), ms)
  model = dcfnet.DCFNet(bands, rngs=nnx.Rngs(seed))
  model.eval()
  with jax.default_matmul_precision("highest"):
    ref = np.asarray(jax.jit(lambda m, *a: m(*a))(model, *args), np.float64)
    model.set_attributes(dtype=jnp.bfloat16, raise_if_not_found=False)
    low = jax.jit(lambda m, *a: m(*a))(model, *args)
  out = {"batch": batch, "size": size, "bands": bands, "bound": BF16_REL_ERROR_BOUND,
         "jax_compute_dtype": str(jnp.dtype(model.conv1.dtype)),
         "jax_rel_l2_error": _relative_error(np.asarray(low, np.float64), ref),
         "jax_max_abs_error": float(np.max(np.abs(np.asarray(low, np.float64) - ref))),
         "fp32_output_rms": float(np.sqrt(np.mean(ref ** 2)))}
  if torch_ok:
    out.update(_torch_amp_check(model, batch_np, bands, ref))
  return out


def _torch_amp_check(model, batch_np, bands, ref) -> dict[str, Any]:
  """The same check for the PyTorch reference under bf16 autocast (the JAX weights, converted)."""
  torch, torch_ref = bench._torch()  # pylint: disable=protected-access
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model.set_attributes(dtype=jnp.float32, raise_if_not_found=False)
  net = torch_ref.DCFNetTorch(bands)
  net.load_state_dict(convert.to_torch(model))
  net = net.to(device).eval()
  tb = {k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))).to(device)
        for k, v in batch_np.items()}
  with torch.inference_mode():
    ms = tb["ms"]
    args = (tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms)
    full = net(*args).float().cpu().numpy().transpose(0, 2, 3, 1)
    with torch.autocast(device.type, dtype=torch.bfloat16):
      amp = net(*args)
  amp_np = amp.float().cpu().numpy().transpose(0, 2, 3, 1)
  return {"torch_amp_output_dtype": str(amp.dtype).replace("torch.", ""),
          "torch_amp_rel_l2_error": _relative_error(amp_np.astype(np.float64), ref),
          "torch_fp32_vs_jax_fp32_rel_l2": _relative_error(full.astype(np.float64), ref)}


# ----------------------------------------------------------------------------- running


def run_suite(cfg: SuiteConfig, *, tiny: bool, progress: Callable[[str], None] = print
              ) -> dict[str, Any]:
  """Runs the plan within the budget; returns the whole report (see `render_markdown`)."""
  backend, kind = accelerator()
  torch_ok, torch_note = torch_status(backend, tiny)
  torch_ok = torch_ok and cfg.torch
  if not cfg.torch:
    torch_note = "PyTorch comparison switched off (--no-torch)"
  progress(f"JAX {jax.__version__} on {backend} ({kind}, {jax.device_count()} device(s)); "
           f"{torch_note}")
  items = plan(cfg, torch_ok, jax.device_count())
  start = time.perf_counter()
  records, skipped, environment = [], [], {}
  for i, item in enumerate(items):
    elapsed = time.perf_counter() - start
    if elapsed > cfg.budget_s:
      skipped.append(f"{item.section}: {item.label} ({', '.join(item.settings.frameworks)})")
      continue
    same = _measured_already(records, item)
    if same is not None:  # e.g. scaling on 1 device = a patches measurement: not run twice
      records.append({**same, "section": item.section, "label": item.label})
      continue
    progress(f"[{i + 1}/{len(items)}, {elapsed:.0f} s] {item.section}: {item.label} "
             f"({', '.join(item.settings.frameworks)})")
    report = bench.run_benchmark(item.settings, progress=lambda m: progress("  " + m.strip()))
    for r in report["results"]:
      records.append({"section": item.section, "label": item.label,
                      "batch_size": item.settings.batch_size, "size": item.settings.size,
                      "precision": item.settings.precision, "devices": item.settings.devices,
                      **r})
    environment = report["environment"]
  if skipped:
    progress(f"time budget of {cfg.budget_s:.0f} s used up: skipped {len(skipped)} item(s)")
  progress("bf16 check ...")
  check = bf16_check(cfg.size, cfg.bands, torch_ok=torch_ok)
  return {
      "suite": "accelerator", "tiny": tiny,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": {"backend": backend, "kind": kind, "count": jax.device_count()},
      "torch": torch_note, "config": dataclasses.asdict(cfg),
      "environment": environment,
      "results": records, "skipped": skipped, "bf16_check": check,
      "measure_s": time.perf_counter() - start,
  }


def _measured_already(records: list[dict[str, Any]], item: Item) -> dict[str, Any] | None:
  """A successful JAX record with exactly the settings of a single-framework, single-mode item."""
  st = item.settings
  if st.frameworks != ("jax",) or st.mode == "both":
    return None
  for r in records:
    if (r["framework"] == "jax" and r["mode"] == st.mode and r["status"] == "ok"
        and (r["batch_size"], r["size"], r["precision"], r["devices"])
        == (st.batch_size, st.size, st.precision, st.devices)):
      return r
  return None


# ----------------------------------------------------------------------------- report


_NAMES = {("jax", "fp32"): "JAX fp32", ("jax", "tf32"): "JAX TF32", ("jax", "bf16"): "JAX bf16",
          ("torch", "fp32"): "PyTorch eager fp32", ("torch", "tf32"): "PyTorch eager TF32",
          ("torch", "bf16"): "PyTorch eager AMP bf16",
          ("torch-compile", "fp32"): "torch.compile fp32",
          ("torch-compile", "tf32"): "torch.compile TF32",
          ("torch-compile", "bf16"): "torch.compile AMP bf16"}


def _name(r: dict[str, Any]) -> str:
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
      out[f"{mode}/{batch}"] = {"jax": _name(bj), "jax_samples_per_s": bj["samples_per_s"],
                                "torch": _name(bt), "torch_samples_per_s": bt["samples_per_s"],
                                "speedup": bj["samples_per_s"] / bt["samples_per_s"]}
  return out


def render_markdown(report: dict[str, Any], command: str) -> str:
  """The BENCHMARKS.md section: device, versions, tables, ratios, scaling, bf16 check."""
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
    if not rows:
      continue
    lines += [f"## {what}", "", "| configuration | batch | samples/s | ms/step | conv TFLOP/s "
              "| first call s |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["batch_size"], r["framework"], r["precision"])):
      lines.append(_row(r, r["batch_size"]))
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
  scene = [r for r in report["results"] if r["section"] == "scene"]
  if scene:
    lines += [f"## Whole-scene inference ({cfg['scene_size']}x{cfg['scene_size']}, batch "
              f"{cfg['scene_batch']})", "", "| configuration | PAN Mpixel/s | ms/scene | "
              "first call s |", "|---|---|---|---|"]
    for r in scene:
      if r["status"] != "ok":
        lines.append(f"| {_name(r)} | failed: {_error(r)} | | |")
        continue
      mpix = r["samples_per_s"] * r["size"] ** 2 / 1e6
      lines.append(f"| {_name(r)} | {mpix:.2f} | {1e3 * r['step_time_median_s']:.1f} | "
                   f"{r['first_step_s']:.1f} |")
    lines.append("")
  scaling = [r for r in report["results"] if r["section"] == "scaling" and r["status"] == "ok"]
  if scaling:
    base = scaling[0]["samples_per_s"] / scaling[0]["devices"]
    lines += [f"## Device scaling (JAX training step, {scaling[0]['precision']}, "
              f"{cfg['scaling_per_device_batch']} per device)", "",
              "| devices | global batch | samples/s | efficiency |", "|---|---|---|---|"]
    for r in scaling:
      eff = r["samples_per_s"] / (base * r["devices"])
      lines.append(f"| {r['devices']} | {r['batch_size']} | {r['samples_per_s']:.1f} | "
                   f"{eff:.0%} |")
    if dev["count"] == 1:
      lines.append("\nOne device only: no scaling measured beyond 1.")
    lines.append("")
  c = report["bf16_check"]
  lines += ["## bf16 check (same weights, same batch, eval mode, network output without lms)",
            "", f"JAX bf16 vs fp32: relative L2 error {c['jax_rel_l2_error']:.2e}, max abs "
            f"{c['jax_max_abs_error']:.2e} (output RMS {c['fp32_output_rms']:.3f}; compute dtype "
            f"{c['jax_compute_dtype']}; bound {c['bound']:.0e})."]
  if "torch_amp_rel_l2_error" in c:
    lines.append(f"PyTorch AMP vs JAX fp32: {c['torch_amp_rel_l2_error']:.2e} (output dtype "
                 f"{c['torch_amp_output_dtype']}); PyTorch fp32 vs JAX fp32: "
                 f"{c['torch_fp32_vs_jax_fp32_rel_l2']:.2e}.")
  if report["skipped"]:
    lines += ["", f"Skipped (time budget {cfg['budget_s']:.0f} s): " + "; ".join(report["skipped"])]
  failed = [r for r in report["results"] if r["status"] != "ok"]
  if failed:
    lines += ["", "Failed: " + "; ".join(f"{r['label']} {r['framework']} {r['mode']}: "
                                          f"{_error(r)}" for r in failed)]
  return "\n".join(lines) + "\n"


def _error(r: dict[str, Any]) -> str:
  return r["error"].splitlines()[-1][:120].replace("|", "/")


def _row(r: dict[str, Any], batch: int) -> str:
  if r["status"] != "ok":
    return f"| {_name(r)} | {batch} | failed: {_error(r)} | | | |"
  return (f"| {_name(r)} | {batch} | {r['samples_per_s']:.1f} | "
          f"{1e3 * r['step_time_median_s']:.1f} | {r['achieved_tflops']:.2f} | "
          f"{r['first_step_s']:.1f} |")


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> tuple[SuiteConfig, argparse.Namespace]:
  p = argparse.ArgumentParser(prog="python -m dcfnet_jax.bench_accelerator",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out-dir", default="bench_accelerator",
                 help="where accelerator.json and accelerator.md are written")
  p.add_argument("--tiny", action="store_true",
                 help="small sizes on whatever backend JAX has (the CPU check used by the tests)")
  p.add_argument("--batch-sizes", default=None, help="comma-separated (default 256,32)")
  p.add_argument("--precisions", default=None, help=f"subset of {','.join(PRECISIONS)}")
  p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
  p.add_argument("--scene-size", type=int, default=None, help="scene height/width (1024)")
  p.add_argument("--max-devices", type=int, default=None, help="scaling up to this many")
  p.add_argument("--budget-s", type=float, default=None,
                 help="seconds of measurements before the remaining items are skipped (450)")
  p.add_argument("--no-torch", action="store_true", help="JAX only")
  p.add_argument("--no-compile", action="store_true", help="no torch.compile runs")
  a = p.parse_args(argv)
  overrides: dict[str, Any] = {}
  try:
    if a.batch_sizes:
      overrides["batch_sizes"] = tuple(int(b) for b in a.batch_sizes.split(",") if b)
    if a.precisions:
      overrides["precisions"] = tuple(x for x in a.precisions.split(",") if x)
  except ValueError:
    p.error(f"--batch-sizes {a.batch_sizes!r}: expected comma-separated integers")
  bad = [x for x in overrides.get("precisions", ()) if x not in PRECISIONS]
  if bad:
    p.error(f"--precisions {a.precisions!r}: expected a subset of {','.join(PRECISIONS)}")
  if any(b < 1 for b in overrides.get("batch_sizes", (1,))):
    p.error(f"--batch-sizes {a.batch_sizes!r}: every batch size must be >= 1")
  for flag, field in (("steps", "steps"), ("scene_size", "scene_size"),
                      ("max_devices", "max_devices"), ("budget_s", "budget_s")):
    if getattr(a, flag) is not None:
      overrides[field] = getattr(a, flag)
  if a.scene_size is not None and (a.scene_size < 4 or a.scene_size % 4):
    p.error(f"--scene-size {a.scene_size}: must be a positive multiple of 4")
  if a.steps is not None and a.steps < 1:
    p.error(f"--steps {a.steps}: must be >= 1")
  if a.no_torch:
    overrides["torch"] = False
  if a.no_compile:
    overrides["torch_compile"] = False
  cfg = SuiteConfig.tiny(**overrides) if a.tiny else SuiteConfig.full(**overrides)
  return cfg, a


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the suite; 0 on success, 1 without an accelerator (and no --tiny), 2 on bad usage."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    cfg, args = parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0) and EXIT_USAGE
  backend, kind = accelerator()
  if backend == "cpu" and not args.tiny:
    print(f"No GPU or TPU: JAX's backend is the CPU ({kind}). The accelerator suite measures "
          "GPUs/TPUs; install jax with CUDA or TPU support on such a machine, or run "
          "`python -m dcfnet_jax.bench` for the CPU comparison (`--tiny` checks this command "
          "on the CPU).", file=sys.stderr)
    return EXIT_NO_ACCELERATOR
  report = run_suite(cfg, tiny=args.tiny,
                     progress=lambda m: print(m, file=sys.stderr, flush=True))
  command = "python -m dcfnet_jax.bench_accelerator " + " ".join(argv)
  out = pathlib.Path(args.out_dir)
  files.write_bytes(out / "accelerator.json", json.dumps(report, indent=1, default=str).encode())
  markdown = render_markdown(report, command.strip())
  files.write_text(out / "accelerator.md", markdown)
  print(markdown)
  print(f"wrote {out / 'accelerator.json'} and {out / 'accelerator.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
