"""The speed-comparison tool: FLOP figures, flags and the JSON report (no timing assertions)."""

import json

import pytest

from dcfnet_jax import bench


def test_conv_flops_match_spec_table():
  # docs/dcfnet_architecture.md §8: 6.851 G / 20.498 G (C=8), 6.818 G / 20.424 G (C=4) per
  # 64x64 sample.
  assert bench.conv_flops_per_sample(8, 64, train=False) == 2 * 3_425_697_792
  assert bench.conv_flops_per_sample(4, 64, train=False) == 2 * 3_409_051_648
  assert round(bench.conv_flops_per_sample(8, 64, train=True) / 1e9, 3) == 20.498
  assert round(bench.conv_flops_per_sample(4, 64, train=True) / 1e9, 3) == 20.424
  assert bench.conv_flops_per_sample(8, 256, False) == 16 * bench.conv_flops_per_sample(8, 64, False)


@pytest.mark.parametrize("bands,size", [(4, 32), (8, 48)])
def test_conv_flops_match_torch_flop_counter(bands, size):
  torch = pytest.importorskip("torch")
  from torch.utils.flop_counter import FlopCounterMode
  from dcfnet_jax import torch_ref
  model = torch_ref.DCFNetTorch(bands).train()
  ms = torch.rand(1, bands, size // 4, size // 4)
  args = (torch.rand(1, 1, size, size), torch.rand(1, bands, size, size),
          torch_ref.make_mms_torch(ms), ms)
  counter = FlopCounterMode(display=False)
  with counter:
    model(*args)
  assert counter.get_total_flops() == bench.conv_flops_per_sample(bands, size, train=False)
  counter = FlopCounterMode(display=False)
  with counter:
    model(*args).sum().backward()
  assert counter.get_total_flops() == bench.conv_flops_per_sample(bands, size, train=True)


def _settings(argv):
  args = bench.build_parser().parse_args(argv)
  return bench.settings_from_args(args), args.json


def test_flags_parse_and_reject_bad_values(capsys):
  settings, json_path = _settings(
      ["--batch-size", "4", "--frameworks", "jax,torch", "--precision", "tf32", "--size", "32",
       "--mode", "infer", "--json", "x.json"])
  assert settings.batch_size == 4 and settings.frameworks == ("jax", "torch")
  assert settings.precision == "tf32" and settings.size == 32 and settings.mode == "infer"
  assert json_path == "x.json"
  assert _settings([])[0] == bench.BenchSettings()  # defaults: batch 32, 64x64, 8 bands
  for bad, message in ((["--frameworks", "jax,tensorflow"], "tensorflow"),
                       (["--size", "30"], "size 30"), (["--precision", "fp16"], "fp16")):
    assert bench.main(bad) == 2  # bad usage: one line, no traceback
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tiny_run_reports_every_field(tmp_path):
  frameworks = ("jax", "torch")
  try:
    import torch  # noqa: F401
  except ImportError:
    frameworks = ("jax",)
  json_path = tmp_path / "out" / "bench.json"
  json_path.parent.mkdir()  # output folders must exist (a missing one is refused)
  assert bench.main(["--batch-size", "2", "--size", "32", "--bands", "4", "--steps", "2",
                     "--warmup", "1", "--threads", "1", "--frameworks", ",".join(frameworks),
                     "--json", str(json_path)]) == 0
  saved = report = json.loads(json_path.read_text())
  assert saved["settings"]["batch_size"] == 2 and saved["settings"]["size"] == 32
  env = saved["environment"]
  for key in ("jax", "jaxlib", "jax_device", "cpu_count", "jax_default_matmul_precision",
              "xla_flags"):
    assert key in env
  assert env["jax_default_matmul_precision"] == "highest"
  if "torch" in frameworks:
    assert env["torch_num_threads"] == 1 and env["torch_allow_tf32_matmul"] is False
  results = {(r["framework"], r["mode"]): r for r in saved["results"]}
  assert set(results) == {(f, m) for f in frameworks for m in ("train", "infer")}
  for (fw, mode), r in results.items():
    assert r["status"] == "ok", r.get("error")
    assert len(r["step_times_s"]) == 2
    assert r["step_time_min_s"] <= r["step_time_median_s"] <= r["step_time_max_s"]
    assert r["samples_per_s"] == pytest.approx(2 / r["step_time_median_s"])
    assert r["conv_flops_per_step"] == 2 * bench.conv_flops_per_sample(4, 32, mode == "train")
    assert r["achieved_tflops"] > 0
    if mode == "train":
      assert r["loss"] > 0
    if fw == "jax":  # the training code's step and the predictor
      assert r["xla_flops_per_step"] > 0
  if "torch" in frameworks:
    for mode in ("train", "infer"):
      expected = (results[("jax", mode)]["step_time_median_s"]
                  / results[("torch", mode)]["step_time_median_s"])
      assert saved["time_ratio_jax_over"][mode]["jax/torch"] == pytest.approx(expected)
  assert "| jax | train |" in bench.format_table(report)


@pytest.mark.parametrize("target,framework", [("_run_torch", "torch-compile"),
                                              ("_jax_steps", "jax")])
def test_failures_are_reported_not_hidden(monkeypatch, target, framework):
  """A failing framework is a failed row (a broken training API too: no fallback hides it)."""
  def broken(*args, **kwargs):
    raise AttributeError("no compiler here")
  monkeypatch.setattr(bench, target, broken)
  report = bench.run_benchmark(bench.BenchSettings(
      batch_size=1, size=16, bands=4, steps=1, warmup=1, frameworks=(framework,),
      mode="infer"))
  [r] = report["results"]
  assert r["status"] == "failed" and "no compiler here" in r["error"]
  assert "failed: AttributeError: no compiler here" in bench.format_table(report)
