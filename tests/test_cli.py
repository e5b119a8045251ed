"""The one command-line convention (dcfnet_jax.cli) across every tool, and the atomic writer."""

import configparser
import importlib
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import file_modes
from dcfnet_jax import cli, config_lib, files
from dcfnet_jax.errors import InputError, RunError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
  parser = configparser.ConfigParser()
  parser.read(REPO / "setup.cfg")
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict((part.strip() for part in line.split("=")) for line in lines)


SCRIPTS = _console_scripts()
TOOLS = sorted({target.split(":")[0] for target in SCRIPTS.values()} | {"dcfnet_jax.data.make_demo"})


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_follows_the_convention(module, capsys):
  main = importlib.import_module(module).main
  assert main(["--help"]) == 0
  out = capsys.readouterr().out
  assert f"python -m {module.replace('.cli', '')}" in out or f"python -m {module}" in out
  assert "--verbose" in out and "--quiet" in out  # one logging style
  assert main(["--no-such-flag"]) == 2  # usage error
  assert "Traceback" not in capsys.readouterr().err


def test_console_scripts_are_installed_and_run():
  assert set(SCRIPTS) >= {"dcfnet-train", "dcfnet-evaluate", "dcfnet-pansharpen",
                          "dcfnet-compare", "dcfnet-convert", "dcfnet-bench"}
  script = shutil.which("dcfnet-evaluate", path=str(pathlib.Path(sys.executable).parent))
  if script is None:
    pytest.skip("the package is not installed in this environment (pip install -e .)")
  done = subprocess.run([script, "--fused", "/nonexistent.h5", "--reference", "/x.h5",
                         "--sensor", "wv3"], capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 2 and "no such file: /nonexistent.h5" in done.stderr
  assert "Traceback" not in done.stderr


def test_exit_codes_and_traceback_switch(monkeypatch, capsys):
  parser = cli.make_parser("dcfnet_jax.example", "An example.")

  def failing(error):
    def run(args):
      raise error
    return run

  assert cli.run_main(parser, failing(InputError("bad --x")), []) == 2
  assert cli.run_main(parser, failing(FileNotFoundError("no file")), []) == 2
  assert cli.run_main(parser, failing(RunError("disk full")), []) == 1
  assert cli.run_main(parser, failing(OSError(28, "No space left on device")), []) == 1
  err = capsys.readouterr().err
  assert "error: bad --x" in err and "error: disk full" in err and "Traceback" not in err
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  assert cli.run_main(parser, failing(InputError("bad --x")), []) == 2
  assert "Traceback" in capsys.readouterr().err
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    cli.run_main(parser, failing(ZeroDivisionError("bug")), [])


def test_config_by_name_file_presets_and_overrides():
  by_name = config_lib.load("wv3:pnn,smoke", [("batch_size", "16"), ("model.residual", "true"),
                                               ("data.train_file", "123.h5")])
  by_file = config_lib.load(str(REPO / "configs" / "wv3.py") + ":pnn,smoke",
                            [("batch_size", "16"), ("model.residual", "true"),
                             ("data.train_file", "123.h5")])
  assert by_name.to_dict() == by_file.to_dict()
  assert by_name.model.name == "pnn" and by_name.batch_size == 16 and by_name.model.residual
  assert by_name.data.train_file == "123.h5"
  for name in config_lib.CONFIG_NAMES:
    assert config_lib.load(name).data.num_bands in (4, 8)
  for spec, overrides, message in (
      ("wv3", [("batch_sise", "4")], "unknown field"),
      ("wv3", [("batch_size", "four")], "invalid literal"),
      ("wv3", [("model.residual", "maybe")], "expected true or false"),
      ("wv3", [("eval", "1")], "a group of fields"),
      ("configs/none.py", [], "no such config file"),
      ("wv9", [], "unknown config 'wv9'")):
    with pytest.raises(InputError, match=message):
      config_lib.load(spec, overrides)


# ---------------------------------------------------------------------------------------------
# The atomic writer and the umask


def assert_umask_modes(folder: pathlib.Path, umask: int) -> None:
  """Every file below `folder` has the mode a new file gets under `umask` (0644 for 022)."""
  expected = 0o666 & ~umask
  modes = file_modes([folder])
  wrong = {k: oct(v) for k, v in modes.items() if v != expected}
  assert modes and not wrong, f"expected {oct(expected)}: {wrong}"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writers_honour_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    assert files.current_umask() == umask
    files.write_text(tmp_path / "a" / "t.txt", "x")
    files.write_json(tmp_path / "j.json", {"a": 1})
    files.save_npz(tmp_path / "n.npz", {"x": np.zeros(2)})
    files.save_arrays_h5(tmp_path / "h.h5", {"x": np.zeros(2)}, note="n")
  finally:
    os.umask(old)
  assert_umask_modes(tmp_path, umask)


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path):
  target = tmp_path / "out.bin"
  files.write_bytes(target, b"old")
  with pytest.raises(RuntimeError, match="midway"):
    with files.atomic_path(target) as tmp:
      tmp.write_bytes(b"half")
      raise RuntimeError("midway")
  assert target.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left


def test_cli_outputs_honour_the_umask(tmp_path, umask022):
  """h5, JSON and npz writers of classical, evaluate, bench and make_dataset under umask 022:
  0644. (Training workdirs, compare, convert and pansharpen outputs are checked in their own
  tests: test_train_loop, test_compare, test_convert, test_pansharpen.)"""
  demo = REPO / "dcfnet_jax" / "data" / "demo"
  out = tmp_path / "out"
  out.mkdir()
  assert importlib.import_module("dcfnet_jax.classical.cli").main(
      ["exp", "--input", str(demo / "test_reduced.h5"), "--out", str(out / "exp.h5")]) == 0
  (out / "eval").mkdir()  # output folders must exist (a missing one is refused)
  assert importlib.import_module("dcfnet_jax.evaluate").main(
      ["--fused", str(out / "exp.h5"), "--reference", str(demo / "test_reduced.h5"),
       "--sensor", "none", "--bits", "8", "--json", str(out / "eval" / "e.json")]) == 0
  assert importlib.import_module("dcfnet_jax.bench").main(
      ["--batch-size", "1", "--size", "16", "--bands", "4", "--steps", "1", "--warmup", "1",
       "--frameworks", "jax", "--mode", "infer", "--json", str(out / "bench.json")]) == 0
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "scene.npz", ms=rng.integers(1, 255, (48, 48, 4)).astype(np.uint8),
           pan=rng.integers(1, 255, (192, 192)).astype(np.uint8))
  assert importlib.import_module("dcfnet_jax.data.make_dataset").main(
      ["--ms", str(tmp_path / "scene.npz"), "--out", str(out / "made"), "--sensor", "none",
       "--bits", "8", "--patch", "16", "--stride", "16", "--test-size", "32",
       "--full-size", "64", "--guard", "4"]) == 0
  written = {str(pathlib.Path(p).relative_to(out)) for p in file_modes([out])}
  assert {"exp.h5", "eval/e.json", "bench.json", "made/train.h5", "made/manifest.json"} <= written
  umask022(out)
