"""`dcfnet_jax.compare` on the demo data: classical methods and one briefly trained network."""

import json
import os
import pathlib

import pytest
from PIL import Image

from conftest import file_modes
from dcfnet_jax import compare, config_lib, metrics
from dcfnet_jax.metrics import host


FR_ALL = metrics.FR_KEYS + metrics.REPROJECTION_KEYS


def _config():
  config = config_lib.get_config("demo")
  with config.unlocked():
    config.data.valid_file = ""  # no validation pass in the 2-step training
  config.lock()
  return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("compare")
  old = os.umask(0o022)
  try:
    result = compare.run(_config(), ["exp", "mtf_glp_fs", "dicnn1"], out, train_steps=2,
                         max_images=1, figure_crop=64, save_fused=True)
  finally:
    os.umask(old)
  return out, result


def test_writes_paper_style_table_and_figures(first_run):
  out, result = first_run
  modes = file_modes([out])
  assert modes and set(modes.values()) == {0o644}, modes  # written under umask 022
  assert (out / "fused" / "glp_reg__mtf_glp_fs_reduced.h5").is_file()
  for name in ("comparison.md", "comparison.tex", "comparison.csv", "comparison.json",
               "figure_reduced.png", "figure_full.png"):
    assert (out / name).is_file(), name
  md = (out / "comparison.md").read_text()
  for label in ("EXP", "GLP-Reg (MTF-GLP-FS)", "DiCNN1", "Reduced resolution",
                "Full resolution", "trained only 2 steps"):
    assert label in md, label
  assert "**" in md and r"\textbf" in (out / "comparison.tex").read_text()
  rows = (out / "comparison.csv").read_text().splitlines()
  # header + 3 methods × (5 reduced-resolution + 10 full-resolution indices), one per row
  assert len(rows) == 1 + 3 * (len(metrics.RR_KEYS) + len(FR_ALL))
  # Full resolution: the toolbox's family, then the reprojection protocol's (demo: 4 bands).
  assert ("| Method | D_lambda ↓ | D_s ↓ | QNR ↑ | D_lambda_K ↓ | HQNR ↑ | R-Q4 ↑ | R-Q ↑ | "
          "R-SAM ↓ | R-ERGAS ↓ | D_rho ↓ |") in md
  assert r"$D_\rho$$\downarrow$" in (out / "comparison.tex").read_text()
  summary = result["summary"]
  assert set(summary) == {"reduced", "full"}
  assert all(tuple(summary["full"][m]) == FR_ALL for m in summary["full"])
  assert set(summary["reduced"]) == {"EXP", "GLP-Reg (MTF-GLP-FS)", "DiCNN1"}
  # Detail injection helps on real data; D_lambda of EXP is 0 by definition.
  assert summary["reduced"]["GLP-Reg (MTF-GLP-FS)"]["SAM"]["mean"] < \
      summary["reduced"]["EXP"]["SAM"]["mean"]
  assert summary["full"]["EXP"]["D_lambda"]["mean"] == pytest.approx(0.0, abs=1e-12)
  record = json.loads((out / "comparison.json").read_text())
  assert record["metadata"]["num_images"] == {"reduced": 1, "full": 1}
  figure = Image.open(out / "figure_reduced.png")
  assert figure.width >= 4 * 128 and figure.height > 2 * 128  # GT + 3 methods, 2 rows


def test_exp_row_equals_the_indices_of_the_files_lms(first_run):
  _, result = first_run
  config = _config()
  reduced, full = compare.load_test_sets(config, max_images=1)
  expected = {"reduced": host.reduced_resolution(reduced.arrays["lms"], reduced.arrays["gt"],
                                                 **host.settings_from_config(config))}
  a = full.arrays
  expected["full"] = host.full_resolution(a["lms"], a["ms"], a["pan"], lms=a["lms"],
                                          **host.fr_settings_from_config(config))
  assert tuple(expected["full"]) == FR_ALL
  for res, values in expected.items():
    for key, value in values.items():
      assert result["summary"][res]["EXP"][key]["mean"] == pytest.approx(value[0], rel=1e-12)


def test_checkpoints_are_used_and_missing_networks_are_skipped(first_run, tmp_path):
  out, first = first_run
  export = out / "train" / "dicnn1" / "export" / "dicnn1_none.npz"
  assert export.is_file()
  result = compare.run(_config(), ["dicnn1", "pnn"], tmp_path,
                       checkpoints={"dicnn1": str(export)}, max_images=1)
  for res in ("reduced", "full"):
    for key, stat in result["summary"][res]["DiCNN1"].items():
      assert stat["mean"] == pytest.approx(first["summary"][res]["DiCNN1"][key]["mean"],
                                           rel=1e-6, abs=1e-9)
  assert "PNN" in result["skipped"] and "PNN" not in result["summary"]["reduced"]
  assert "PNN: skipped" in (tmp_path / "comparison.md").read_text()
  # A checkpoint of another network is refused with a note, not a crash.
  bad = compare.run(_config(), ["pannet"], tmp_path / "bad", checkpoints={"pannet": str(export)},
                    max_images=1)
  assert "holds a 'dicnn1' model" in bad["skipped"]["PanNet"]


def test_parsing_of_methods_and_checkpoints():
  assert compare.parse_methods("all") == list(compare.CLASSICAL + compare.NETWORKS)
  assert compare.parse_methods("exp, networks,exp")[:2] == ["exp", "pnn"]
  with pytest.raises(ValueError, match="unknown method"):
    compare.parse_methods("exp,brovey")
  assert compare.parse_checkpoints(["PNN=/a/b.npz"]) == {"pnn": "/a/b.npz"}
  with pytest.raises(ValueError, match="NAME=PATH"):
    compare.parse_checkpoints(["pnn"])
  with pytest.raises(ValueError, match="not a network"):
    compare.parse_checkpoints(["exp=/x"])
  with pytest.raises(ValueError, match="not in --methods"):
    compare.run(_config(), ["exp"], pathlib.Path("/nonexistent"), checkpoints={"pnn": "/x"})
