"""Whole sharpening runs: one scene into a GeoTIFF / .npz / .h5, or every image of a
PanCollection h5 file into an h5 of `fused` (N,C,H,W, DN)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from dcfnet_jax import files, imaging, inference, raster, scenes, tiling
from dcfnet_jax.data import pancollection
from dcfnet_jax.errors import InputError
from dcfnet_jax.pansharpen import checks, outputs
from dcfnet_jax.pansharpen.checks import RATIO, TilingOptions
from dcfnet_jax.pansharpen.tiles import TileRunner, sharpen_scene

log = logging.getLogger(__name__)

DEFAULT_CROP = 1024


@dataclasses.dataclass
class RunOptions:
  """Everything a run needs besides the model (the CLI flags)."""

  ms: str
  out: str
  pan: str | None = None
  sensor: str | None = None
  tiling: TilingOptions = TilingOptions()
  batch_size: int = 4
  preview: bool = False
  reference: str | None = None
  assess: bool = False
  fr_indexes: str = "all"  # the full-resolution families of --assess (metrics.host.FR_INDEXES)
  crop: int = DEFAULT_CROP
  overwrite: bool = False
  bands: str | None = None  # 1-based, comma-separated (GDAL style)
  nodata: float | None = None
  ms_key: str | None = None
  pan_key: str | None = None
  progress: bool = True

  def open_scene(self) -> scenes.Scene:
    return scenes.open_scene(self.ms, self.pan, bands=scenes.parse_bands(self.bands),
                             ms_key=self.ms_key, pan_key=self.pan_key)


def is_pancollection_file(ms: str, pan: str | None) -> bool:
  """An h5 file given alone whose `ms` is N,C,h,w: every image of it is sharpened."""
  if pan is not None or pathlib.Path(ms).suffix.lower() not in files.H5_SUFFIXES:
    return False
  try:
    with h5py.File(ms, "r") as f:
      return all(k in f for k in ("ms", "pan")) and f["ms"].ndim == 4
  except OSError:
    return False


def _rgb(sensor: str, num_bands: int) -> tuple[int, int, int]:
  try:
    return imaging.rgb_bands(sensor, num_bands)
  except ValueError as e:
    raise InputError(f"--sensor: {e}") from e


def run_scene(loaded: inference.LoadedModel, runner: TileRunner, opts: RunOptions
              ) -> dict[str, Any]:
  """Sharpens one scene into `opts.out` (GeoTIFF, .npz or .h5); returns a summary dict."""
  out = checks.check_output_path(opts.out, [opts.ms, opts.pan, opts.reference], opts.overwrite)
  with opts.open_scene() as scene:
    info = scene.info
    if opts.nodata is not None:
      info.ms_nodata = info.pan_nodata = float(opts.nodata)
    scenes.check_coregistration(info, RATIO)
    if info.ms_shape[-1] != loaded.num_bands:
      raise InputError(
          f"{info.name}: the MS has {info.ms_shape[-1]} bands but the checkpoint "
          f"{loaded.source} is a {loaded.num_bands}-band model; choose bands with --bands "
          "(1-based, e.g. --bands 2,3,4,5)")
    stats = checks.check_values(scene, runner.img_range, loaded.bits)
    sensor = opts.sensor or loaded.sensor
    rgb = _rgb(sensor, loaded.num_bands)
    height, width = info.pan_shape
    crop = reference = None
    if opts.preview or opts.assess or opts.reference:
      if opts.crop < (32 if opts.assess else RATIO):
        raise InputError(f"--crop {opts.crop} is too small (at least 32 for --assess)")
      crop = (outputs.assess_crop(height, width, opts.crop, opts.fr_indexes) if opts.assess
              else outputs.central_crop(height, width, opts.crop, RATIO))
    if opts.reference:  # read (and checked) before the long part
      reference = _read_reference(opts.reference, info, loaded.num_bands, opts.bands)
    collector = outputs.CropCollector(crop, info.ms_shape[-1]) if crop else None
    nodata = info.nodata

    def emit(writer, first: int, rows: np.ndarray) -> None:
      final = outputs.finalize_rows(scene, first, rows, info.dtype, nodata)
      writer.write(first, final)
      if collector is not None:
        collector(first, final.astype(np.float64))

    if raster.is_geotiff(out):
      with raster.writing(out, height=height, width=width, count=info.ms_shape[-1],
                          dtype=info.dtype, crs=info.crs, transform=info.pan_transform,
                          nodata=nodata, band_names=info.band_names) as writer:
        timing = sharpen_scene(scene, runner, opts.tiling, lambda f, r: emit(writer, f, r),
                               flush_multiple=raster.BLOCK, progress=opts.progress,
                               label=out.name)
    else:
      writer = outputs.ArrayWriter(height, width, info.ms_shape[-1], info.dtype)
      timing = sharpen_scene(scene, runner, opts.tiling, lambda f, r: emit(writer, f, r),
                             progress=opts.progress, label=out.name)
      outputs.write_array_output(out, writer.array, info, nodata)
    summary: dict[str, Any] = dict(
        output=str(out), scene=info.name, pan_shape=list(info.pan_shape),
        bands=info.ms_shape[-1], dtype=str(info.dtype), checkpoint=loaded.source,
        residual=loaded.residual, img_range=runner.img_range, input_range=stats,
        tiling=dataclasses.asdict(opts.tiling), batch_size=runner.batch_size,
        devices=runner.num_devices, **timing)
    log.info("Wrote %s: %dx%d PAN pixels, %d tiles in %.1f s (%.3f Mpixel/s).", out, height,
             width, timing["tiles"], timing["seconds"], timing["mpixels_per_s"])
    if crop is not None:
      summary.update(_crop_products(scene, out, collector, crop, sensor, loaded, runner, rgb,
                                    opts, reference))
  return summary


def _crop_products(scene: scenes.Scene, out: pathlib.Path, collector: outputs.CropCollector,
                   crop: tuple[int, int, int, int], sensor: str,
                   loaded: inference.LoadedModel, runner: TileRunner, rgb: Sequence[int],
                   opts: RunOptions, reference: np.ndarray | None = None) -> dict[str, Any]:
  """Preview PNG and/or assessment JSON of the central crop."""
  r0, c0, h, w = crop
  result: dict[str, Any] = {}
  full = (h, w) == tuple(scene.info.pan_shape)
  where = "the whole scene" if full else f"the central crop rows {r0}:{r0 + h}, cols {c0}:{c0 + w}"
  lms = outputs.scene_lms(scene, r0, c0, h, w)
  if reference is not None:
    reference = reference[r0:r0 + h, c0:c0 + w].astype(np.float64)
  if opts.preview or reference is not None:
    png = outputs.write_preview(outputs.sidecar(out, ".preview.png"), lms, collector.array, rgb,
                                reference)
    result["preview"] = str(png)
    result["preview_region"] = where
    log.info("Preview of %s: %s", where, png)
  if opts.assess:
    ms = tiling.gather_2d(scene.read_ms, np.arange(r0 // RATIO, (r0 + h) // RATIO),
                          np.arange(c0 // RATIO, (c0 + w) // RATIO)).astype(np.float64)
    pan = scene.read_pan(r0, r0 + h, c0, c0 + w).astype(np.float64)
    bits = outputs.assess_bits(loaded.bits, runner.img_range)
    values = outputs.assess(collector.array, ms, pan, lms, sensor, bits, opts.fr_indexes)
    bands = collector.array.shape[-1]
    report = dict(indexes=values, names=outputs.assess_names(values, bands), region=where,
                  crop=dict(row=r0, col=c0, height=h, width=w), sensor=sensor, bits=bits,
                  ratio=RATIO, fr_indexes=opts.fr_indexes, output=str(out))
    path = files.write_json(outputs.sidecar(out, ".assess.json"), report)
    result["assess"] = report
    print(outputs.assess_line(values, bands, where, sensor, bits))
    log.info("Assessment written to %s", path)
  return result


def _read_reference(path: str, info: scenes.SceneInfo, num_bands: int, bands: str | None
                    ) -> np.ndarray:
  ref, _, _, _ = scenes.read_image(path, kind="ms")
  if ref.shape[-1] != num_bands and bands:
    ref = ref[..., scenes.check_bands(scenes.parse_bands(bands), ref.shape[-1], path)]
  expected = tuple(info.pan_shape) + (num_bands,)
  if ref.shape != expected:
    raise InputError(f"--reference {path}: shape {ref.shape}, expected the output's {expected}")
  return ref


def run_pancollection(loaded: inference.LoadedModel, runner: TileRunner, opts: RunOptions
                      ) -> dict[str, Any]:
  """Sharpens every image of a PanCollection h5 file into `opts.out` (`fused`, N,C,H,W, DN)."""
  out = checks.check_output_path(opts.out, [opts.ms], opts.overwrite)
  if out.suffix.lower() not in files.H5_SUFFIXES:
    raise InputError(f"--out {out}: a PanCollection input gives an h5 output (fused, N,C,H,W)")
  source = pancollection.PanCollectionSource(opts.ms, img_range=runner.img_range, ratio=RATIO,
                                             num_bands=loaded.num_bands)
  fused, timings = [], []
  with source:
    n = len(source)
    for i in range(n):
      item = source.read_dn([i])
      ms, pan, lms = item["ms"][0], item["pan"][0, ..., 0], item["lms"][0]
      info = scenes.SceneInfo(name=f"{opts.ms}[{i}]", pan_shape=pan.shape, ms_shape=ms.shape,
                              dtype=np.dtype(np.float32), pan_dtype=np.dtype(np.float32))
      scene = scenes.ArrayScene(ms, pan, info, lms=lms)
      writer = outputs.ArrayWriter(pan.shape[0], pan.shape[1], ms.shape[-1], np.float32)
      timings.append(sharpen_scene(scene, runner, opts.tiling, writer.write,
                                   progress=opts.progress, label=f"image {i + 1}/{n}"))
      fused.append(np.moveaxis(writer.array, -1, 0))
  stacked = np.stack(fused)
  files.save_arrays_h5(out, {"fused": stacked})
  seconds = sum(t["seconds"] for t in timings)
  pixels = stacked.shape[0] * stacked.shape[2] * stacked.shape[3]
  log.info("Wrote %s: %d images, %.1f s (%.3f Mpixel/s).", out, n, seconds,
           pixels / seconds / 1e6)
  return dict(output=str(out), images=n, shape=list(stacked.shape), seconds=seconds,
              mpixels_per_s=pixels / seconds / 1e6, checkpoint=loaded.source,
              residual=loaded.residual, img_range=runner.img_range)
