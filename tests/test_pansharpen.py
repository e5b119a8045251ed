"""Tests of `python -m dcfnet_jax.pansharpen`: real Landsat scenes, tiling, h5 mode, bad input.

Two kinds of model are used:
- a parameter-free *probe* network whose output bands are its inputs (PAN, MS upsampled by
  nearest neighbour, lms): the whole pipeline (windowed reads, symmetric padding, per-tile lms,
  blending) must then reproduce those inputs over the whole scene exactly;
- a randomly initialised 4-band DCFNet exported with `checkpoint.export_params`, run end to end
  through the command line.
"""

import json
import pathlib

import h5py
import helpers_train
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data_file
from flax import nnx

from dcfnet_jax import checkpoint, config_lib, evaluate, imaging, inference, metrics, optim, scenes
from dcfnet_jax import tiling
from dcfnet_jax import train_state
from dcfnet_jax.models import dcfnet
from dcfnet_jax.errors import InputError
from dcfnet_jax.pansharpen import checks, outputs, runs, tiles
from dcfnet_jax.pansharpen import cli as pansharpen_cli

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402  (after the rasterio skip)

LIVERPOOL = "l8_liverpool_20200927_crop.npz"  # tests/data: MS 128x192x7, PAN 256x384
BANDS = [1, 2, 3, 4]  # blue, green, red, nir of Landsat 8 B1-B7
IMG_RANGE = 65535.0  # 16-bit Landsat DN


# ---------------------------------------------------------------------------------------------
# Scenes


def make_landsat_scene(height, width, row=0, col=0):
  """A 4:1 pair from the Liverpool file: PAN 15 m crop, MS = the 30 m MS averaged 2x2 (60 m).

  Returns (ms uint16 (h, w, 4), pan uint16 (H, W), crs, ms transform, pan transform, names).
  """
  d = np.load(data_file(LIVERPOOL))
  pan = d["pan"][row:row + height, col:col + width]
  ms30 = d["ms"][row // 2:(row + height) // 2, col // 2:(col + width) // 2, BANDS]
  ms = np.rint(ms30.astype(np.float64).reshape(height // 4, 2, width // 4, 2, 4).mean((1, 3)))
  a, b, c, dd, e, f = (float(v) for v in d["pan_transform"])
  pan_t = (a, b, c + a * col, dd, e, f + e * row)
  ms_t = (4 * a, b, pan_t[2], dd, 4 * e, pan_t[5])
  names = tuple(str(n) for n in d["band_names"][BANDS])
  return ms.astype(np.uint16), pan, f"EPSG:{int(d['crs_epsg'])}", ms_t, pan_t, names


def write_tif(path, image, crs, transform, names=None, nodata=None):
  image = image[..., None] if image.ndim == 2 else image
  profile = dict(driver="GTiff", width=image.shape[1], height=image.shape[0],
                 count=image.shape[2], dtype=image.dtype.name, crs=crs,
                 transform=Affine(*transform))
  if nodata is not None:
    profile["nodata"] = nodata
  with rasterio.open(path, "w", **profile) as dst:
    dst.write(np.moveaxis(image, -1, 0))
    for i, name in enumerate(names or ()):
      dst.set_band_description(i + 1, name)
  return str(path)


@pytest.fixture(scope="module")
def landsat(tmp_path_factory):
  """GeoTIFF pair, PAN 96x128 (MS 24x32), with nodata 0 declared on the MS."""
  folder = tmp_path_factory.mktemp("landsat")
  ms, pan, crs, ms_t, pan_t, names = make_landsat_scene(96, 128, row=40, col=60)
  return dict(ms=write_tif(folder / "ms.tif", ms, crs, ms_t, names, nodata=0),
              pan=write_tif(folder / "pan.tif", pan, crs, pan_t),
              ms_array=ms, pan_array=pan, crs=crs, ms_t=ms_t, pan_t=pan_t, names=names,
              folder=folder)


# ---------------------------------------------------------------------------------------------
# Models


class Probe(nnx.Module):
  """Outputs [PAN, MS band 1 (nearest x4), lms band 2, lms band 3]: no parameters."""

  def __init__(self):
    self.num_bands = 4

  def __call__(self, pan, lms, mms, ms):
    up = ms.repeat(4, axis=1).repeat(4, axis=2)
    return jnp.concatenate([pan, up[..., 1:2], lms[..., 2:4]], axis=-1)


def probe_model(img_range=IMG_RANGE):
  return inference.LoadedModel.from_module(Probe(), residual=False, img_range=img_range, bits=16,
                                           sensor="none", name="probe")


def random_dcfnet(num_bands: int = 4, seed: int = 0):
  """A DCFNet with random weights, built from its abstract shapes (no slow eager init).

  Kernels ~ U(+-1/sqrt(fan_in)) like torch's defaults, biases ~ U(+-0.05); BatchNorm statistics
  get some spread (mean ~ N(0, 0.1), var ~ U(0.5, 2)) so that eval mode is not the identity.
  """

  model = nnx.eval_shape(lambda: dcfnet.DCFNet(num_bands, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  arrays = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    key, shape = "/".join(str(p) for p in path), var.get_value().shape
    leaf = str(path[-1])
    if leaf == "kernel":
      bound = 1 / np.sqrt(np.prod(shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif leaf == "bias":  # conv biases of the head and BatchNorm shifts
      value = rng.uniform(-0.05, 0.05, shape)
    elif leaf == "mean":
      value = rng.normal(0, 0.1, shape)
    elif leaf == "var":
      value = rng.uniform(0.5, 2.0, shape)
    elif leaf == "scale" or leaf in ("rs_w", "fcc_w"):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    arrays[key] = value.astype(np.float32)
  checkpoint.assign_arrays(model, arrays, "random_dcfnet")
  return model


@pytest.fixture(scope="module")
def dcfnet_file(tmp_path_factory):
  """A random 4-band DCFNet exported like a trained one (16-bit Landsat DN)."""

  path = tmp_path_factory.mktemp("model") / "dcfnet_l8.npz"
  meta = dict(model="dcfnet", num_bands=4, sensor="none", img_range=IMG_RANGE, bits=16,
              ratio=4, residual=True)
  return str(checkpoint.export_params(path, random_dcfnet(), meta))


def expected_probe_output(ms, pan):
  """What the probe gives for the whole scene, float64 DN."""
  lms = np.asarray(imaging.interp23tap(ms.astype(np.float64), 4))
  up = ms.astype(np.float64).repeat(4, axis=0).repeat(4, axis=1)
  return np.concatenate([pan[..., None].astype(np.float64), up[..., 1:2], lms[..., 2:4]], axis=-1)


# ---------------------------------------------------------------------------------------------
# Pure parts: per-tile lms, co-registration, values, output paths


def test_per_tile_lms_equals_whole_scene_interp23tap():
  with jax.enable_x64(True):  # exact to float64 round-off (float32 differs by fused-op order)
    _check_per_tile_lms()


def _check_per_tile_lms():
  ms, pan, *_ = make_landsat_scene(64, 96)
  info = scenes.SceneInfo("t", pan.shape, ms.shape, ms.dtype, pan.dtype)
  scene = scenes.ArrayScene(ms.astype(np.float64), pan, info)
  whole = np.asarray(imaging.interp23tap(ms.astype(np.float64), 4))
  grid = tiling.make_grid(64, 96, 32, 8, pad=12)  # pad > an MS pixel: reflected tiles too
  for tile in grid.tiles():
    rows, cols = tiles.tile_indices(tile, grid, info)
    window, _, _, a0, b0 = tiles.lms_window(scene, rows, cols)
    assert window.shape[:2] == (32 // 4 + 2 * tiles.LMS_MARGIN,) * 2  # fixed per tile size
    lms = np.asarray(imaging.interp23tap(window, 4))[np.ix_(rows - 4 * a0, cols - 4 * b0)]
    np.testing.assert_allclose(lms, whole[np.ix_(rows, cols)], rtol=0, atol=1e-9)
  # The same for an arbitrary crop (as --assess and --preview use).
  np.testing.assert_allclose(outputs.scene_lms(scene, 8, 4, 48, 60), whole[8:56, 4:64],
                             atol=1e-9)


def _info(**kw):
  base = dict(name="scene", pan_shape=(64, 64), ms_shape=(16, 16, 4),
              dtype=np.dtype(np.uint16), pan_dtype=np.dtype(np.uint16), crs="EPSG:32630",
              pan_transform=(15.0, 0.0, 1000.0, 0.0, -15.0, 5000.0),
              ms_transform=(60.0, 0.0, 1000.0, 0.0, -60.0, 5000.0))
  base.update(kw)
  return scenes.SceneInfo(**base)


def test_coregistration_accepts_a_nested_pair_and_a_small_shift():
  scenes.check_coregistration(_info(), 4)
  scenes.check_coregistration(_info(ms_transform=(60.0, 0.0, 1007.0, 0.0, -60.0, 5000.0)), 4)
  # 0.4 PAN pixel along each axis (0.57 diagonally) is within half a pixel per axis.
  scenes.check_coregistration(_info(ms_transform=(60.0, 0.0, 1006.0, 0.0, -60.0, 4994.0)), 4)
  scenes.check_coregistration(_info(pan_transform=None, ms_transform=None), 4)


@pytest.mark.parametrize("kw,match", [
    (dict(pan_shape=(64, 60)), "PAN = 4 x MS exactly"),
    (dict(ms_shape=(32, 32, 4)), "PAN = 4 x MS exactly"),
    (dict(ms_transform=(30.0, 0.0, 1000.0, 0.0, -30.0, 5000.0)), "x pixel size"),
    (dict(ms_transform=(60.0, 0.0, 1000.0, 0.0, -45.0, 5000.0)), "y pixel size"),
    (dict(ms_transform=(60.0, 0.0, 1008.0, 0.0, -60.0, 5000.0)), "more than half a PAN pixel"),
    (dict(ms_transform=(60.0, 0.0, 1000.0, 0.0, -60.0, 4990.0)), "more than half a PAN pixel"),
])
def test_coregistration_errors(kw, match):
  with pytest.raises(InputError, match=match):
    scenes.check_coregistration(_info(**kw), 4)


def test_coregistration_rejects_different_crs():
  with pytest.raises(InputError, match="different coordinate reference systems"):
    scenes.check_coregistration(_info(ms_crs="EPSG:32631"), 4)


def _array_scene(ms, pan):
  info = scenes.SceneInfo("scene", pan.shape, ms.shape, ms.dtype, pan.dtype)
  return scenes.ArrayScene(ms, pan, info)


@pytest.mark.parametrize("base,ms_value,pan_value,dtype,match", [
    (500, -3.0, 100.0, np.float32, "negative values"),
    (0.3, 0.5, 0.7, np.float32, "looks like \\[0, 1\\] data"),
    (500, 3000.0, 100.0, np.float32,
     "values up to 3000 DN, more than 1.05 x img_range 2047 = 2149\\.35"),
    (500, np.nan, 100.0, np.float32, "NaN/inf"),
    (500, 1.0, 1.0, np.complex64, "dtype complex64"),
    (1, 1, 1, np.bool_, "dtype bool"),
])
def test_value_checks(base, ms_value, pan_value, dtype, match):
  ms = np.full((4, 4, 4), base, np.float64)
  ms[0, 0, 0] = ms_value
  pan = np.full((16, 16), base, np.float64)
  pan[1, 1] = pan_value
  scene = _array_scene(ms.astype(dtype), pan.astype(dtype))
  with pytest.raises(InputError, match=match):
    checks.check_values(scene, img_range=2047.0, bits=11)


def test_value_check_ignores_nodata_and_reports_ranges():
  ms = np.full((4, 4, 4), 500, np.uint16)
  ms[0, 0] = 65535  # nodata, would be out of range
  pan = np.full((16, 16), 700, np.uint16)
  info = scenes.SceneInfo("s", pan.shape, ms.shape, ms.dtype, pan.dtype, ms_nodata=65535)
  stats = checks.check_values(scenes.ArrayScene(ms, pan, info), 2047.0, 11)
  assert stats == {"ms": (500.0, 500.0), "pan": (700.0, 700.0)}


def test_output_path_checks(tmp_path):
  existing = tmp_path / "out.tif"
  existing.write_bytes(b"old")
  with pytest.raises(InputError, match="exists; pass --overwrite"):
    checks.check_output_path(str(existing), [], overwrite=False)
  assert checks.check_output_path(str(existing), [], overwrite=True) == existing
  with pytest.raises(InputError, match="is also an input file"):
    checks.check_output_path(str(existing), [str(existing)], overwrite=True)
  with pytest.raises(InputError, match="unknown output format"):
    checks.check_output_path(str(tmp_path / "out.png"), [], overwrite=False)
  with pytest.raises(InputError, match="does not exist"):
    checks.check_output_path(str(tmp_path / "nope" / "out.tif"), [], overwrite=False)


# ---------------------------------------------------------------------------------------------
# The pipeline with the probe network (exact)


@pytest.mark.parametrize("out_name,pad,tile,overlap,trim", [
    ("probe.tif", 8, 32, 16, 4),
    ("probe.npz", 40, 48, 24, 0),  # pad larger than the MS side: reflections of reflections
    ("probe.h5", 0, 64, 32, 8),
])
def test_pipeline_reproduces_its_inputs_exactly(landsat, out_name, pad, tile, overlap, trim,
                                                umask022):
  opts = runs.RunOptions(
      ms=landsat["ms"], pan=landsat["pan"], out=str(landsat["folder"] / out_name),
      overwrite=True, progress=False,
      tiling=checks.TilingOptions(tile=tile, overlap=overlap, pad=pad, trim=trim))
  loaded = probe_model()
  summary = runs.run_scene(loaded, tiles.TileRunner(loaded, 3), opts)
  assert summary["tiles"] > 4
  umask022(opts.out)  # GeoTIFF, .npz and .h5 outputs: 0644 under umask 022
  if out_name.endswith(".tif"):
    with rasterio.open(opts.out) as f:
      out = np.moveaxis(f.read(), 0, -1)
  elif out_name.endswith(".h5"):
    with h5py.File(opts.out, "r") as f:
      assert f["fused"].shape == (1, 4, 96, 128)  # N,C,H,W like PanCollection files
      out = np.moveaxis(f["fused"][0], 0, -1)
  else:
    with np.load(opts.out) as f:
      out = f["fused"]
      assert str(f["crs_wkt"]) and tuple(f["transform"]) == landsat["pan_t"]
  expected = expected_probe_output(landsat["ms_array"], landsat["pan_array"])
  assert out.dtype == np.uint16 and out.shape == (96, 128, 4)
  # Rounded once, from float32 arithmetic: within 1 DN of the float64 value.
  assert np.max(np.abs(out - expected)) <= 1.0
  np.testing.assert_array_equal(out[..., :2], expected[..., :2])  # PAN and MS pass unchanged


def test_mat_scene_without_georeferencing(landsat, tmp_path):
  from scipy import io as sio  # pylint: disable=import-outside-toplevel
  path = tmp_path / "scene.mat"
  sio.savemat(path, {"ms": landsat["ms_array"], "pan": landsat["pan_array"]})
  opts = runs.RunOptions(ms=str(path), out=str(tmp_path / "o.npz"), progress=False,
                               tiling=checks.TilingOptions(64, 32, 8, 8))
  loaded = probe_model()
  runs.run_scene(loaded, tiles.TileRunner(loaded, 8), opts)
  with np.load(opts.out) as f:
    assert "crs_wkt" not in f.files and "transform" not in f.files
    out = f["fused"]
  expected = expected_probe_output(landsat["ms_array"], landsat["pan_array"])
  assert out.dtype == np.uint16 and np.max(np.abs(out - expected)) <= 1.0


def test_bands_flag_selects_and_orders_ms_bands(landsat, tmp_path):
  ms = landsat["ms_array"]
  ms6 = np.concatenate([ms, ms[..., :2] // 2], axis=-1)  # 6 bands
  ms_path = write_tif(tmp_path / "ms6.tif", ms6, landsat["crs"], landsat["ms_t"],
                      [f"b{i}" for i in range(1, 7)])
  opts = runs.RunOptions(ms=ms_path, pan=landsat["pan"], out=str(tmp_path / "o.tif"),
                               bands="6,3,2,1", progress=False,
                               tiling=checks.TilingOptions(64, 32, 8, 8))
  loaded = probe_model()
  runs.run_scene(loaded, tiles.TileRunner(loaded, 8), opts)
  with rasterio.open(opts.out) as f:
    assert f.descriptions == ("b6", "b3", "b2", "b1")
    out = np.moveaxis(f.read(), 0, -1)
  expected = expected_probe_output(ms6[..., [5, 2, 1, 0]], landsat["pan_array"])
  assert np.max(np.abs(out - expected)) <= 1.0


def test_failure_midway_leaves_no_output(landsat, monkeypatch):
  out = landsat["folder"] / "failed.tif"
  calls = []

  def flaky(*args, **kwargs):
    calls.append(1)  # called once per block of rows, after the network ran
    raise RuntimeError("disk on fire")
  monkeypatch.setattr(outputs, "finalize_rows", flaky)
  opts = runs.RunOptions(ms=landsat["ms"], pan=landsat["pan"], out=str(out),
                               progress=False, tiling=checks.TilingOptions(32, 16, 0, 4))
  loaded = probe_model()
  with pytest.raises(RuntimeError, match="disk on fire"):
    runs.run_scene(loaded, tiles.TileRunner(loaded, 2), opts)
  assert len(calls) == 1
  assert not out.exists()
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".failed.tif")]


def test_nodata_pixels_stay_nodata(landsat, tmp_path):
  ms = landsat["ms_array"].copy()
  ms[3, 5, :] = 0  # one MS pixel of fill
  pan = landsat["pan_array"]
  ms_path = write_tif(tmp_path / "ms.tif", ms, landsat["crs"], landsat["ms_t"], nodata=0)
  pan_path = write_tif(tmp_path / "pan.tif", pan, landsat["crs"], landsat["pan_t"])
  opts = runs.RunOptions(ms=ms_path, pan=pan_path, out=str(tmp_path / "o.tif"),
                               progress=False, tiling=checks.TilingOptions(32, 16, 8, 4))
  loaded = probe_model()
  runs.run_scene(loaded, tiles.TileRunner(loaded, 4), opts)
  with rasterio.open(opts.out) as f:
    assert f.nodata == 0
    out = np.moveaxis(f.read(), 0, -1)
  assert np.all(out[12:16, 20:24] == 0)
  assert np.all(out[:12] > 0) and np.all(out[16:] > 0)


def test_assess_reports_both_full_resolution_families(tmp_path, capsys):
  """--assess on a 128x128 scene: the toolbox's indexes then the reprojection protocol's, under
  their display names, equal to the indices of the written output, scene and whole-scene lms."""
  ms, pan, crs, ms_t, pan_t, _ = make_landsat_scene(128, 128, row=40, col=60)
  opts = runs.RunOptions(
      ms=write_tif(tmp_path / "ms.tif", ms, crs, ms_t), pan=write_tif(tmp_path / "pan.tif", pan,
                                                                      crs, pan_t),
      out=str(tmp_path / "o.tif"), assess=True, progress=False,
      tiling=checks.TilingOptions(64, 32, 8, 8))
  loaded = probe_model()
  summary = runs.run_scene(loaded, tiles.TileRunner(loaded, 8), opts)
  report = json.loads((tmp_path / "o.assess.json").read_text())
  assert report == json.loads(json.dumps(summary["assess"]))
  keys = metrics.FR_KEYS + metrics.REPROJECTION_KEYS
  assert tuple(report["indexes"]) == keys and tuple(report["names"]) == keys
  assert report["fr_indexes"] == "all" and report["region"] == "the whole scene"
  assert [report["names"][k] for k in metrics.REPROJECTION_KEYS] == [
      "R-Q4", "R-Q", "R-SAM", "R-ERGAS", "D_rho"]
  printed = capsys.readouterr().out
  assert printed.startswith("Full-resolution indexes of the whole scene (none, 16-bit): "
                            "D_lambda ")
  assert ", R-Q4 0." in printed and ", D_rho 0." in printed
  with rasterio.open(opts.out) as f:
    fused = np.moveaxis(f.read(), 0, -1).astype(np.float64)
  # As batches of one (the shapes the assessment compiled for).
  ms, pan = ms[None].astype(np.float64), pan[None, ..., None].astype(np.float64)
  with jax.enable_x64(True):
    lms = imaging.interp23tap(ms[0], 4)[None]
    expected = {**metrics.full_resolution_indexes(fused[None], ms, pan, sensor="none", bits=16,
                                                  lms=lms),
                **metrics.reprojection_indexes(fused[None], ms, pan, sensor="none")}
  for key in keys:
    assert report["indexes"][key] == pytest.approx(float(expected[key][0]), rel=1e-9), key


# ---------------------------------------------------------------------------------------------
# A real DCFNet, end to end


def _cli(*args):
  return pansharpen_cli.main([str(a) for a in args])


def test_geotiff_end_to_end_and_tiled_equals_untiled(landsat, dcfnet_file, capsys, umask022):
  out = landsat["folder"] / "sharp.tif"
  reference = write_tif(landsat["folder"] / "ref.tif", expected_probe_output(
      landsat["ms_array"], landsat["pan_array"]).astype(np.uint16), landsat["crs"],
                        landsat["pan_t"])
  rc = _cli("--checkpoint", dcfnet_file, "--ms", landsat["ms"], "--pan", landsat["pan"],
            "--out", out, "--tile", 64, "--overlap", 32, "--trim", 8, "--pad", 16,
            "--batch-size", 8, "--no-progress", "--preview", "--reference", reference,
            "--assess", "--crop", 64, "--fr-indexes", "toolbox",
            "--summary-json", landsat["folder"] / "summary.json")
  assert rc == 0, capsys.readouterr().err
  umask022(out, out.with_name("sharp.preview.png"), out.with_name("sharp.assess.json"),
           landsat["folder"] / "summary.json")
  with rasterio.open(out) as f, rasterio.open(landsat["pan"]) as p:
    assert f.crs == p.crs and f.transform == p.transform
    assert (f.count, f.height, f.width) == (4, 96, 128)
    assert f.dtypes == ("uint16",) * 4 and f.nodata == 0
    assert f.descriptions == landsat["names"]
    assert f.profile["tiled"] and f.profile["compress"] == "deflate"
    assert f.block_shapes[0] == (256, 256)
    tiled = np.moveaxis(f.read(), 0, -1).astype(np.float64)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(out.with_name("sharp.preview.png")) as png:
    assert png.width > 3 * 64  # lms | result | error map with colour bar, of the 64x64 crop
  report = json.loads(out.with_name("sharp.assess.json").read_text())
  # A 64x64 crop: the toolbox's family only (the reprojection needs 128x128, see below).
  assert tuple(report["indexes"]) == metrics.FR_KEYS and report["fr_indexes"] == "toolbox"
  assert report["crop"] == dict(row=16, col=32, height=64, width=64)
  assert "QNR" in capsys.readouterr().out

  # Untiled: the whole padded scene through the model in one call, then the padding cut off.
  loaded = inference.load(dcfnet_file)
  runner = tiles.TileRunner(loaded, 1, devices=jax.local_devices()[:1])
  scene = scenes.open_scene(landsat["ms"], landsat["pan"])
  grid = tiling.make_grid(96, 128, 1024, 32, 16)  # one tile holds everything
  assert grid.num_tiles == 1
  whole = runner.fetch(runner.submit(runner.gather(scene, grid, list(grid.tiles()))))
  untiled = whole[0, 16:-16, 16:-16].astype(np.float64)
  diff = np.abs(tiled - untiled)
  # Measured before rounding: max 1.47 DN, mean 0.17 DN, where this random network changes lms
  # by 1400 DN (std); tiles of 64 with overlap 16 / trim 4 give 22 DN (docs/pansharpen.md).
  # Rounding to uint16 adds up to 0.5 DN.
  assert diff.max() <= 2.5, diff.max()
  assert diff.mean() <= 0.5


def test_pancollection_h5_mode_is_accepted_by_evaluate(tmp_path, dcfnet_file, umask022):
  test_file = helpers_train.write_pancollection(tmp_path / "test.h5", 2, 64, 4, 2047.0,
                                                with_gt=True)
  with h5py.File(test_file, "r") as f:
    ms, pan, lms = f["ms"][()], f["pan"][()], f["lms"][()]
  meta_model = tmp_path / "m.npz"
  # The same network, declared for 11-bit data (PanCollection DN).
  loaded = inference.load(dcfnet_file)
  checkpoint.export_params(meta_model, loaded.module(), dict(
      model="dcfnet", num_bands=4, sensor="qb", img_range=2047.0, bits=11, ratio=4,
      residual=True))
  out = tmp_path / "fused.h5"
  assert _cli("--checkpoint", meta_model, "--ms", test_file, "--out", out, "--tile", 64,
              "--batch-size", 2, "--no-progress") == 0
  umask022(out)
  with h5py.File(out, "r") as f:
    fused = f["fused"][()]
  assert fused.shape == (2, 4, 64, 64) and fused.dtype == np.float32
  # Pad 0 and a 64-pixel tile: each image in one pass, as the official test does.
  runner = tiles.TileRunner(inference.load(meta_model), 2)
  direct = runner.fetch(runner.submit(dict(
      pan=pan[:, 0].astype(np.float32), lms=np.moveaxis(lms, 1, -1).astype(np.float32),
      ms=np.moveaxis(ms, 1, -1).astype(np.float32))))
  np.testing.assert_allclose(fused, np.moveaxis(direct, -1, 1), rtol=0, atol=1e-3)
  # The evaluation tool reads it against the reduced-resolution file's gt (no border cut: the
  # toolbox's 21-pixel cut needs images larger than these 64x64 ones).
  report = tmp_path / "eval.json"
  assert evaluate.main(["--fused", str(out), "--reference", str(test_file), "--sensor", "qb",
                        "--no-cut-bounds", "--json", str(report)]) == 0
  values = json.loads(report.read_text())
  assert values["num_images"] == 2 and np.all(np.isfinite(values["per_image"]["SAM"]))


def test_orbax_workdir_checkpoint_loads_like_the_export(tmp_path, dcfnet_file):
  """--checkpoint accepts a training workdir: the restored model equals the saved one."""

  exported = inference.load(dcfnet_file)
  config = config_lib.get_config("default")
  with config.unlocked():
    config.data.update(num_bands=4, sensor="none", img_range=IMG_RANGE, bits=16)
    config.checkpoint.async_save = False
  params, model_state = exported.params, exported.model_state
  tx, _ = optim.make_optimizer(config, 1)
  state = train_state.TrainState(step=jnp.asarray(7, jnp.int32), params=params,
                           model_state=model_state, opt_state=tx.init(params))
  manager = checkpoint.Checkpoints(tmp_path / "run" / "checkpoints", config)
  manager.save(7, state.to_dict(), {"epoch": 0})
  manager.close()
  for path in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "7"):
    loaded = inference.load(path)
    assert (loaded.num_bands, loaded.residual, loaded.img_range, loaded.bits) == (
        4, True, IMG_RANGE, 16)
    assert loaded.metadata["step"] == 7
    a = checkpoint.model_arrays(loaded.module())
    b = checkpoint.model_arrays(exported.module())
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Bad input through the command line (each with its message, exit code 2)


def test_bad_inputs(landsat, dcfnet_file, tmp_path, capsys):
  base = ["--checkpoint", dcfnet_file, "--no-progress"]

  def fails(match, *args):
    assert _cli(*base, *args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    return err

  out = tmp_path / "o.tif"
  # Wrong band count for the checkpoint (5 bands, a 4-band model), with the fix suggested.
  ms5, pan5, crs, ms_t, pan_t, _ = make_landsat_scene(32, 32)
  ms5 = np.concatenate([ms5, ms5[..., :1]], axis=-1)
  ms5_path = write_tif(tmp_path / "ms5.tif", ms5, crs, ms_t)
  pan_path = write_tif(tmp_path / "pan32.tif", pan5, crs, pan_t)
  fails("has 5 bands but the checkpoint", "--ms", ms5_path, "--pan", pan_path, "--out", out)
  # Not co-registered: PAN pixel size x 4 != MS pixel size, and shifted origins.
  bad_t = (ms_t[0] * 2,) + ms_t[1:]
  bad_path = write_tif(tmp_path / "ms_bad.tif", ms5[..., :4], crs, bad_t)
  fails("not co-registered by the ratio 4", "--ms", bad_path, "--pan", pan_path, "--out", out)
  shifted = ms_t[:2] + (ms_t[2] + 30.0,) + ms_t[3:]
  shift_path = write_tif(tmp_path / "ms_shift.tif", ms5[..., :4], crs, shifted)
  fails("more than half a PAN pixel", "--ms", shift_path, "--pan", pan_path, "--out", out)
  # Sizes that disagree.
  fails("PAN = 4 x MS exactly", "--ms", landsat["ms"], "--pan", pan_path, "--out", out)
  # Wrong dtype / range: 8-bit data scaled to [0, 1] floats.
  scaled = write_tif(tmp_path / "ms_f.tif", (ms5[..., :4] / 65535.0).astype(np.float32), crs,
                     ms_t)
  pan_f = write_tif(tmp_path / "pan_f.tif", (pan5 / 65535.0).astype(np.float32), crs, pan_t)
  fails("looks like [0, 1] data", "--ms", scaled, "--pan", pan_f, "--out", out)
  cplx = write_tif(tmp_path / "ms_c.tif", ms5[..., :4].astype(np.complex64), crs, ms_t)
  fails("dtype complex64", "--ms", cplx, "--pan", pan_path, "--out", out)
  # Unreadable files.
  junk = tmp_path / "junk.tif"
  junk.write_bytes(b"not a tiff at all")
  fails("cannot be read as a raster", "--ms", junk, "--pan", pan_path, "--out", out)
  fails("no such file", "--ms", tmp_path / "missing.tif", "--pan", pan_path, "--out", out)
  fails("--checkpoint", "--ms", landsat["ms"], "--pan", landsat["pan"], "--out", out,
        "--checkpoint", junk)
  # A reference that does not match the output.
  fails("expected the output's (96, 128, 4)", "--ms", landsat["ms"], "--pan", landsat["pan"],
        "--out", tmp_path / "r.tif", "--reference", pan_path)
  # An existing output without --overwrite is refused and left untouched.
  out.write_bytes(b"keep me")
  fails("exists; pass --overwrite", "--ms", landsat["ms"], "--pan", landsat["pan"], "--out", out)
  assert out.read_bytes() == b"keep me"
  # --assess of a 96x128 scene: too small for the reprojection family (128x128), before any work.
  fails("images of 96x128 (MS 24x32) are too small for the 32x32 blocks of R-Q2n/R-Q", "--ms",
        landsat["ms"], "--pan", landsat["pan"], "--out", tmp_path / "a.tif", "--assess")
  assert not (tmp_path / "a.tif").exists()
  # Tiling numbers that are not multiples of 4.
  fails("multiple of 4", "--ms", landsat["ms"], "--pan", landsat["pan"], "--out",
        tmp_path / "x.tif", "--tile", 62)
  assert not list(tmp_path.glob(".*.tmp"))
