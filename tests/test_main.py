"""The command line: end to end on the embedded demo data (smoke preset), and its errors."""

import json
import subprocess
import sys

import pytest

from test_train_resume import REPO, TIMEOUT, cli, subprocess_env


def _main(workdir, config, *flags):
  return [sys.executable, "-m", "dcfnet_jax.main", f"--config={config}",
          f"--workdir={workdir}", *flags]


def test_cli_end_to_end_on_smoke_preset(tmp_path):
  """By config name, from a folder without the repository's configs/ (as a pip user runs it)."""
  env = subprocess_env(tmp_path / "jax_cache", num_devices=2)
  workdir = tmp_path / "run"
  done = subprocess.run(_main(workdir, "demo:smoke", "--config.model.name=dicnn1"), env=env,
                        capture_output=True, text=True, timeout=TIMEOUT, check=False,
                        cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-4000:]
  log = done.stderr
  assert "step 4/4 | loss" in log and "samples/s | ETA" in log
  assert "validation: Q2n" in log
  report = json.loads((workdir / "report" / "test_results.json").read_text())
  # The demo's test files: 8 reduced-resolution and 4 full-resolution scenes.
  assert report["summary"]["reduced"]["EXP"]["ERGAS"]["n"] == 8
  assert report["summary"]["full"]["DiCNN1"]["HQNR"]["n"] == 4
  assert report["summary"]["full"]["DiCNN1"]["D_rho"]["n"] == 4  # and the reprojection family
  assert (workdir / "report" / "test_results.md").read_text().count("| EXP |") == 2
  export = workdir / "export" / "dicnn1_none.npz"
  assert export.is_file() and export.with_suffix(".json").is_file()

  # Mode "evaluate" on the exported file reproduces the test numbers.
  again = tmp_path / "again"
  done = subprocess.run(cli(again, {}, "--config.mode=evaluate", f"--checkpoint={export}"),
                        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                        cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-4000:]
  second = json.loads((again / "report" / "test_results.json").read_text())
  for res in ("reduced", "full"):
    for key, stats in report["summary"][res]["DiCNN1"].items():
      assert second["summary"][res]["DiCNN1"][key]["mean"] == pytest.approx(stats["mean"],
                                                                           rel=1e-6)


DEMO_FILE = str(REPO / "configs" / "demo.py")


@pytest.mark.parametrize("config, flags, message", [
    (DEMO_FILE, ["--config.batch_sise=4"], "--config.batch_sise: unknown field"),
    (DEMO_FILE, ["--config.batch_size=four"], "--config.batch_size=four: invalid literal"),
    (DEMO_FILE, ["--config.data.train_file=/nonexistent/train.h5"],
     "error: training file '/nonexistent/train.h5' (config.data.train_file) does not exist"),
    ("demo", ["--config.mode=fit"], "config.mode must be one of"),
    ("wv3", [], "no training file: set --config.data.train_file=PATH"),
    ("wv9", [], "unknown config 'wv9'"),
    ("demo:smok", [], "unknown config preset 'smok'"),
    ("demo", ["--checkpoint=x.npz"], "--checkpoint is for --config.mode=evaluate"),
])
def test_cli_errors_are_clear(tmp_path, config, flags, message):
  """Bad input or usage: exit status 2, one line naming the problem, no traceback."""
  env = subprocess_env(tmp_path / "jax_cache", num_devices=1)
  done = subprocess.run(_main(tmp_path / "w", config, *flags), env=env, capture_output=True,
                        text=True, timeout=TIMEOUT, check=False, cwd=tmp_path)
  assert done.returncode == 2, done.stderr[-2000:]
  assert message in done.stderr
  assert "Traceback" not in done.stderr
  if config == "wv3":  # the environment variable shows the traceback of an expected error
    traced = subprocess.run(_main(tmp_path / "w", config, *flags),
                            env=dict(env, DCFNET_TRACEBACK="1"), capture_output=True, text=True,
                            timeout=TIMEOUT, check=False, cwd=tmp_path)
    assert traced.returncode == 2 and "Traceback" in traced.stderr
