"""Scene readers, the Wald-protocol dataset maker, and the embedded demo set."""

import dataclasses
import hashlib
import json
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from dcfnet_jax import config_lib
from dcfnet_jax import data as data_lib
from dcfnet_jax import imaging
from dcfnet_jax import raster
from dcfnet_jax import scenes
from dcfnet_jax.data import make_dataset
from dcfnet_jax.data import make_demo
from dcfnet_jax.data import pancollection as pc
from dcfnet_jax.data import wald
from dcfnet_jax.errors import InputError

LIVERPOOL = "l8_liverpool_20200927_l2sp-ms_l1tp-pan.npz"


def _open(path, img_range, full=False):
  return pc.PanCollectionSource(path, img_range=img_range, ratio=4, require_gt=not full)


def _raw(path, key):
  """Stored array of an h5 file, NHWC."""
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "r") as f:
    return np.moveaxis(f[key][()], 1, -1)


# ------------------------------------------------------------------------------- geometry


def test_plan_bands_keeps_splits_apart_with_guards():
  opts = wald.Options(sensor="none", valid_fraction=0.1, test_fraction=0.2, guard=30)
  regions = wald.plan_bands(1003, 500, opts)
  assert [r.split for r in regions] == ["train", "valid", "test"]
  train, valid, test = regions
  for r in regions:
    assert (r.c0, r.c1) == (0, 500)
    assert all(v % 4 == 0 for v in (r.r0, r.r1, r.c0, r.c1))
  assert test.r1 == 1000 and test.r1 - test.r0 == 200 and valid.r1 - valid.r0 == 100
  assert valid.r0 - train.r1 >= 30 and test.r0 - valid.r1 >= 30
  cols = wald.plan_bands(100, 1000, dataclasses.replace(opts, split_axis="cols"))
  # Guards round up to the ratio: 30 -> 32.
  assert [(r.split, r.c0, r.c1) for r in cols] == [("train", 0, 636), ("valid", 668, 768),
                                                   ("test", 800, 1000)]
  assert all((r.r0, r.r1) == (0, 100) for r in cols)
  assert wald.plan_bands(64, 64, opts, "test") == [wald.Region("test", 0, 64, 0, 64)]
  with pytest.raises(ValueError, match="too small"):
    wald.plan_bands(60, 64, dataclasses.replace(opts, guard=32))


def test_options_are_checked():
  with pytest.raises(ValueError, match="--patch 30 must be a positive multiple of --ratio 4"):
    wald.Options(sensor="none", patch=30)
  with pytest.raises(ValueError, match="--full-size 100 must be a multiple of 32"):
    wald.Options(sensor="none", full_size=100)
  with pytest.raises(ValueError, match="--pan-prescale 3 must divide --ratio 4"):
    wald.Options(sensor="none", pan_prescale=3)


# ------------------------------------------------------------------------------- scenes


def test_geotiff_round_trip_keeps_georeferencing(tmp_path):
  pytest.importorskip("rasterio")  # the [geo] extra
  rng = np.random.default_rng(0)
  ms = rng.integers(0, 2047, (20, 24, 4)).astype(np.uint16)
  pan = rng.integers(0, 2047, (80, 96)).astype(np.uint16)
  ms_t = (8.0, 0.0, 500000.0, 0.0, -8.0, 4000000.0)
  pan_t = (2.0, 0.0, 500000.0, 0.0, -2.0, 4000000.0)
  raster.write_geotiff(tmp_path / "ms.tif", ms, crs="EPSG:32630", transform=ms_t,
                       band_names=["b", "g", "r", "n"])
  raster.write_geotiff(tmp_path / "pan.tif", pan, crs="EPSG:32630", transform=pan_t)
  with scenes.open_scene(tmp_path / "ms.tif", tmp_path / "pan.tif") as scene:
    got_ms, got_pan = scene.read_all()
    info = scene.info
  np.testing.assert_array_equal(got_ms, ms)
  np.testing.assert_array_equal(got_pan, pan)
  assert info.ratio == 4 and info.band_names == ("b", "g", "r", "n")
  assert info.ms_transform == ms_t and info.pan_transform == pan_t
  assert "32630" in info.ms_crs or "UTM zone 30N" in info.ms_crs


def test_geotiff_without_rasterio_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "rasterio", None)
  (tmp_path / "ms.tif").write_bytes(b"")
  (tmp_path / "pan.tif").write_bytes(b"")
  with pytest.raises(InputError, match=r"pip install 'dcfnet_jax\[geo\]'"):
    scenes.open_scene(tmp_path / "ms.tif", tmp_path / "pan.tif")


def test_scene_errors(tmp_path):
  np.savez(tmp_path / "bad.npz", ms=np.zeros((10, 10, 3)), pan=np.zeros((25, 20)))
  with pytest.raises(InputError, match=r"PAN size \(25, 20\) is not an integer multiple"):
    scenes.open_scene(tmp_path / "bad.npz")
  np.savez(tmp_path / "amb.npz", a=np.zeros((10, 10, 3)), b=np.zeros((10, 10, 3)), pan=np.zeros((20, 20)))
  with pytest.raises(InputError, match=r"cannot tell which array is the MS.*--ms-key"):
    scenes.open_scene(tmp_path / "amb.npz")
  scene = scenes.open_scene(tmp_path / "amb.npz", ms_key="b")
  assert scene.info.ratio == 2 and scene.info.ms_crs is None
  with pytest.raises(InputError, match="unsupported scene format '.png'"):
    (tmp_path / "x.png").write_bytes(b"")
    scenes.open_scene(tmp_path / "x.png")


# ------------------------------------------------------------------------------- the maker


@pytest.fixture(scope="module")
def landsat_crop(tmp_path_factory, shared_dir):
  """A small crop of the Landsat 8 Liverpool pair (B2-B5), with its georeferencing."""
  d = np.load(shared_dir / "data" / LIVERPOOL)
  out = tmp_path_factory.mktemp("scene") / "liverpool_crop.npz"
  np.savez(out, ms=d["ms"][:96, :160], pan=d["pan"][:192, :320], band_names=d["band_names"],
           crs_wkt=d["crs_wkt"], ms_transform=d["ms_transform"], pan_transform=d["pan_transform"])
  return out


@pytest.fixture(scope="module")
def landsat_dataset(landsat_crop, tmp_path_factory):
  out = tmp_path_factory.mktemp("made")
  assert make_dataset.main([
      "--ms", str(landsat_crop), "--out", str(out), "--sensor", "none", "--ratio", "4",
      "--pan-prescale", "2", "--bits", "16", "--bands", "1,2,3,4", "--patch", "32",
      "--stride", "16", "--test-size", "32", "--full-size", "64", "--split-axis", "cols",
      "--valid-fraction", "0.25", "--test-fraction", "0.35", "--guard", "8"]) == 0
  return out, json.loads((out / "manifest.json").read_text())


def _degraded_scene(path):
  d = np.load(path)
  ms = d["ms"][..., 1:5].astype(np.float64)
  pan = d["pan"].astype(np.float64)
  with jax.enable_x64(True):
    return dict(
        ms=ms, pan=pan,
        ms_lr=np.asarray(imaging.decimate(imaging.mtf_filter(ms, "none", 4), 4)),
        pan_lr=np.asarray(imaging.imresize(pan, 0.5)),
        ms_full=np.asarray(imaging.decimate(imaging.mtf_filter(ms, "none", 2), 2)))


def test_maker_output_passes_the_reader(landsat_dataset):
  out, manifest = landsat_dataset
  assert manifest["img_range"] == 65535.0 and manifest["native_ratio"] == 2
  sizes = dict(train=32, valid=32, test_reduced=32, test_full=64)
  for split, size in sizes.items():
    entry = manifest["files"][split]
    src = _open(out / f"{split}.h5", 65535.0, full=split == "test_full")
    assert len(src) == entry["num_examples"] == manifest["counts"][split] > 0
    assert src.info.hr_size == (size, size) and src.info.lr_size == (size // 4, size // 4)
    assert src.info.num_bands == 4 and src.has_gt == (split != "test_full")
    assert not src.lms_is_computed
    assert entry["sha256"] == hashlib.sha256((out / f"{split}.h5").read_bytes()).hexdigest()
    assert src.info.attrs["band_names"] == ["blue", "green", "red", "nir"]


def test_maker_follows_the_wald_recipe(landsat_dataset, landsat_crop):
  out, manifest = landsat_dataset
  ref = _degraded_scene(landsat_crop)
  for split in ("train", "valid", "test_reduced"):
    gt, pan, ms, lms = (_raw(out / f"{split}.h5", k) for k in ("gt", "pan", "ms", "lms"))
    for i, (_, y, x) in enumerate(manifest["files"][split]["origins"]):
      n = gt.shape[1]
      np.testing.assert_array_equal(gt[i], ref["ms"][y:y + n, x:x + n])  # GT = MS as delivered
      np.testing.assert_allclose(pan[i, ..., 0], ref["pan_lr"][y:y + n, x:x + n], rtol=1e-6)
      np.testing.assert_allclose(ms[i], ref["ms_lr"][y // 4:(y + n) // 4, x // 4:(x + n) // 4],
                                 rtol=1e-6)
    np.testing.assert_allclose(lms, pc.compute_lms(ms, 4), rtol=1e-6)
  pan, ms = _raw(out / "test_full.h5", "pan"), _raw(out / "test_full.h5", "ms")
  for i, (_, y, x) in enumerate(manifest["files"]["test_full"]["origins"]):
    np.testing.assert_array_equal(pan[i, ..., 0], ref["pan"][y:y + 64, x:x + 64])  # native 15 m
    np.testing.assert_allclose(ms[i], ref["ms_full"][y // 4:(y + 64) // 4, x // 4:(x + 64) // 4],
                               rtol=1e-6)


def test_maker_keeps_splits_apart(landsat_dataset):
  _, manifest = landsat_dataset
  (geom,) = manifest["split_geometry"]
  regions = {r["split"]: r for r in geom["regions"]}
  assert regions["train"]["c1"] + 8 <= regions["valid"]["c0"]
  assert regions["valid"]["c1"] + 8 <= regions["test"]["c0"]
  for split, size, region, scale in (("train", 32, "train", 1), ("valid", 32, "valid", 1),
                                     ("test_reduced", 32, "test", 1), ("test_full", 64, "test", 2)):
    reg = regions[region]
    for _, y, x in manifest["files"][split]["origins"]:
      assert reg["c0"] * scale <= x and x + size <= reg["c1"] * scale
      assert reg["r0"] * scale <= y and y + size <= reg["r1"] * scale
  src = manifest["sources"][0]
  assert src["ms_transform"][0] == 30.0 and "32630" in src["crs"]
  assert list(src["sha256"].values())[0] == hashlib.sha256(
      pathlib.Path(src["ms"]).read_bytes()).hexdigest()


def test_maker_scene_splits_from_a_list_file_and_no_lms(tmp_path):
  pytest.importorskip("rasterio")  # the [geo] extra
  rng = np.random.default_rng(1)
  lines = []
  for name, split in (("a", "train"), ("b", "test")):
    ms = rng.integers(100, 2000, (48, 48, 4)).astype(np.uint16)
    ms[0, 0, 0] = 2047
    pan = rng.integers(100, 2000, (192, 192)).astype(np.uint16)
    raster.write_geotiff(tmp_path / f"{name}_ms.tif", ms)
    raster.write_geotiff(tmp_path / f"{name}_pan.tif", pan)
    lines.append(f"{name}_ms.tif {name}_pan.tif {split}")
  (tmp_path / "scenes.txt").write_text("# two scenes\n" + "\n".join(lines) + "\n")
  common = ["--list", str(tmp_path / "scenes.txt"), "--sensor", "qb", "--patch", "16",
            "--stride", "16", "--test-size", "32", "--full-size", "64", "--dtype", "uint16"]
  assert make_dataset.main(common + ["--out", str(tmp_path / "with")]) == 0
  assert make_dataset.main(common + ["--out", str(tmp_path / "without"), "--no-lms"]) == 0
  with_lms, without = (json.loads((tmp_path / d / "manifest.json").read_text())
                       for d in ("with", "without"))
  assert with_lms["counts"] == without["counts"] == dict(train=9, valid=0, test_reduced=1, test_full=9)
  assert not (tmp_path / "with" / "valid.h5").exists()
  assert {o[0] for o in with_lms["files"]["train"]["origins"]} == {0}
  assert {o[0] for o in with_lms["files"]["test_full"]["origins"]} == {1}
  for split in ("train", "test_reduced", "test_full"):
    a = _open(tmp_path / "with" / f"{split}.h5", 2047.0, full=split == "test_full")
    b = _open(tmp_path / "without" / f"{split}.h5", 2047.0, full=split == "test_full")
    assert b.lms_is_computed and not a.lms_is_computed
    idx = np.arange(len(a))
    for k, v in a.get_batch(idx).items():
      np.testing.assert_array_equal(v, b.get_batch(idx)[k])
  assert not list(tmp_path.glob("*/.*.tmp"))


def test_maker_refuses_a_wrong_native_ratio(landsat_crop, tmp_path, capsys):
  assert make_dataset.main(["--ms", str(landsat_crop), "--out", str(tmp_path), "--sensor",
                            "none", "--bits", "16"]) == 2
  err = capsys.readouterr().err
  assert re.search(r"PAN/MS size ratio is 2 .* expected ratio / pan_prescale = 4 / 1 = 4", err)
  assert "Traceback" not in err


# ------------------------------------------------------------------------------- the demo set


def test_demo_files_pass_the_reader_with_the_demo_config():
  config = config_lib.get_config("demo")
  sources = {s: data_lib.open_split(config, s) for s in data_lib.SPLITS}
  expected = dict(train=(288, 64), valid=(48, 64), test_reduced=(8, 128), test_full=(4, 256))
  for split, (n, size) in expected.items():
    src = sources[split]
    assert len(src) == n and src.info.hr_size == (size, size) and src.info.num_bands == 4
    assert src.info.dtypes["ms"] == "uint8" and src.lms_is_computed
    batch = src.get_batch([0, n - 1])
    assert batch["pan"].shape == (2, size, size, 1) and batch["ms"].shape == (2, size // 4, size // 4, 4)
    assert ("gt" in batch) == (split != "test_full")
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in batch.values())
  assert sum(p.stat().st_size for p in config_lib.DEMO_DIR.glob("*.h5")) <= 6e6


def test_demo_keeps_wrs_scenes_apart():
  manifest = json.loads((config_lib.DEMO_DIR / "manifest.json").read_text())
  scene_of = [s["ms"].split("_")[3] for s in manifest["sources"]]
  used = {split: {scene_of[o[0]] for o in manifest["files"][split]["origins"]}
          for split in data_lib.SPLITS}
  assert used["train"].isdisjoint(used["valid"] | used["test_reduced"] | used["test_full"])
  assert used["valid"].isdisjoint(used["test_reduced"] | used["test_full"])
  assert len(used["train"]) == 4


def test_demo_regenerates_identically(tmp_path, shared_dir):
  assert make_demo.main(["--data-dir", str(shared_dir / "data"), "--out", str(tmp_path)]) == 0
  for split in data_lib.SPLITS:
    shipped, regenerated = config_lib.DEMO_DIR / f"{split}.h5", tmp_path / f"{split}.h5"
    for key in ("gt", "ms", "pan"):
      if key == "gt" and split == "test_full":
        continue
      a, b = _raw(shipped, key), _raw(regenerated, key)
      # uint8 rounding of float64 results: allow a 1-DN flip on a rare exact .5 tie elsewhere.
      diff = np.abs(a.astype(int) - b.astype(int))
      assert diff.max() <= 1 and np.mean(diff) < 1e-4, (split, key)
