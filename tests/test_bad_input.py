"""Bad input to every command-line tool: one case per line of `CASES`.

Each case runs a tool's `main(argv)` in-process on the inputs users get wrong (wrong paths and
kinds of files, damaged checkpoints, scenes that do not fit the model, MS/PAN pairs that do not
cover the same ground, pickles, outputs that cannot be written) and checks the contract of
`dcfnet_jax.cli`: the exit status (2 bad input, 1 a run that could not finish, e.g. a full
disk), exactly one line `error: ...` on stderr that names the file and what was expected (the
case's regex), no traceback, and nothing written or modified: the files of the case's folder
and of the shared inputs are byte-identical afterwards (no output, no temporary file, an
existing output intact).

Simulations: a read-only folder is chmod 0555 and an unreadable file chmod 0 (root ignores
both, so for root `os.access` answers as the kernel would for anyone else); a full disk is
RLIMIT_FSIZE, which makes every write past the limit fail with EFBIG as a full disk fails with
ENOSPC (with SIGXFSZ ignored, so that the write fails instead of the process).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import pathlib
import pickle
import re
import resource
import shutil
import signal
from collections.abc import Callable

import h5py
import numpy as np
import pytest
from flax import nnx

from dcfnet_jax import checkpoint, config_lib, inference, models, optim, raster, scenes
from dcfnet_jax import train_state
from dcfnet_jax.pansharpen import checks

IMG = 64  # PAN side of the test scenes (MS 16); uint8 DN of an 8-bit sensor
CRS, OTHER_CRS = "EPSG:32630", "EPSG:32631"
PAN_T = (15.0, 0.0, 500000.0, 0.0, -15.0, 4000000.0)
MS_T = (60.0, 0.0, 500000.0, 0.0, -60.0, 4000000.0)

TOOLS = {
    "main": "dcfnet_jax.main", "evaluate": "dcfnet_jax.evaluate",
    "pansharpen": "dcfnet_jax.pansharpen.cli", "compare": "dcfnet_jax.compare",
    "classical": "dcfnet_jax.classical.cli", "convert": "dcfnet_jax.convert",
    "bench": "dcfnet_jax.bench", "summary": "dcfnet_jax.summary",
    "make_dataset": "dcfnet_jax.data.make_dataset", "tfds_builder": "dcfnet_jax.data.tfds_builder",
    "make_demo": "dcfnet_jax.data.make_demo",
}


# ---------------------------------------------------------------------------------------------
# The corpus: small files, made once per test process


def export_model(path: pathlib.Path, num_bands: int = 4) -> pathlib.Path:
  """A PNN exported like a trained model of the demo's 8-bit, 4-band data (tiny, no compile)."""
  config = config_lib.get_config("demo")
  with config.unlocked():
    config.model.name = "pnn"
    config.data.num_bands = num_bands
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  arrays = {"/".join(map(str, p)): np.zeros(v.get_value().shape, np.float32)  # output = lms
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState)))}
  checkpoint.assign_arrays(model, arrays, "test model")
  return checkpoint.export_params(path, model, checkpoint.metadata_from_config(config, True))


def pancollection(n=2, c=4, size=32, ratio=4, **override) -> dict[str, np.ndarray]:
  """N,C,H,W float32 DN arrays of a consistent PanCollection file, then `override`."""
  rng = np.random.default_rng(0)
  gt = rng.uniform(20, 230, (n, c, size, size)).astype(np.float32)
  ms = gt.reshape(n, c, size // ratio, ratio, size // ratio, ratio).mean((3, 5))
  arrays = dict(gt=gt, ms=ms, lms=ms.repeat(ratio, 2).repeat(ratio, 3),
                pan=gt.mean(1, keepdims=True))
  arrays.update(override)
  return {k: v for k, v in arrays.items() if v is not None}


def write_h5(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
  with h5py.File(path, "w") as f:
    for key, value in arrays.items():
      f[key] = value
  return path


class Corpus:
  """The input files, by name, in one folder (`self.dir`); made once per test process."""

  def __init__(self, folder: pathlib.Path):
    self.dir = folder
    d = folder
    data = export_model(d / "ckpt.npz").read_bytes()
    export_model(d / "ckpt8.npz", num_bands=8)
    (d / "trunc.npz").write_bytes(data[:len(data) // 2])
    (d / "empty.npz").write_bytes(b"")
    (d / "text.npz").write_text("weights = [1, 2, 3]\n")
    (d / "pickle.npz").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    np.savez(d / "objects.npz", a=np.array([{"x": 1}, None], dtype=object))
    with open(d / "single.npz", "wb") as f:
      np.save(f, np.zeros(3))
    np.savez(d / "nometa.npz", a=np.zeros(3))
    np.savez(d / "badmeta.npz", __metadata__=np.frombuffer(b"{not json", np.uint8))
    (d / "folder.npz").mkdir()
    (d / "folder.tif").mkdir()
    (d / "folder_cfg").mkdir()
    (d / "text.h5").write_text("gt ms lms pan\n")
    (d / "text.tif").write_text("a tiff? no.\n")
    (d / "text.pth").write_text("a torch checkpoint? no.\n")
    (d / "bad_syntax.py").write_text("def get_config(:\n")
    (d / "binary.txt").write_bytes(bytes(range(256)))
    # Scenes: a co-registered 8-bit GeoTIFF pair and its variants.
    rng = np.random.default_rng(1)
    ms = rng.integers(20, 230, (IMG // 4, IMG // 4, 4)).astype(np.uint8)
    pan = rng.integers(20, 230, (IMG, IMG)).astype(np.uint8)

    def geo(name, x, crs=CRS, t=MS_T, **kw):
      raster.write_geotiff(d / name, x, crs=crs, transform=t, **kw)

    geo("ms.tif", ms)
    geo("pan.tif", pan, t=PAN_T)
    geo("ms_crs.tif", ms, crs=OTHER_CRS)
    geo("ms_shift.tif", ms, t=MS_T[:2] + (MS_T[2] + 120.0,) + MS_T[3:])  # 8 PAN pixels
    geo("ms_nodata.tif", np.zeros_like(ms), nodata=0)
    geo("ms5.tif", np.concatenate([ms, ms[..., :1]], -1))
    geo("ms16.tif", ms.astype(np.uint16) * 16)  # 12-bit DN for an 8-bit model
    geo("pan2.tif", np.stack([pan, pan], -1), t=PAN_T)
    np.savez(d / "scene.npz", ms=ms, pan=pan)
    np.savez(d / "zeros.npz", ms=np.zeros_like(ms), pan=pan)
    half = IMG // 8  # MS columns; the PAN's valid half is the other one
    np.savez(d / "apart.npz", ms=np.concatenate([ms[:, :half], 0 * ms[:, half:]], 1),
             pan=np.concatenate([0 * pan[:, :4 * half], pan[:, 4 * half:]], 1))
    np.savez(d / "scene_obj.npz", ms=np.array([ms, None], dtype=object), pan=pan)
    np.savez(d / "ms_geo.npz", ms=ms, crs_epsg=32630, ms_transform=np.array(MS_T))
    np.savez(d / "pan_geo_31.npz", pan=pan, crs_epsg=32631, pan_transform=np.array(PAN_T))
    np.savez(d / "pan_geo_shift.npz", pan=pan, crs_epsg=32630,
             pan_transform=np.array(PAN_T[:2] + (PAN_T[2] - 90.0,) + PAN_T[3:]))
    np.savez(d / "pan_geo_badcrs.npz", pan=pan, crs_epsg="UTM 30", pan_transform=np.array(PAN_T))
    # PanCollection files (N,C,H,W) and fused files.
    write_h5(d / "ref.h5", pancollection())
    write_h5(d / "bad_n.h5", pancollection(ms=pancollection(n=3)["ms"]))
    write_h5(d / "bad_ratio.h5", pancollection(ms=pancollection(ratio=2)["ms"], lms=None))
    np.savez(d / "str_gt.npz", gt=np.full((2, 4, 32, 32), "x"), ms=pancollection()["ms"])
    write_h5(d / "fused.h5", dict(fused=pancollection()["gt"]))
    (d / "tfds_manual").mkdir()
    write_h5(d / "tfds_manual" / "train_qb.h5", pancollection(ms=pancollection(n=3)["ms"]))
    (d / "demo_crops").mkdir()
    np.savez(d / "demo_crops" / "l7_fusebox_99_p001r001_20000101.npz", ms=ms, pan=pan)

  @functools.cached_property
  def orbax_run(self) -> pathlib.Path:
    """A training workdir with one Orbax checkpoint (step 7) of the exported PNN."""
    exported = inference.load(self.dir / "ckpt.npz")
    config = config_lib.get_config("demo")
    with config.unlocked():
      config.model.name = "pnn"
      config.checkpoint.async_save = False
    tx, _ = optim.make_optimizer(config, 1)
    state = train_state.TrainState(step=np.int32(7), params=exported.params,
                                   model_state=exported.model_state,
                                   opt_state=tx.init(exported.params))
    manager = checkpoint.Checkpoints(self.dir / "run" / "checkpoints", config)
    manager.save(7, state.to_dict(), {"epoch": 0})
    manager.close()
    return self.dir / "run"

  def _damaged_run(self, name: str, damage: Callable[[pathlib.Path], None]) -> str:
    run = self.dir / name
    shutil.copytree(self.orbax_run, run)
    damage(run / "checkpoints" / "7")
    return str(run)

  @functools.cached_property
  def orbax_config(self) -> str:
    """The run with its saved config cut short."""
    return self._damaged_run("run_config", lambda step: (step / "config" / "metadata").write_text(
        "{\"model\": {"))

  @functools.cached_property
  def orbax_data(self) -> str:
    """The run with every data file of its state truncated."""
    def cut(step):
      for f in (step / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[:10])
    return self._damaged_run("run_data", cut)

  @functools.cached_property
  def module_pth(self) -> str:
    """A whole pickled nn.Module (what torch.save(model) writes), not a state_dict."""
    torch = importlib.import_module("torch")
    path = self.dir / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
  return Corpus(tmp_path_factory.mktemp("corpus"))


# ---------------------------------------------------------------------------------------------
# The table: (id, arguments, exit status, regex of the error line[, options]). The id's prefix
# names the tool (`PREFIXES`); in the arguments {c} is the corpus folder, {o} the case's own
# output folder, and {ps}, {ck}, {scene}, {none}, {demo} the shorthands of `SHORTHANDS`.
# Options: existing=NAME (an output that exists before and must stay byte-identical),
# readonly=True (the folder {o}/ro is read-only), unreadable=True ({o}/secret.h5 may not be
# read), fsize=BYTES (a full disk: RLIMIT_FSIZE).

PREFIXES = {"ev": "evaluate", "ps": "pansharpen", "main": "main", "cmp": "compare",
            "cl": "classical", "cv": "convert", "bench": "bench", "summary": "summary",
            "md": "make_dataset", "tfds": "tfds_builder", "demo": "make_demo"}
SHORTHANDS = {"ps": "--no-progress --checkpoint {c}/ckpt.npz", "ck": "--no-progress --checkpoint",
              "scene": "--ms {c}/ms.tif --pan {c}/pan.tif", "none": "--sensor none",
              "demo": "--config demo"}

CASES = [
    # evaluate: fused and reference files, --json
    ("ev-fused-missing", "--fused {o}/nope.h5 --reference {c}/ref.h5 {none}",
     2, r"no such file: .*nope\.h5"),
    ("ev-fused-folder", "--fused {c}/folder.npz --reference {c}/ref.h5 {none}",
     2, r"folder\.npz is a folder; expected a file"),
    ("ev-fused-empty", "--fused {c}/empty.npz --reference {c}/ref.h5 {none}",
     2, r"empty\.npz is empty \(0 bytes\)"),
    ("ev-fused-truncated", "--fused {c}/trunc.npz --reference {c}/ref.h5 {none}",
     2, r"could not read .*trunc\.npz as \.npz \(truncated or damaged\?\)"),
    ("ev-fused-text", "--fused {c}/text.npz --reference {c}/ref.h5 {none}",
     2, r"text\.npz as \.npz: it is not a zip archive \(it looks like a text file\)"),
    ("ev-fused-pickle", "--fused {c}/pickle.npz --reference {c}/ref.h5 {none}",
     2, r"pickle\.npz as \.npz: .*a Python pickle, which dcfnet_jax never loads"),
    ("ev-fused-objects", "--fused {c}/objects.npz --reference {c}/ref.h5 {none}",
     2, r"objects\.npz: key 'a' holds Python objects .*never unpickles files "
        r"\(allow_pickle=False\)"),
    ("ev-fused-npy", "--fused {c}/single.npz --reference {c}/ref.h5 {none}",
     2, r"single\.npz as \.npz: .*a single NumPy array \(\.npy\)"),
    ("ev-fused-suffix", "--fused {c}/text.tif --reference {c}/ref.h5 {none}",
     2, r"text\.tif: unknown file type '\.tif'; supported: \.h5"),
    ("ev-fused-unreadable", "--fused {o}/secret.h5 --reference {c}/ref.h5 {none}",
     2, r"secret\.h5 is not readable \(permission denied\)", dict(unreadable=True)),
    ("ev-ref-text-h5", "--fused {c}/fused.h5 --reference {c}/text.h5 {none}",
     2, r"could not read .*text\.h5 as HDF5: it has no HDF5 signature "
        r"\(it looks like a text file\)"),
    ("ev-ref-ms-count", "--fused {c}/fused.h5 --reference {c}/bad_n.h5 {none}",
     2, r"bad_n\.h5: the number of examples N differs between keys: .*'ms': 3"),
    ("ev-ref-ratio", "--fused {c}/fused.h5 --reference {c}/bad_ratio.h5 {none}",
     2, r"bad_ratio\.h5: PAN size \(32, 32\) is not ratio 4 x MS size \(16, 16\)"),
    ("ev-ref-strings", "--fused {c}/fused.h5 --reference {c}/str_gt.npz {none}",
     2, r"str_gt\.npz: key 'gt' has dtype <U1, expected a real numeric dtype"),
    ("ev-json-is-input", "--fused {c}/fused.h5 --reference {c}/ref.h5 --json {c}/fused.h5 {none}",
     2, r"--json .*fused\.h5 is also an input file"),
    ("ev-json-no-folder",
     "--fused {c}/fused.h5 --reference {c}/ref.h5 --json {o}/nope/r.json {none}",
     2, r"--json .*r\.json: the folder .*nope does not exist"),
    ("ev-json-folder", "--fused {c}/fused.h5 --reference {c}/ref.h5 --json {o} {none}",
     2, r"--json .* is a folder; expected a file path"),
    ("ev-json-read-only", "--fused {c}/fused.h5 --reference {c}/ref.h5 --json {o}/ro/r.json {none}",
     2, r"--json .*r\.json: the folder .*ro is not writable", dict(readonly=True)),
    # pansharpen: checkpoints
    ("ps-ckpt-truncated", "{ck} {c}/trunc.npz {scene} --out {o}/o.tif",
     2, r"--checkpoint .*trunc\.npz: .*truncated or damaged.*expected an exported parameters file"),
    ("ps-ckpt-empty", "{ck} {c}/empty.npz {scene} --out {o}/o.tif",
     2, r"empty\.npz is empty \(0 bytes\); expected an exported parameters file"),
    ("ps-ckpt-text", "{ck} {c}/text.npz {scene} --out {o}/o.tif",
     2, r"text\.npz as \.npz: it is not a zip archive \(it looks like a text file\)"),
    ("ps-ckpt-pickle", "{ck} {c}/pickle.npz {scene} --out {o}/o.tif",
     2, r"pickle\.npz as \.npz: .*a Python pickle, which dcfnet_jax never loads"),
    ("ps-ckpt-objects", "{ck} {c}/objects.npz {scene} --out {o}/o.tif",
     2, r"objects\.npz: key 'a' holds Python objects"),
    ("ps-ckpt-npy", "{ck} {c}/single.npz {scene} --out {o}/o.tif",
     2, r"single\.npz as \.npz: .*a single NumPy array"),
    ("ps-ckpt-no-metadata", "{ck} {c}/nometa.npz {scene} --out {o}/o.tif",
     2, r"nometa\.npz has no '__metadata__' entry and no .*nometa\.json"),
    ("ps-ckpt-bad-metadata", "{ck} {c}/badmeta.npz {scene} --out {o}/o.tif",
     2, r"badmeta\.npz: the metadata .* is not valid JSON"),
    ("ps-ckpt-folder", "{ck} {c}/folder.npz {scene} --out {o}/o.tif",
     2, r"folder\.npz: not an exported \.npz nor a training checkpoint directory"),
    ("ps-ckpt-missing", "{ck} {o}/nope.npz {scene} --out {o}/o.tif",
     2, r"nope\.npz: no such file or directory \(expected an exported \.npz"),
    ("ps-orbax-config", "{ck} {orbax_config} {scene} --out {o}/o.tif",
     2, r"run_config cannot be read, it is damaged or incomplete: JSONDecodeError"),
    ("ps-orbax-data", "{ck} {orbax_data} {scene} --out {o}/o.tif",
     2, r"run_data \(step 7\) cannot be read, it is damaged or incomplete: ValueError"),
    ("ps-ckpt-bands", "{ck} {c}/ckpt8.npz {scene} --out {o}/o.tif",
     2, r"the MS has 4 bands but the checkpoint .*ckpt8\.npz is a 8-band model"),
    # pansharpen: scenes that do not fit the model, or MS and PAN that do not fit each other
    ("ps-ms-bands", "{ps} --ms {c}/ms5.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"ms5\.tif .*the MS has 5 bands but the checkpoint .* is a 4-band model"),
    ("ps-bit-depth", "{ps} --ms {c}/ms16.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"ms16\.tif .*values up to 3\d+ DN, more than 1\.05 x img_range 255 = 267\.75 \(8-bit\)"),
    ("ps-ms-all-nodata", "{ps} --ms {c}/ms_nodata.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"ms_nodata\.tif .*the MS holds only nodata \(0\): no pixel to sharpen"),
    ("ps-ms-all-zeros", "{ps} --ms {c}/zeros.npz --out {o}/o.tif",
     2, r"zeros\.npz: the MS holds only zeros: no image data"),
    ("ps-nodata-apart", "{ps} --ms {c}/apart.npz --nodata 0 --out {o}/o.tif",
     2, r"apart\.npz: every output pixel would be nodata: the valid pixels of the MS and of the "
        r"PAN do not overlap"),
    ("ps-crs", "{ps} --ms {c}/ms_crs.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"ms_crs\.tif .*different coordinate reference systems \(MS EPSG:32631, PAN EPSG:32630\)"),
    ("ps-extent", "{ps} --ms {c}/ms_shift.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"ms_shift\.tif .*upper-left corners differ by \(\+8, \+0\) PAN pixels"),
    ("ps-npz-crs", "{ps} --ms {c}/ms_geo.npz --pan {c}/pan_geo_31.npz --out {o}/o.tif",
     2, r"ms_geo\.npz .*different coordinate reference systems \(MS EPSG:32630, PAN EPSG:32631\)"),
    ("ps-npz-extent", "{ps} --ms {c}/ms_geo.npz --pan {c}/pan_geo_shift.npz --out {o}/o.tif",
     2, r"ms_geo\.npz .*upper-left corners differ by \(\+6, \+0\) PAN pixels"),
    ("ps-npz-bad-crs", "{ps} --ms {c}/ms_geo.npz --pan {c}/pan_geo_badcrs.npz --out {o}/o.tif",
     2, r"pan_geo_badcrs\.npz: 'crs_epsg' is <U6 \(\); expected one integer EPSG code"),
    ("ps-scene-objects", "{ps} --ms {c}/scene_obj.npz --out {o}/o.tif",
     2, r"scene_obj\.npz: key 'ms' holds Python objects"),
    ("ps-scene-truncated", "{ps} --ms {c}/trunc.npz --out {o}/o.tif",
     2, r"trunc\.npz as \.npz \(truncated or damaged\?\)"),
    ("ps-ms-folder", "{ps} --ms {c}/folder.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"--ms .*folder\.tif is a folder; expected a file"),
    ("ps-ms-text", "{ps} --ms {c}/text.tif --pan {c}/pan.tif --out {o}/o.tif",
     2, r"--ms .*text\.tif: cannot be read as a raster"),
    ("ps-pan-two-bands", "{ps} --ms {c}/ms.tif --pan {c}/pan2.tif --out {o}/o.tif",
     2, r"--pan .*pan2\.tif: has 2 bands; a PAN image has 1"),
    ("ps-sensor", "{ps} {scene} --out {o}/o.tif --sensor wv9",
     2, r"--sensor: unknown sensor 'wv9'"),
    ("ps-h5-ms-count", "{ps} --ms {c}/bad_n.h5 --out {o}/o.h5",
     2, r"bad_n\.h5: the number of examples N differs between keys"),
    ("ps-tif-and-npz", "{ps} --ms {c}/ms.tif --pan {c}/scene.npz --out {o}/o.tif",
     2, r"--ms .*ms\.tif and --pan .*scene\.npz: give two GeoTIFFs, or two array files"),
    # pansharpen: outputs, a full disk
    ("ps-out-is-input", "{ps} {scene} --out {c}/ms.tif --overwrite",
     2, r"--out .*ms\.tif is also an input file"),
    ("ps-out-is-checkpoint", "{ps} {scene} --out {c}/ckpt.npz --overwrite",
     2, r"--out .*ckpt\.npz is also an input file"),
    ("ps-out-exists", "{ps} {scene} --out {o}/keep.tif",
     2, r"--out .*keep\.tif exists; pass --overwrite to replace it", dict(existing="keep.tif")),
    ("ps-out-folder", "{ps} {scene} --out {c}/folder.tif --overwrite",
     2, r"--out .*folder\.tif is a folder; expected a file path"),
    ("ps-out-no-folder", "{ps} {scene} --out {o}/nope/o.tif",
     2, r"--out .*o\.tif: the folder .*nope does not exist"),
    ("ps-out-read-only", "{ps} {scene} --out {o}/ro/o.tif",
     2, r"--out .*o\.tif: the folder .*ro is not writable", dict(readonly=True)),
    ("ps-summary-no-folder", "{ps} {scene} --out {o}/o.tif --summary-json {o}/nope/s.json",
     2, r"--summary-json .*s\.json: the folder .*nope does not exist"),
    ("ps-disk-full", "{ps} {scene} --out {o}/keep.tif --overwrite",
     1, r"writing .*keep\.tif failed: .*; .*keep\.tif keeps its previous content and no "
        r"temporary file is left", dict(existing="keep.tif", fsize=2048)),
    # dcfnet-train (main)
    ("main-config-missing", "--config {o}/nope.py --workdir {o}/w",
     2, r"--config .*nope\.py: no such config file"),
    ("main-config-folder", "--config {c}/folder_cfg --workdir {o}/w",
     2, r"--config .*folder_cfg is a folder; expected a config file"),
    ("main-config-syntax", "--config {c}/bad_syntax.py --workdir {o}/w",
     2, r"--config .*bad_syntax\.py: the file fails to run: SyntaxError"),
    ("main-train-text-h5", "{demo} --config.data.train_file {c}/text.h5 --workdir {o}/w",
     2, r"text\.h5: cannot be opened as HDF5"),
    ("main-train-folder", "{demo} --config.data.train_file {c}/folder.npz --workdir {o}/w",
     2, r"training file '.*folder\.npz' \(config\.data\.train_file\) is a folder; expected a file"),
    ("main-train-ms-count", "{demo} --config.data.train_file {c}/bad_n.h5 --workdir {o}/w",
     2, r"bad_n\.h5: the number of examples N differs between keys"),
    ("main-eval-truncated",
     "{demo} --config.mode evaluate --checkpoint {c}/trunc.npz --workdir {o}/w",
     2, r"trunc\.npz as \.npz \(truncated or damaged\?\).*expected an exported parameters file"),
    ("main-eval-bands", "{demo} --config.mode evaluate --checkpoint {c}/ckpt8.npz --workdir {o}/w",
     2, r"ckpt8\.npz holds a model for 8 bands, the config's data have 4"),
    ("main-workdir-file", "{demo} --workdir {c}/ckpt.npz",
     2, r"--workdir .*ckpt\.npz is a file; expected a folder"),
    ("main-workdir-read-only", "{demo} --workdir {o}/ro/w",
     2, r"--workdir .*w: the folder .*ro is not writable", dict(readonly=True)),
    # compare
    ("cmp-ckpt-truncated", "{demo} --methods pnn --checkpoints pnn={c}/trunc.npz --out {o}/cmp",
     2, r"--checkpoints pnn=.*trunc\.npz: .*truncated or damaged"),
    ("cmp-ckpt-missing", "{demo} --methods pnn --checkpoints pnn={o}/nope.npz --out {o}/cmp",
     2, r"--checkpoints pnn=.*nope\.npz: checkpoint .*nope\.npz: no such file or directory"),
    ("cmp-out-file", "{demo} --methods exp --out {c}/ckpt.npz",
     2, r"--out .*ckpt\.npz is a file; expected a folder"),
    ("cmp-test-file",
     "{demo} --methods exp --config.data.test_reduced_file {c}/bad_ratio.h5 --out {o}/cmp",
     2, r"bad_ratio\.h5: PAN size \(32, 32\) is not ratio 4 x MS size \(16, 16\)"),
    # classical
    ("cl-input-missing", "exp --input {o}/nope.h5 --out {o}/o.h5",
     2, r"--input .*nope\.h5: no such file"),
    ("cl-input-folder", "exp --input {c}/folder.npz --out {o}/o.h5",
     2, r"--input .*folder\.npz is a folder; expected a file"),
    ("cl-input-text", "exp --input {c}/text.h5 --out {o}/o.h5",
     2, r"--input .*text\.h5: not an HDF5 file \(it looks like a text file\)"),
    ("cl-input-ms-count", "exp --input {c}/bad_n.h5 --out {o}/o.h5",
     2, r"bad_n\.h5: the number of examples N differs between keys"),
    ("cl-input-ratio", "exp --input {c}/bad_ratio.h5 --out {o}/o.h5",
     2, r"bad_ratio\.h5: PAN size \(32, 32\) is not ratio 4 x MS size \(16, 16\)"),
    ("cl-out-is-input", "exp --input {c}/ref.h5 --out {c}/ref.h5 --overwrite",
     2, r"--out .*ref\.h5 is also an input file"),
    ("cl-out-exists", "exp --input {c}/ref.h5 --out {o}/keep.h5",
     2, r"--out .*keep\.h5 exists; pass --overwrite", dict(existing="keep.h5")),
    ("cl-out-no-folder", "exp --input {c}/ref.h5 --out {o}/nope/o.h5",
     2, r"--out .*o\.h5: the folder .*nope does not exist"),
    ("cl-out-read-only", "exp --input {c}/ref.h5 --out {o}/ro/o.h5",
     2, r"--out .*o\.h5: the folder .*ro is not writable", dict(readonly=True)),
    ("cl-disk-full", "exp --input {c}/ref.h5 --out {o}/keep.h5 --overwrite {none}",
     1, r"writing .*keep\.h5 failed: the file is larger than the file-size limit allows; "
        r".*keep\.h5 keeps its previous content", dict(existing="keep.h5", fsize=4096)),
    # convert
    ("cv-from-missing", "--from-torch {o}/nope.pth --out {o}/x --sensor qb",
     2, r"PyTorch checkpoint .*nope\.pth: no such file"),
    ("cv-from-text", "--from-torch {c}/text.pth --out {o}/x --sensor qb",
     2, r"text\.pth could not be read with torch\.load\(weights_only=True\)"),
    ("cv-from-module", "--from-torch {module_pth} --out {o}/x --sensor qb",
     2, r"module\.pth could not be read with torch\.load\(weights_only=True\).*whole "
        r"pickled nn\.Module"),
    ("cv-to-truncated", "--to-torch {c}/trunc.npz --out {o}/x.pth",
     2, r"trunc\.npz as \.npz \(truncated or damaged\?\)"),
    ("cv-to-objects", "--to-torch {c}/objects.npz --out {o}/x.pth",
     2, r"objects\.npz: key 'a' holds Python objects"),
    ("cv-to-not-dcfnet", "--to-torch {c}/ckpt.npz --out {o}/x.pth",
     2, r"ckpt\.npz holds a 'pnn' model; only dcfnet has an official PyTorch layout"),
    ("cv-out-is-input", "--to-torch {c}/ckpt.npz --out {c}/ckpt.npz",
     2, r"--out .*ckpt\.npz is also an input file"),
    ("cv-out-no-folder", "--to-torch {c}/ckpt.npz --out {o}/nope/x.pth",
     2, r"--out .*x\.pth: the folder .*nope does not exist"),
    # bench (refused before any benchmark runs)
    ("bench-json-no-folder", "--frameworks jax --json {o}/nope/b.json",
     2, r"--json .*b\.json: the folder .*nope does not exist"),
    ("bench-json-folder", "--frameworks jax --json {o}",
     2, r"--json .* is a folder; expected a file path"),
    # summary
    ("summary-config-missing", "--config {o}/nope.py",
     2, r"--config .*nope\.py: no such config file"),
    ("summary-model-unknown", "{demo} --config.model.name nonet",
     2, r"unknown config\.model\.name 'nonet'; known models: "),
    # make_dataset
    ("md-ms-missing", "--ms {o}/nope.tif --pan {c}/pan.tif {none} --out {o}/ds",
     2, r"--ms .*nope\.tif: no such file"),
    ("md-ms-folder", "--ms {c}/folder.tif --pan {c}/pan.tif {none} --out {o}/ds",
     2, r"--ms .*folder\.tif is a folder; expected a file"),
    ("md-ms-text", "--ms {c}/text.tif --pan {c}/pan.tif {none} --out {o}/ds",
     2, r"--ms .*text\.tif: cannot be read as a raster"),
    ("md-crs", "--ms {c}/ms_crs.tif --pan {c}/pan.tif {none} --out {o}/ds",
     2, r"ms_crs\.tif .*different coordinate reference systems \(MS EPSG:32631, PAN EPSG:32630\)"),
    ("md-extent", "--ms {c}/ms_shift.tif --pan {c}/pan.tif {none} --out {o}/ds",
     2, r"ms_shift\.tif .*upper-left corners differ by \(\+8, \+0\) PAN pixels"),
    ("md-bit-depth", "--ms {c}/ms16.tif --pan {c}/pan.tif {none} --bits 8 --out {o}/ds",
     2, r"ms16\.tif .*values up to 3\d+ DN, more than 1\.05 x img_range 255 = 267\.75 \(8-bit\)"),
    ("md-objects", "--ms {c}/scene_obj.npz {none} --out {o}/ds",
     2, r"scene_obj\.npz: key 'ms' holds Python objects"),
    ("md-out-file", "{scene} {none} --out {c}/ckpt.npz",
     2, r"--out .*ckpt\.npz is a file; expected a folder"),
    ("md-out-read-only", "{scene} {none} --out {o}/ro/ds",
     2, r"--out .*ds: the folder .*ro is not writable", dict(readonly=True)),
    ("md-list-missing", "--list {o}/nope.txt {none} --out {o}/ds",
     2, r"--list .*nope\.txt: no such file"),
    ("md-list-binary", "--list {c}/binary.txt {none} --out {o}/ds",
     2, r"--list .*binary\.txt: not a text file"),
    # tfds_builder
    ("tfds-no-manual-dir", "--config qb --data-dir {o}/tfds",
     2, r"--config qb needs --manual-dir"),
    ("tfds-manual-dir-missing", "--config qb --manual-dir {o}/nope --data-dir {o}/tfds",
     2, r"--manual-dir .*nope: no such folder"),
    ("tfds-bad-file", "--config qb --manual-dir {c}/tfds_manual --data-dir {o}/tfds",
     2, r"train_qb\.h5: the number of examples N differs between keys"),
    ("tfds-data-dir-file", "{demo} --data-dir {c}/ckpt.npz",
     2, r"--data-dir .*ckpt\.npz is a file; expected a folder"),
    # make_demo
    ("demo-data-dir-missing", "--data-dir {o}/nope --out {o}/demo",
     2, r"--data-dir .*nope: no such folder"),
    ("demo-wrong-crop", "--data-dir {c}/demo_crops --out {o}/demo",
     2, r"l7_fusebox_99_p001r001_20000101\.npz: not one of the demo's crops"),
    ("demo-not-a-clone", "--fusebox {c}/folder_cfg --out {o}/demo",
     2, r"locations\.txt: no such file; --fusebox must be a clone of"),
    ("demo-out-file", "--data-dir {c}/demo_crops --out {c}/ckpt.npz",
     2, r"--out .*ckpt\.npz is a file; expected a folder"),
]


# ---------------------------------------------------------------------------------------------
# Running a case


def arguments(template: str, corpus: Corpus, out: pathlib.Path) -> list[str]:
  """The argv of a case: shorthands expanded, then the folders {c} and {o}, and any other
  {name} by the corpus attribute that makes that input on first use."""
  for key, value in SHORTHANDS.items():
    template = template.replace("{%s}" % key, value)
  names = set(re.findall(r"{(\w+)}", template)) - {"c", "o"}
  values = dict(c=corpus.dir, o=out, **{n: getattr(corpus, n) for n in names})
  return template.format(**values).split()


def snapshot(*folders: pathlib.Path) -> dict[str, str]:
  """sha256 of every file (and a marker per folder) below `folders`."""
  out = {}
  for folder in folders:
    for path in sorted(folder.rglob("*")):
      out[str(path)] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
  return out


@contextlib.contextmanager
def denied(path: pathlib.Path, mode: int, bit: int, monkeypatch):
  """chmod `path` to `mode` (0555: read-only folder, 0: unreadable file); for root, whom the
  kernel lets through anyway, os.access answers for `path` as it would for anyone else."""
  path.chmod(mode)
  if os.geteuid() == 0:
    real_access = os.access

    def access(p, m, *args, **kwargs):
      if m & bit and pathlib.Path(p).resolve() == path.resolve():
        return False
      return real_access(p, m, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
  try:
    yield
  finally:
    path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def file_size_limit(limit: int | None):
  """RLIMIT_FSIZE = `limit` bytes: writes past it fail with EFBIG, as on a full disk."""
  if limit is None:
    yield
    return
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input(case, corpus, tmp_path, capsys, monkeypatch):
  name, template, code, message, *options = case
  options = options[0] if options else {}
  main: Callable = importlib.import_module(TOOLS[PREFIXES[name.split("-")[0]]]).main
  out = tmp_path / "out"
  out.mkdir()
  if options.get("existing"):
    (out / options["existing"]).write_bytes(b"an existing output: keep me")
  args = arguments(template, corpus, out)
  if options.get("readonly"):
    (out / "ro").mkdir()
  if options.get("unreadable"):
    (out / "secret.h5").write_bytes((corpus.dir / "fused.h5").read_bytes())
  before = snapshot(out, corpus.dir)
  capsys.readouterr()
  with contextlib.ExitStack() as stack:
    if options.get("readonly"):
      stack.enter_context(denied(out / "ro", 0o555, os.W_OK, monkeypatch))
    if options.get("unreadable"):
      stack.enter_context(denied(out / "secret.h5", 0, os.R_OK, monkeypatch))
    with file_size_limit(options.get("fsize")):
      status = main(args)
  err = capsys.readouterr().err
  after = snapshot(out, corpus.dir)
  errors = [line for line in err.splitlines() if line.startswith("error: ")]
  assert status == code, f"{name}: exit status {status}, expected {code}; stderr:\n{err}"
  assert len(errors) == 1, f"{name}: expected one 'error: ...' line; stderr:\n{err}"
  assert "Traceback" not in err, err
  assert re.search(message, errors[0]), f"{name}: {errors[0]!r} !~ {message!r}"
  assert after == before, (f"{name}: files changed: "
                           f"{sorted(set(after.items()) ^ set(before.items()))}")


def test_every_tool_has_cases():
  assert {PREFIXES[case[0].split("-")[0]] for case in CASES} == set(TOOLS) == set(PREFIXES.values())
  assert len({case[0] for case in CASES}) == len(CASES)


def test_partial_nodata_is_accepted_with_a_warning_over_half(caplog):
  """The other side of refusing an all-nodata scene: nodata borders are normal."""
  ms = np.full((8, 8, 4), 100, np.uint8)
  pan = np.full((32, 32), 100, np.uint8)
  ms[:, :5] = 0  # 5/8 of the columns
  info = scenes.SceneInfo("s", pan.shape, ms.shape, ms.dtype, pan.dtype, ms_nodata=0)
  with caplog.at_level("INFO", logger="dcfnet_jax"):
    assert checks.check_values(scenes.ArrayScene(ms, pan, info), 255.0, 8) == {
        "ms": (100.0, 100.0), "pan": (100.0, 100.0)}
  assert "62.5% of the output pixels are nodata" in caplog.text
  assert any(r.levelname == "WARNING" for r in caplog.records)
