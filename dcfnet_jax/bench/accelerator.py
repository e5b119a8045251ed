"""The accelerator suite: JAX fp32/TF32/bf16 against the PyTorch reference on a GPU or TPU.

  python -m dcfnet_jax.bench --suite accelerator --out-dir bench_gpu      # on a GPU/TPU machine
  python -m dcfnet_jax.bench --suite accelerator --tiny --out-dir /tmp/t  # the CPU check

On the accelerator, in one process and in this order (most important first), with the paper's
training shape (64x64 patches, 8 bands):
  1. training step and inference at batch 256: JAX in fp32, TF32 and bf16 (bfloat16 compute,
     float32 parameters), PyTorch eager in fp32, TF32 and AMP (bf16 autocast), and
     torch.compile in TF32 and AMP;
  2. BatchNorm folding: JAX inference at batch 256 (TF32) with the other folding setting than
     the predictor's default, so that both are measured;
  3. inference on whole 1024x1024 scenes (Mpixel/s of PAN);
  4. 1 -> N device scaling of the JAX training step (per-device batch fixed);
  5. the same as 1. at batch 32, then torch.compile in fp32 and at batch 32 if time is left;
  6. a bf16 check: the predictor's output (network without lms) for the same weights and batch
     in fp32 and bf16, and PyTorch AMP against fp32 (proves bf16 ran and bounds its error).
Each measurement is `runner.run_benchmark` (median of timed steps, compilation apart), so the
numbers mean what `python -m dcfnet_jax.bench` numbers mean. A time budget (default 450 s of
measurements, under 8 minutes with start-up) skips the remaining items, and says so, rather
than running over. Nothing is fetched from the network.

`--tiny` is the CPU check of the command itself (the tests run it): batch 2, 16x16 patches, a
32x32 scene, one timed step, scaling of the *inference* over up to 2 devices (a second training
compilation would double the check's time), one torch thread, no torch.compile.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from dcfnet_jax import convert, inference
from dcfnet_jax.bench import frameworks, measure, runner
from dcfnet_jax.bench.measure import BenchSettings
from dcfnet_jax.train_state import initial_weights, merge_model, model_spec

PRECISIONS = measure.PRECISIONS
# bf16 vs fp32 outputs of one network on one batch: relative L2 error bound. bfloat16 keeps 8
# significant bits (relative rounding 2^-9 ~ 2e-3 per operation); through ~70 layers with
# BatchNorm the measured error is ~2.5e-3 on random weights (docs/bench_accelerator.md); 5e-2
# fails only when something is broken, and an error below BF16_MIN_ERROR means bf16 did not
# run (fp32 against fp32 differs by ~1e-7 at most).
BF16_REL_ERROR_BOUND = 5e-2
BF16_MIN_ERROR = 1e-4


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
  scaling_mode: str = "train"
  max_devices: int = 0  # 0: all
  fold_check: bool = True
  torch: bool = True
  torch_compile: bool = True
  torch_threads: int = 0  # 0: all cores
  budget_s: float = 450.0

  @classmethod
  def full(cls, **overrides) -> SuiteConfig:
    return dataclasses.replace(cls(), **overrides)

  @classmethod
  def tiny(cls, **overrides) -> SuiteConfig:
    base = cls(batch_sizes=(2,), size=16, steps=1, warmup=1, scene_size=32,
               scaling_per_device_batch=2, scaling_precision="fp32", scaling_mode="infer",
               max_devices=2, torch_compile=False, torch_threads=1, budget_s=600.0)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Item:
  """One measurement: a `BenchSettings` plus what it is for in the report."""
  section: str  # "patches", "folding", "scene" or "scaling"
  settings: BenchSettings
  label: str


def scaling_precision(cfg: SuiteConfig) -> str:
  """The precision of the scaling and folding runs: the configured one if measured at all."""
  return cfg.scaling_precision if cfg.scaling_precision in cfg.precisions else cfg.precisions[0]


def plan(cfg: SuiteConfig, torch_ok: bool, device_count: int, backend: str) -> list[Item]:
  """The measurements in priority order (later ones are the first to be cut by the budget)."""
  def settings(**kw) -> BenchSettings:
    base = dict(size=cfg.size, bands=cfg.bands, steps=cfg.steps, warmup=cfg.warmup,
                threads=cfg.torch_threads)
    base.update(kw)
    return BenchSettings(**base)

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
  folding = []
  if cfg.fold_check:  # the predictor's default is measured in `first`; here the other setting
    other = backend == "cpu"  # default: off on the CPU, on elsewhere
    folding.append(Item("folding", settings(batch_size=largest, precision=scaling_precision(cfg),
                                            frameworks=("jax",), mode="infer", fold=other),
                        f"batch {largest}, {scaling_precision(cfg)}, "
                        f"BatchNorm {'folded' if other else 'not folded'}"))
  scene = []
  for prec in cfg.precisions:
    fws = ("jax",) + (("torch",) if torch_ok and prec != "fp32" else ())
    scene.append(Item("scene", settings(batch_size=cfg.scene_batch, size=cfg.scene_size,
                                        precision=prec, frameworks=fws, mode="infer",
                                        steps=max(1, cfg.steps // 4), warmup=1),
                      f"scene {cfg.scene_size}x{cfg.scene_size}, {prec}"))
  scaling = []
  n_max = device_count if not cfg.max_devices else min(cfg.max_devices, device_count)
  n = 1
  while n <= n_max:
    scaling.append(Item("scaling", settings(batch_size=cfg.scaling_per_device_batch * n,
                                            precision=scaling_precision(cfg),
                                            frameworks=("jax",), mode=cfg.scaling_mode,
                                            devices=n),
                        f"{n} device(s)"))
    n *= 2
  # Headline (largest batch) first, then folding, scenes and scaling, then smaller batches.
  return first + folding + scene + scaling + smaller + later


# ----------------------------------------------------------------------------- environment


def accelerator() -> tuple[str, str]:
  """(JAX backend, device kind), e.g. ("gpu", "NVIDIA H100 80GB HBM3")."""
  return jax.default_backend(), jax.devices()[0].device_kind


def torch_status(backend: str, tiny: bool) -> tuple[bool, str]:
  """Whether the PyTorch reference can run beside JAX here, and why not when it cannot."""
  try:
    torch, _ = frameworks.import_torch()
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


def bf16_check(size: int, bands: int, *, batch: int = 2, seed: int = 0, torch_ok: bool = True
               ) -> dict[str, Any]:
  """The predictor's eval-mode output in fp32 and in bf16 for the same weights and batch.

  The models are the benchmark's (`frameworks.bench_config`: bf16 = `config.half_precision`,
  bfloat16 compute with float32 parameters), run by `inference.Predictor` without the residual
  `lms` (it would hide the network's error) and without clipping; fp32 at matmul precision
  "highest". The error is relative L2 over the whole output; with torch, PyTorch AMP (bf16
  autocast) on the same weights is compared with the same fp32 reference.
  """
  settings = BenchSettings(batch_size=batch, size=size, bands=bands, seed=seed)
  batch_np = measure.make_batch(settings)
  mesh = frameworks.bench_mesh(1)
  config32 = frameworks.bench_config(settings)
  config16 = frameworks.bench_config(dataclasses.replace(settings, precision="bf16"))
  # float32 parameters either way: one initialisation serves both compute dtypes.
  params, model_state = initial_weights(config16, mesh)
  outputs, dtypes = {}, {}
  for name, config in (("fp32", config32), ("bf16", config16)):
    spec = dataclasses.replace(model_spec(config), residual=False)
    predictor = inference.Predictor(spec, img_range=1.0, mesh=mesh, clip=False,
                                    precision="highest" if name == "fp32" else None)
    outputs[name] = np.asarray(predictor(params, model_state, batch_np), np.float64)
    dtypes[name] = str(np.dtype(merge_model(spec, params, model_state).conv1.dtype))
  ref = outputs["fp32"]
  out = {"batch": batch, "size": size, "bands": bands, "bound": BF16_REL_ERROR_BOUND,
         "min_error": BF16_MIN_ERROR, "jax_compute_dtype": dtypes["bf16"],
         "jax_fp32_compute_dtype": dtypes["fp32"], "fold": predictor.fold,
         "jax_rel_l2_error": _relative_error(outputs["bf16"], ref),
         "jax_max_abs_error": float(np.max(np.abs(outputs["bf16"] - ref))),
         "fp32_output_rms": float(np.sqrt(np.mean(ref ** 2)))}
  if torch_ok:
    model = merge_model(model_spec(config32), params, model_state)
    out.update(_torch_amp_check(model, batch_np, bands, ref))
  return out


def _torch_amp_check(model, batch_np, bands, ref) -> dict[str, Any]:
  """The PyTorch reference on the same weights, fp32 and under bf16 autocast, against `ref`."""
  torch, torch_ref = frameworks.import_torch()
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  net = torch_ref.DCFNetTorch(bands)
  net.load_state_dict(convert.to_torch(model))
  net = net.to(device).eval()
  tb = frameworks.to_torch_batch(batch_np, device)
  with torch.inference_mode(), frameworks.torch_precision("fp32"):
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
  """Runs the plan within the budget; returns the whole report (`accelerator_report`)."""
  backend, kind = accelerator()
  torch_ok, torch_note = torch_status(backend, tiny)
  torch_ok = torch_ok and cfg.torch
  if not cfg.torch:
    torch_note = "PyTorch comparison switched off (--no-torch)"
  progress(f"JAX {jax.__version__} on {backend} ({kind}, {jax.device_count()} device(s)); "
           f"{torch_note}")
  items = plan(cfg, torch_ok, jax.device_count(), backend)
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
    report = runner.run_benchmark(item.settings, progress=lambda m: progress("  " + m.strip()))
    st = item.settings
    for r in report["results"]:
      records.append({"section": item.section, "label": item.label,
                      "batch_size": st.batch_size, "size": st.size, "precision": st.precision,
                      "devices": st.devices, "fold_setting": st.fold, **r})
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
        and (r["batch_size"], r["size"], r["precision"], r["devices"], r["fold_setting"])
        == (st.batch_size, st.size, st.precision, st.devices, st.fold)):
      return r
  return None
