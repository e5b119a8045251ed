"""The accelerator suite (`python -m dcfnet_jax.bench --suite accelerator`): plan, messages,
report, and the tiny CPU run.

No timing assertions: the tiny run checks that every section is produced from real runs and
that bf16 really ran (its output differs from fp32) within the stated error bound.
"""

import json
import sys

import pytest

from dcfnet_jax.bench import accelerator as acc
from dcfnet_jax.bench import accelerator_report, measure
from dcfnet_jax.bench import cli as bench_cli


def _suite(*argv):
  return bench_cli.main(["--suite", "accelerator", *argv])


def test_plan_orders_best_pytorch_settings_first_and_scales_over_devices():
  cfg = acc.SuiteConfig.full()
  items = acc.plan(cfg, torch_ok=True, device_count=4, backend="gpu")
  labels = [(i.section, i.label, i.settings.frameworks) for i in items]
  compiled = [i for i in items if i.settings.frameworks == ("torch-compile",)]
  # TF32 and AMP at batch 256 come before the folding, scene and scaling items; the rest last.
  first_other = next(k for k, i in enumerate(items) if i.section != "patches")
  early = {(i.settings.precision, i.settings.batch_size) for i in items[:first_other]
           if i in compiled}
  assert early == {("tf32", 256), ("bf16", 256)}
  assert all(items.index(i) > first_other for i in compiled
             if (i.settings.precision, i.settings.batch_size) not in early)
  patches = [i for i in items if i.section == "patches" and "jax" in i.settings.frameworks]
  assert {(i.settings.batch_size, i.settings.precision) for i in patches} == {
      (b, p) for b in (256, 32) for p in ("fp32", "tf32", "bf16")}
  assert all(i.settings.size == 64 and i.settings.bands == 8 for i in patches)
  assert all(i.settings.fold is None for i in patches)  # the predictor's default
  # The headline batch, then folding, scenes and scaling, then batch 32: the budget cuts the
  # least useful.
  order = [(i.section, i.settings.batch_size) for i in items]
  assert order.index(("folding", 256)) < order.index(("scene", 1)) < order.index(
      ("scaling", 256)) < order.index(("patches", 32))
  [folding] = [i.settings for i in items if i.section == "folding"]
  assert folding.fold is False and folding.mode == "infer"  # GPU default on: measure off
  assert [i.settings.fold for i in acc.plan(cfg, True, 1, "cpu") if i.section == "folding"
          ] == [True]
  scaling = [i.settings for i in items if i.section == "scaling"]
  assert [(s.devices, s.batch_size, s.mode) for s in scaling] == [
      (1, 256, "train"), (2, 512, "train"), (4, 1024, "train")]
  scene = [i.settings for i in items if i.section == "scene"]
  assert {s.size for s in scene} == {1024} and all(s.mode == "infer" for s in scene)
  assert len(labels) == len(set(labels))


def test_plan_without_torch_is_jax_only():
  items = acc.plan(acc.SuiteConfig.full(), torch_ok=False, device_count=1, backend="tpu")
  assert {i.settings.frameworks for i in items} == {("jax",)}
  assert [i.settings.devices for i in items if i.section == "scaling"] == [1]


def test_missing_torch_is_explained(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  ok, note = acc.torch_status("gpu", tiny=False)
  assert not ok and "torch is not installed: JAX only" in note


def test_no_accelerator_is_a_clear_message_not_a_run(capsys, tmp_path):
  if acc.accelerator()[0] != "cpu":
    pytest.skip("this machine has an accelerator")
  assert _suite("--out-dir", str(tmp_path)) == 1
  err = capsys.readouterr().err
  assert "No GPU or TPU" in err and "--tiny" in err and "Traceback" not in err
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["--precisions", "fp16"], "--precisions 'fp16'"),
    (["--batch-sizes", "x"], "--batch-sizes 'x'"),
    (["--scene-size", "30"], "--scene-size 30"),
    (["--steps", "0"], "--steps 0"),
    (["--batch-size", "4"], "--batch-size: not a flag of --suite accelerator")])
def test_bad_flags_exit_2(argv, message, capsys):
  assert _suite("--tiny", *argv) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_budget_skips_and_report_renders(monkeypatch):
  """Orchestration and Markdown on stand-in measurements (no network is run here)."""
  calls = []

  def fake_run(settings, progress=None):
    calls.append(settings)
    results = []
    for fw in settings.frameworks:
      for mode in (("train", "infer") if settings.mode == "both" else (settings.mode,)):
        folded = fw == "jax" and mode == "infer" and settings.fold is not False  # GPU default
        speed = ({"jax": 3.0, "torch": 2.0, "torch-compile": 2.5}[fw] * settings.devices
                 * {"fp32": 1, "tf32": 2, "bf16": 3}[settings.precision] * (1.5 if folded else 1))
        extra = {"fold": folded} if fw == "jax" and mode == "infer" else {}
        results.append({"framework": fw, "mode": mode, "status": "ok",
                        "samples_per_s": speed * 10, "step_time_median_s": 0.1,
                        "achieved_tflops": 1.0, "first_step_s": 1.0, **extra})
    return {"results": results, "environment": {"jax": "x", "jaxlib": "x", "flax": "x",
                                                "python": "3"}}

  monkeypatch.setattr(acc.runner, "run_benchmark", fake_run)
  monkeypatch.setattr(acc, "bf16_check", lambda *a, **k: {
      "jax_rel_l2_error": 1e-2, "jax_max_abs_error": 1e-3, "fp32_output_rms": 0.1,
      "jax_compute_dtype": "bfloat16", "bound": acc.BF16_REL_ERROR_BOUND,
      "min_error": acc.BF16_MIN_ERROR})
  monkeypatch.setattr(acc, "torch_status", lambda backend, tiny: (True, "torch (stand-in)"))
  monkeypatch.setattr(acc, "accelerator", lambda: ("gpu", "Stand-in GPU"))
  cfg = acc.SuiteConfig.full(budget_s=1e9, max_devices=2)
  report = acc.run_suite(cfg, tiny=False, progress=lambda m: None)
  # Scaling on 1 device (tf32, 256 per device) is the batch-256 TF32 patches run: not rerun.
  assert sum(1 for s in calls if s.devices == 1 and s.mode == "train") == 0
  assert [r["devices"] for r in report["results"] if r["section"] == "scaling"] == [1, 2]
  md = accelerator_report.render_markdown(report, "python -m dcfnet_jax.bench --suite accelerator")
  assert md.startswith("# Accelerator benchmark: Stand-in GPU\n")
  for heading in ("## Training step", "## Inference", "## Best JAX vs best PyTorch",
                  "## BatchNorm folding (JAX inference, batch 256, tf32)",
                  "## Whole-scene inference (1024x1024", "## Device scaling (JAX training step",
                  "## bf16 check"):
    assert heading in md, heading
  assert ("| train, 256 | JAX bf16 (90/s) | torch.compile AMP bf16 (75/s) | **1.20×** |"
          in md)
  assert "| infer, 32 | JAX bf16 (135/s) | torch.compile AMP bf16 (75/s) | **1.80×** |" in md
  assert "| 2 | 512 | 120.0 | 100% |" in md
  assert "Folded / not folded: **1.500×** samples/s (the predictor's default on this " \
         "backend: folded)." in md

  calls.clear()
  skipped = acc.run_suite(acc.SuiteConfig.full(budget_s=-1.0), tiny=False,
                          progress=lambda m: None)
  assert not calls and skipped["results"] == [] and len(skipped["skipped"]) > 10
  assert "Skipped (time budget" in accelerator_report.render_markdown(skipped, "cmd")


def test_tiny_run_end_to_end_with_real_bf16(tmp_path, capsys):
  """The real command in tiny mode: bf16 patches (training step and inference), folding,
  scene, 1->2 device scaling, the bf16 check; JSON and Markdown complete."""
  out = tmp_path / "acc"
  assert _suite("--tiny", "--precisions", "bf16", "--out-dir", str(out)) == 0
  report = json.loads((out / "accelerator.json").read_text())
  md = (out / "accelerator.md").read_text()
  assert md == capsys.readouterr().out
  assert report["tiny"] and report["device"]["kind"] in md
  assert "tiny CPU check of the command, not a benchmark" in md
  for heading in ("## Training step", "## Inference", "## BatchNorm folding (JAX inference",
                  "## Whole-scene inference (32x32", "## Device scaling (JAX inference",
                  "## bf16 check"):
    assert heading in md, heading
  bad = [r for r in report["results"] if r["status"] != "ok"]
  assert not bad, bad
  got = {(r["section"], r["framework"], r["mode"]) for r in report["results"]}
  assert {("patches", "jax", "train"), ("patches", "jax", "infer"), ("folding", "jax", "infer"),
          ("scene", "jax", "infer"), ("scaling", "jax", "infer")} <= got
  assert [r["devices"] for r in report["results"] if r["section"] == "scaling"] == [1, 2]
  assert {r["fold"] for r in report["results"] if r["mode"] == "infer"
          and r["framework"] == "jax"} == {False, True}
  for r in report["results"]:
    assert r["precision"] == "bf16" and r["samples_per_s"] > 0 and len(r["step_times_s"]) == 1
    train = r["mode"] == "train"
    assert r["conv_flops_per_step"] == r["batch_size"] * measure.conv_flops_per_sample(
        8, r["size"], train)
    assert (r["loss"] > 0) if train else "loss" not in r
    if r["framework"] == "jax":
      assert r["xla_flops_per_step"] > 0
    if r["section"] == "scene":
      assert r["size"] == 32 and r["batch_size"] == 1
  assert report["environment"]["jax_compute_dtype"] == "bfloat16"
  check = report["bf16_check"]
  assert check["jax_compute_dtype"] == "bfloat16" and check["jax_fp32_compute_dtype"] == "float32"
  # bf16 really ran: its output differs from fp32 ...
  assert check["jax_rel_l2_error"] > acc.BF16_MIN_ERROR
  # ... and stays within the stated bound.
  assert check["jax_rel_l2_error"] < acc.BF16_REL_ERROR_BOUND
  if "torch_amp_rel_l2_error" in check:
    assert check["torch_amp_output_dtype"] == "bfloat16"
    assert acc.BF16_MIN_ERROR < check["torch_amp_rel_l2_error"] < acc.BF16_REL_ERROR_BOUND
    assert check["torch_fp32_vs_jax_fp32_rel_l2"] < 1e-5  # same weights, same network
  assert measure.BenchSettings().devices == 1
