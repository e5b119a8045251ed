"""The command line: end to end on the embedded demo data (smoke preset), and its errors."""

import json
import subprocess
import sys

import pytest

from test_train_resume import REPO, TIMEOUT, cli, subprocess_env


def _main(workdir, *flags):
  return [sys.executable, "-m", "dcfnet_jax.main", f"--config={REPO / 'configs' / 'demo.py'}",
          f"--workdir={workdir}", *flags]


def test_cli_end_to_end_on_smoke_preset(tmp_path):
  env = subprocess_env(tmp_path / "jax_cache", num_devices=2)
  workdir = tmp_path / "run"
  done = subprocess.run(cli(workdir, {}), env=env, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-4000:]
  log = done.stderr
  assert "step 4/4 | loss" in log and "samples/s | ETA" in log
  assert "validation: Q2n" in log
  report = json.loads((workdir / "report" / "test_results.json").read_text())
  # The demo's test files: 8 reduced-resolution and 4 full-resolution scenes.
  assert report["summary"]["reduced"]["EXP"]["ERGAS"]["n"] == 8
  assert report["summary"]["full"]["DiCNN1"]["HQNR"]["n"] == 4
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


@pytest.mark.parametrize("flags, message", [
    (["--config.batch_sise=4"], "batch_sise"),
    (["--config.data.train_file=/nonexistent/train.h5"],
     "FileNotFoundError: training file '/nonexistent/train.h5' (config.data.train_file) "
     "does not exist"),
    (["--config.mode=fit"], "config.mode must be"),
])
def test_cli_errors_are_clear(tmp_path, flags, message):
  env = subprocess_env(tmp_path / "jax_cache", num_devices=1)
  done = subprocess.run(_main(tmp_path / "w", *flags), env=env, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False, cwd=REPO)
  assert done.returncode != 0
  assert message in done.stderr
  assert "Traceback" not in done.stderr or "batch_sise" in message
