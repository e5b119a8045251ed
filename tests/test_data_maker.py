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
import scipy.io
from conftest import DATA_DIR, data_file

from dcfnet_jax import config_lib, dn
from dcfnet_jax import data as data_lib
from dcfnet_jax import imaging
from dcfnet_jax import raster
from dcfnet_jax import scenes
from dcfnet_jax.data import make_dataset
from dcfnet_jax.data import make_demo
from dcfnet_jax.data import pancollection as pc
from dcfnet_jax.data import wald
from dcfnet_jax.errors import InputError

LIVERPOOL = "l8_liverpool_20200927_crop.npz"  # tests/data: MS 128x192x7, PAN 256x384


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
def landsat_crop(tmp_path_factory):
  """A small crop of the Landsat 8 Liverpool pair (B2-B5), with its georeferencing."""
  d = np.load(data_file(LIVERPOOL))
  out = tmp_path_factory.mktemp("scene") / "liverpool_crop.npz"
  np.savez(out, ms=d["ms"][:96, :160], pan=d["pan"][:192, :320], band_names=d["band_names"],
           crs_wkt=d["crs_wkt"], ms_transform=d["ms_transform"], pan_transform=d["pan_transform"])
  return out


@pytest.fixture(scope="module")
def landsat_dataset(landsat_crop, tmp_path_factory):
  out = tmp_path_factory.mktemp("made")
  assert make_dataset.main([
      "--ms", str(landsat_crop), "--out", str(out), "--sensor", "none", "--ratio", "4",
      "--pan-prescale", "2", "--bits", "16", "--bands", "2,3,4,5", "--patch", "32",
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


# The demo's provenance: FuseBox crop 32 (tests/data) is one of the 24 crops the demo is cut from.
FUSEBOX_CROP = 32


def _fusebox_crop32():
  """The prepared crop (nested 399x399x6 / 798x798 uint8) stored in tests/data."""
  path_row, date = make_demo.demo_crops()[FUSEBOX_CROP]
  with np.load(data_file(make_demo.prepared_name(FUSEBOX_CROP, path_row, date))) as f:
    return f["ms"], f["pan"]


def _fake_fusebox_clone(root):
  """Crop 32 laid out as in a FuseBox clone: imagery/cropped/32_{ms,pan}.mat + locations.txt.

  FuseBox stores 400x400x6 / 800x800: one more MS row and column at the top-left and one
  more PAN row and column on every side than the prepared crop. Their true values are not in
  tests/data; they are filled with 255 here, which the preparation must drop.
  """
  ms, pan = _fusebox_crop32()
  folder = root / "imagery" / "cropped"
  folder.mkdir(parents=True)
  scipy.io.savemat(folder / f"{FUSEBOX_CROP}_ms.mat",
                   {"cropped_im": np.pad(ms, ((1, 0), (1, 0), (0, 0)), constant_values=255)})
  scipy.io.savemat(folder / f"{FUSEBOX_CROP}_pan.mat",
                   {"cropped_gray": np.pad(pan, 1, constant_values=255)})
  lines = ["P000R000, 19990101, 0, 0, 400, 400"] * 39
  lines[FUSEBOX_CROP - 1] = "P093R086, 20001005, 6485, 217, 400, 400"  # FuseBox's line 32
  (root / "imagery" / "locations.txt").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture
def crop32_only(monkeypatch):
  """The demo recipe restricted to crop 32 (its test scene), to run it end to end quickly."""
  monkeypatch.setattr(make_demo, "SCENES", {
      "p093r086": make_demo.FuseBoxScene("20001005", (FUSEBOX_CROP,), "test")})


def test_fusebox_mat_files_are_prepared_into_the_nested_crop(tmp_path):
  clone = _fake_fusebox_clone(tmp_path / "FuseBox")
  stored_ms, stored_pan = make_demo.read_fusebox_crop(clone, FUSEBOX_CROP)
  assert stored_ms.shape == (400, 400, 6) and stored_pan.shape == (800, 800)
  assert stored_ms.dtype == stored_pan.dtype == np.uint8
  ms, pan = make_demo.fix_crop_offset(stored_ms, stored_pan)
  want_ms, want_pan = _fusebox_crop32()
  np.testing.assert_array_equal(ms, want_ms)
  np.testing.assert_array_equal(pan, want_pan)
  make_demo.check_locations(clone, {FUSEBOX_CROP: ("p093r086", "20001005")})
  with pytest.raises(ValueError, match=r"locations.txt: line 32 .* expected crop 32 of scene P093R085"):
    make_demo.check_locations(clone, {FUSEBOX_CROP: ("p093r085", "20001005")})
  scipy.io.savemat(clone / "imagery" / "cropped" / "7_ms.mat", {"cropped_im": want_ms[..., :4]})
  scipy.io.savemat(clone / "imagery" / "cropped" / "7_pan.mat", {"cropped_gray": want_pan})
  with pytest.raises(ValueError, match=r"7_ms.mat: 'cropped_im' is uint8 \(399, 399, 4\); expected"):
    make_demo.read_fusebox_crop(clone, 7)
  with pytest.raises(ValueError, match=r"8_ms.mat: no such file; --fusebox must be a clone"):
    make_demo.read_fusebox_crop(clone, 8)


def test_make_demo_from_fusebox_files_equals_the_prepared_route(tmp_path, crop32_only, capsys):
  clone = _fake_fusebox_clone(tmp_path / "FuseBox")
  assert make_demo.main(["--fusebox", str(clone), "--out", str(tmp_path / "from_mat"),
                         "--keep-prepared", str(tmp_path / "prepared")]) == 0
  assert make_demo.main(["--data-dir", str(DATA_DIR), "--out", str(tmp_path / "from_npz")]) == 0
  for split in ("test_reduced", "test_full"):
    a, b = (tmp_path / route / f"{split}.h5" for route in ("from_mat", "from_npz"))
    assert a.read_bytes() == b.read_bytes(), split
  assert not (tmp_path / "from_mat" / "train.h5").exists()  # crop 32 is a test scene
  manifest = json.loads((tmp_path / "from_mat" / "manifest.json").read_text())
  (record,) = manifest["fusebox"]["crops"]
  ms, pan = _fusebox_crop32()
  assert record["ms_sha256"] == hashlib.sha256(ms.tobytes()).hexdigest()
  assert record["pan_sha256"] == hashlib.sha256(pan.tobytes()).hexdigest()
  assert record["files"] == ["imagery/cropped/32_ms.mat", "imagery/cropped/32_pan.mat"]
  assert manifest["fusebox"]["commit"] == make_demo.FUSEBOX_COMMIT
  assert manifest["command"].startswith("python -m dcfnet_jax.data.make_demo --fusebox ")
  assert [p.name for p in (tmp_path / "prepared").iterdir()] == ["l7_fusebox_32_p093r086_20001005.npz"]
  capsys.readouterr()
  assert make_demo.main(["--data-dir", str(tmp_path / "from_mat"), "--out",
                         str(tmp_path / "x")]) == 2
  assert "prepared FuseBox crops [32] are missing" in capsys.readouterr().err


def test_shipped_demo_examples_are_recomputed_from_the_public_crop():
  """Every example the shipped demo cut from crop 32 follows from tests/data's copy of it."""
  manifest = json.loads((config_lib.DEMO_DIR / "manifest.json").read_text())
  ms, pan = _fusebox_crop32()
  (record,) = [r for r in manifest["fusebox"]["crops"] if r["crop"] == FUSEBOX_CROP]
  assert record["ms_sha256"] == hashlib.sha256(ms.tobytes()).hexdigest()
  assert record["pan_sha256"] == hashlib.sha256(pan.tobytes()).hexdigest()
  names = [s["ms"] for s in manifest["sources"]]
  index = names.index(make_demo.prepared_name(FUSEBOX_CROP, "p093r086", "20001005"))
  bands = list(make_demo.BANDS)
  ref = wald.degrade(ms[..., bands], pan, make_demo.OPTIONS)
  checked = 0
  for split, n in (("test_reduced", make_demo.OPTIONS.test_size),
                   ("test_full", make_demo.OPTIONS.full_size)):
    path = config_lib.DEMO_DIR / f"{split}.h5"
    stored = {k: _raw(path, k) for k in (("ms", "pan") if split == "test_full" else ("gt", "ms", "pan"))}
    for i, (s, y, x) in enumerate(manifest["files"][split]["origins"]):
      if s != index:
        continue
      if split == "test_full":
        want = dict(pan=ref["pan_full"][y:y + n, x:x + n, None],
                    ms=ref["ms_full"][y // 4:(y + n) // 4, x // 4:(x + n) // 4])
      else:
        want = dict(gt=ref["gt"][y:y + n, x:x + n], pan=ref["pan_lr"][y:y + n, x:x + n, None],
                    ms=ref["ms_lr"][y // 4:(y + n) // 4, x // 4:(x + n) // 4])
      for key, value in want.items():
        # uint8 rounding of float64 results: allow a 1-DN flip at a rare exact .5 tie.
        diff = np.abs(stored[key][i].astype(int) - dn.to_dtype(value, np.uint8))
        assert diff.max() <= 1 and np.mean(diff) < 1e-3, (split, i, key)
      checked += 1
  assert checked == 6  # 4 test_reduced and 2 test_full examples come from crop 32
