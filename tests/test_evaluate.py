"""Tests of dcfnet_jax.files (array files) and the evaluation CLI (dcfnet_jax.evaluate)."""

import json
import pathlib

import h5py
import numpy as np
import pytest
import scipy.io
from conftest import data_file

import fr_reference
from dcfnet_jax import evaluate, metrics
from dcfnet_jax import files as files_lib

# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _write_mat73(path: pathlib.Path, arrays: dict) -> None:
  """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte header, column-major."""
  with h5py.File(path, "w", userblock_size=512) as f:
    for k, v in arrays.items():
      ds = f.create_dataset(k, data=np.asarray(v).T)
      ds.attrs["MATLAB_class"] = np.bytes_("double")
  header = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
            b"HDF5 schema 1.00 .")
  header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
  with open(path, "r+b") as f:
    f.write(header)


def test_load_arrays_formats(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 3, 4)).astype(np.float32)
  b = np.arange(6, dtype=np.uint16).reshape(2, 3)
  files_lib.save_arrays_h5(tmp_path / "x.h5", {"a": a, "b": b}, sensor="wv3", ratio=4)
  got = files_lib.load_arrays(tmp_path / "x.h5")
  np.testing.assert_array_equal(got["a"], a)
  assert got["b"].dtype == np.uint16
  with h5py.File(tmp_path / "x.h5") as f:
    assert f.attrs["sensor"] == "wv3" and f.attrs["ratio"] == 4
  assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]  # no temp file left behind
  assert list(files_lib.load_arrays(tmp_path / "x.h5", keys=["b"])) == ["b"]

  np.savez(tmp_path / "x.npz", a=a, b=b)
  np.testing.assert_array_equal(files_lib.load_arrays(tmp_path / "x.npz")["a"], a)

  scipy.io.savemat(tmp_path / "v5.mat", {"a": a, "b": b, "name": "text"})
  got = files_lib.load_arrays(tmp_path / "v5.mat")
  assert set(got) == {"a", "b"}  # the string is skipped
  np.testing.assert_array_equal(got["a"], a)

  _write_mat73(tmp_path / "v73.mat", {"a": a.astype(np.float64), "b": b.astype(np.float64)})
  got = files_lib.load_arrays(tmp_path / "v73.mat")
  assert got["a"].shape == (2, 3, 4)  # transposed back to MATLAB's order
  np.testing.assert_array_equal(got["a"], a)


def test_load_arrays_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    files_lib.load_arrays(tmp_path / "missing.h5")
  (tmp_path / "x.tif").write_bytes(b"1234")
  with pytest.raises(ValueError, match=r"unknown file type '.tif'; supported: .h5"):
    files_lib.load_arrays(tmp_path / "x.tif")
  (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
  with pytest.raises(ValueError, match="could not read .*bad.h5 as HDF5"):
    files_lib.load_arrays(tmp_path / "bad.h5")
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="as .npz"):
    files_lib.load_arrays(tmp_path / "bad.npz")
  (tmp_path / "bad.mat").write_bytes(b"garbage" * 30)
  with pytest.raises(ValueError, match="MATLAB .mat"):
    files_lib.load_arrays(tmp_path / "bad.mat")
  np.savez(tmp_path / "y.npz", a=np.zeros(2))
  with pytest.raises(KeyError, match=r"missing key\(s\) \['gt'\]; the file holds \['a'\]"):
    files_lib.load_arrays(tmp_path / "y.npz", keys=["gt"])


def test_save_arrays_h5_failure_leaves_nothing(tmp_path):
  class Boom:
    def __array__(self, *args, **kwargs):
      raise RuntimeError("boom")
  files_lib.save_arrays_h5(tmp_path / "out.h5", {"a": np.zeros(2)})
  with pytest.raises(RuntimeError, match="boom"):
    files_lib.save_arrays_h5(tmp_path / "out.h5", {"a": np.ones(2), "b": Boom()})
  assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
  np.testing.assert_array_equal(files_lib.load_arrays(tmp_path / "out.h5")["a"], np.zeros(2))


# ---------------------------------------------------------------------------
# evaluate: end to end on the golden scene B (WV3, 128x128x8)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
  with np.load(data_file("metrics_cases.npz")) as f:
    arrays = {k: f[k].astype(np.float64) for k in f.files}
  expected = json.loads(data_file("metrics_expected.json").read_text())["cases"]
  return arrays, expected


def _nchw(x):
  return np.transpose(x, (0, 3, 1, 2))


@pytest.fixture(scope="module")
def files(golden, tmp_path_factory):
  """A PanCollection-like reference (N,C,H,W) of 2 images and the matching fused file."""
  arrays, _ = golden
  d = tmp_path_factory.mktemp("eval")
  gt = np.stack([arrays["B_gt"]] * 2)
  ms = np.stack([arrays["B_lrms"]] * 2)
  pan = np.stack([arrays["B_pan"]] * 2)[:, None]
  fused = np.stack([arrays["B_fused_noisy"], arrays["B_fused_blur"]])
  files_lib.save_arrays_h5(d / "ref.h5", {"gt": _nchw(gt), "ms": _nchw(ms), "pan": pan})
  files_lib.save_arrays_h5(d / "fused.h5", {"fused": _nchw(fused)})
  return d


def test_cli_reduced_resolution_matches_toolbox(files, golden, capsys):
  _, cases = golden
  out_json = files / "rr.json"
  rc = evaluate.main(["--fused", str(files / "fused.h5"), "--reference", str(files / "ref.h5"),
                      "--sensor", "wv3", "--json", str(out_json)])
  assert rc == 0
  printed = capsys.readouterr().out
  assert "Q8" in printed and "±" in printed
  report = json.loads(out_json.read_text())
  assert report["settings"]["dim_cut"] == 21 and report["settings"]["flag_cut_bounds"]
  assert report["names"]["Q2n"] == "Q8"
  for i, name in enumerate(["B_noisy", "B_blur"]):
    for ours, theirs in (("Q2n", "Q2n"), ("Q", "Q_avg"), ("SAM", "SAM"), ("ERGAS", "ERGAS"),
                         ("SCC", "SCC")):
      assert report["per_image"][ours][i] == pytest.approx(cases[name]["rr"][theirs], rel=1e-9)
  sam = [cases["B_noisy"]["rr"]["SAM"], cases["B_blur"]["rr"]["SAM"]]
  assert report["mean"]["SAM"] == pytest.approx(np.mean(sam), rel=1e-9)
  assert report["std"]["SAM"] == pytest.approx(np.std(sam, ddof=1), rel=1e-9)  # sample std


FR_ALL = metrics.FR_KEYS + metrics.REPROJECTION_KEYS


def test_cli_full_resolution_matches_toolbox_and_reference(files, golden, capsys):
  """Both families by default, toolbox first; the reprojection values against the NumPy
  reference (tests/fr_reference.py); one family with --fr-indexes, the same values."""
  arrays, cases = golden
  out_json = files / "fr.json"
  base = ["--fused", str(files / "fused.h5"), "--reference", str(files / "ref.h5"),
          "--sensor", "wv3", "--full-resolution", "--json", str(out_json)]
  assert evaluate.main(base) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].split() == ["image", "D_lambda", "D_s", "QNR", "D_lambda_K", "HQNR", "R-Q8",
                                "R-Q", "R-SAM", "R-ERGAS", "D_rho"]
  assert [line.split()[0] for line in printed[4:]] == printed[0].split()[1:]  # mean ± std
  report = json.loads(out_json.read_text())
  assert report["lms"] == "interp23tap(ms)"  # the file has no lms
  assert report["settings"]["fr_indexes"] == "all"
  for part in ("per_image", "mean", "std", "names"):
    assert tuple(report[part]) == FR_ALL, part
  assert [report["names"][k] for k in metrics.REPROJECTION_KEYS] == [
      "R-Q8", "R-Q", "R-SAM", "R-ERGAS", "D_rho"]
  for i, name in enumerate(["B_noisy", "B_blur"]):
    for key in metrics.FR_KEYS:
      assert report["per_image"][key][i] == pytest.approx(cases[name]["fr"][key], rel=1e-9)
    expected = fr_reference.reprojection_indexes(
        arrays[f"B_fused_{name[2:]}"], arrays["B_lrms"], arrays["B_pan"], "WV3", 4)
    for key in metrics.REPROJECTION_KEYS:
      assert report["per_image"][key][i] == pytest.approx(expected[key], rel=1e-9), key
  values = report["per_image"]
  for family, keys in (("toolbox", metrics.FR_KEYS), ("reprojection", metrics.REPROJECTION_KEYS)):
    assert evaluate.main(base + ["--fr-indexes", family]) == 0
    one = json.loads(out_json.read_text())
    assert tuple(one["per_image"]) == keys and one["settings"]["fr_indexes"] == family
    assert one["per_image"] == {k: values[k] for k in keys}
  capsys.readouterr()


def test_cli_full_resolution_bad_input(golden, small, capsys):
  """Not in the ratio, too small for the 32-pixel MS blocks, NaN: one line each, exit 2."""
  arrays, _ = golden
  fused = _nchw(arrays["B_fused_noisy"][None])
  ms, pan = _nchw(arrays["B_lrms"][None]), arrays["B_pan"][None, None]
  fr = ["--sensor", "wv3", "--full-resolution"]

  def fails(args, *expected):
    rc, err = _run_error(capsys, args + fr)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
      assert text in lines[0], err

  fails(small({"fused": fused}, {"ms": ms[..., :31, :], "pan": pan}, "ratio"),
        "ratio_ref.npz: PAN size (128, 128) is not ratio 4 x MS size (31, 32)")
  # 64x64 (MS 16x16): the toolbox family fits (test_metrics_host), the reprojection's 32x32 MS
  # blocks do not.
  args = small({"fused": fused[..., :64, :64]}, {"ms": ms[..., :16, :16],
                                                 "pan": pan[..., :64, :64]}, "small")
  fails(args, "images of 64x64 (MS 16x16) are too small for the 32x32 blocks of R-Q2n/R-Q at "
        "MS scale", "at least 128x128", "--fr-indexes toolbox")
  fails(small({"fused": fused[..., :64, :64]}, {"ms": ms, "pan": pan[..., :64, :64]}, "ratio2")
        + ["--ratio", "2", "--block-size", "16"], "fits ratio 4 only, not ratio 2")
  for key, what in (("fused", "fused"), ("ms", "ms"), ("pan", "pan")):
    bad = {"fused": fused.copy(), "ms": ms.copy(), "pan": pan.copy()}
    bad[key][0, 0, 5, 3] = np.nan
    fails(small({"fused": bad["fused"]}, {"ms": bad["ms"], "pan": bad["pan"]}, f"nan_{key}"),
          f"{what}: 1 NaN/inf values (first at index (0, 5, 3, 0))")
  capsys.readouterr()


def test_scale_and_npz_and_nhwc(golden, tmp_path):
  arrays, cases = golden
  gt = arrays["A_gt"][None] / 2047.0
  fused = arrays["A_fused_noisy"][None] / 2047.0
  np.savez(tmp_path / "ref.npz", gt=gt)
  np.savez(tmp_path / "fused.npz", fused=fused)
  base = ["--fused", str(tmp_path / "fused.npz"), "--reference", str(tmp_path / "ref.npz"),
          "--sensor", "qb", "--layout", "nhwc", "--no-cut-bounds", "--json",
          str(tmp_path / "out.json")]
  assert evaluate.main(base + ["--scale", "2047"]) == 0
  report = json.loads((tmp_path / "out.json").read_text())
  assert report["names"]["Q2n"] == "Q4"
  assert report["per_image"]["Q2n"][0] == pytest.approx(cases["A_noisy"]["rr"]["Q2n"], rel=1e-9)
  assert evaluate.main(base + ["--scale", "2047", "--float32"]) == 0
  report = json.loads((tmp_path / "out.json").read_text())
  assert not report["settings"]["float64"]
  for ours, theirs in (("Q2n", "Q2n"), ("Q", "Q_avg"), ("SAM", "SAM"), ("SCC", "SCC")):
    assert report["per_image"][ours][0] == pytest.approx(cases["A_noisy"]["rr"][theirs], rel=1e-4)


def test_mat_fused_single_array(golden, tmp_path):
  arrays, _ = golden
  gt = _nchw(arrays["A_gt"][None])
  scipy.io.savemat(tmp_path / "ref.mat", {"gt": gt})
  scipy.io.savemat(tmp_path / "out.mat", {"I_F": gt})
  results = evaluate.evaluate_arrays(
      evaluate.load_fused(str(tmp_path / "out.mat")),
      evaluate.load_reference(str(tmp_path / "ref.mat"), False), sensor="qb",
      flag_cut_bounds=False)
  assert results["SAM"][0] == 0.0 and results["Q"][0] == pytest.approx(1.0)


def _run_error(capsys, argv):
  rc = evaluate.main(argv)
  return rc, capsys.readouterr().err


@pytest.fixture()
def small(tmp_path):
  """Writes reference/fused npz pairs (N,C,H,W) for the refusal tests."""
  def make(fused, ref, name="case"):
    f, r = tmp_path / f"{name}_fused.npz", tmp_path / f"{name}_ref.npz"
    np.savez(f, **fused)
    np.savez(r, **ref)
    return ["--fused", str(f), "--reference", str(r)]
  return make


def test_refusals(small, capsys):
  rng = np.random.default_rng(0)
  gt = rng.uniform(100, 1500, size=(2, 8, 64, 64))
  ok = {"fused": gt + 1.0}
  args = small(ok, {"ms": gt}, "nogt")
  rc, err = _run_error(capsys, args + ["--sensor", "wv3"])
  assert rc == 2 and "missing key(s) ['gt']" in err and "['ms']" in err
  rc, err = _run_error(capsys, small({"out": gt}, {"gt": gt}, "nofused") + ["--sensor", "wv3"])
  assert rc == 2 and "missing key 'fused'" in err
  rc, err = _run_error(capsys, small({"fused": gt[:, :, :32]}, {"gt": gt}, "shape")
                       + ["--sensor", "wv3"])
  assert rc == 2 and "shape mismatch" in err and "(2, 32, 64, 8)" in err
  rc, err = _run_error(capsys, small(ok, {"gt": gt}, "bands") + ["--sensor", "qb"])
  assert rc == 2 and "8 bands, but sensor 'qb' has 4" in err
  rc, err = _run_error(capsys, small({"fused": gt / 2047}, {"gt": gt / 2047}, "unit")
                       + ["--sensor", "wv3"])
  assert rc == 2 and "looks like [0, 1] data" in err and "--scale 2047" in err
  rc, err = _run_error(capsys, small({"fused": gt * 40}, {"gt": gt * 40}, "high")
                       + ["--sensor", "wv3"])
  assert rc == 2 and "far above 2^L = 2048" in err
  nan = gt.copy()
  nan[1, 2, 3, 4] = np.nan
  rc, err = _run_error(capsys, small({"fused": nan}, {"gt": gt}, "nan") + ["--sensor", "wv3"])
  assert rc == 2 and "fused: 1 NaN/inf" in err
  inf = gt.copy()
  inf[0, 0, 0, 0] = np.inf
  rc, err = _run_error(capsys, small(ok, {"gt": inf}, "inf") + ["--sensor", "wv3"])
  assert rc == 2 and "gt: 1 NaN/inf" in err
  rc, err = _run_error(capsys, args + ["--sensor", "wv9"])
  assert rc == 2 and "unknown sensor 'wv9'" in err
  rc, err = _run_error(capsys, small(ok, {"gt": gt}, "fr") + ["--sensor", "wv3",
                                                               "--full-resolution"])
  assert rc == 2 and "missing key(s) ['ms', 'pan']" in err
  rc, err = _run_error(capsys, small(ok, {"ms": gt[..., :8, :16], "pan": gt[:, :1, :32]}, "pan")
                       + ["--sensor", "wv3", "--full-resolution"])
  assert rc == 2 and "pan is (2, 32, 64, 1)" in err
  rc, err = _run_error(capsys, ["--fused", "/nonexistent/f.h5", "--reference", "/x.h5",
                                "--sensor", "wv3"])
  assert rc == 2 and "no such file: /nonexistent/f.h5" in err
  # 64x64 leaves 23x23 after the default crop: too small for the 32-pixel Q block.
  rc, err = _run_error(capsys, small(ok, {"gt": gt}, "small") + ["--sensor", "wv3"])
  assert rc == 2 and "64x64 leave 23x23 after the toolbox's border crop (dim_cut 21)" in err
  assert "--dim-cut" in err and "Traceback" not in err
  with pytest.raises(ValueError, match="23x23 after the border crop"):
    metrics.reduced_resolution_indexes(gt[0].T, gt[0].T)


def test_format_table():
  results = {"SAM": np.array([1.0, 3.0]), "Q2n": np.array([0.9, 0.8])}
  text = evaluate.format_table(results, num_bands=8)
  assert "Q8" in text and "SAM  2.0000 ± 1.4142" in text
  single = evaluate.format_table({"SAM": np.array([1.0])}, per_image=False)
  assert single == "SAM  1.0000 ± 0.0000 (1 image)"  # MATLAB's std of one value is 0
