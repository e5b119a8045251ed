"""Whole sharpening runs: one scene into a GeoTIFF / .npz / .h5, or every image of a
PanCollection h5 file into an h5 of `fused` (N,C,H,W, DN)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from dcfnet_jax import files, imaging, inference, raster, scenes, tiling
from dcfnet_jax.data import pancollection
from dcfnet_jax.errors import InputError
from dcfnet_jax.pansharpen import adapt, checks, outputs, patches
from dcfnet_jax.pansharpen.checks import RATIO, TilingOptions
from dcfnet_jax.pansharpen.tiles import TileRunner, sharpen_scene

log = logging.getLogger(__name__)

DEFAULT_CROP = 1024
ADAPTED_SUFFIX = ".adapted.npz"  # the adapted weights beside the output (+ .json metadata)
ADAPTED_JSON_SUFFIX = ".adapted.json"


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


def check_scene(scene: scenes.Scene, loaded: inference.LoadedModel, img_range: float,
                opts: RunOptions) -> dict[str, tuple[float, float]]:
  """The checks of a scene before any slow work (nodata override, co-registration, bands,
  values); returns the value ranges of `checks.check_values`."""
  info = scene.info
  if opts.nodata is not None:
    info.ms_nodata = info.pan_nodata = float(opts.nodata)
  scenes.check_coregistration(info, RATIO)
  adapt.check_model_fits(loaded, info.ms_shape[-1], info.name)
  return checks.check_values(scene, img_range, loaded.bits)


def run_crop(info: scenes.SceneInfo, opts: RunOptions) -> tuple[int, int, int, int] | None:
  """The central crop of --preview/--assess/--reference (None when none is asked for); with
  --assess it must fit the chosen full-resolution families (`outputs.assess_crop`)."""
  if not (opts.preview or opts.assess or opts.reference):
    return None
  if opts.crop < (32 if opts.assess else RATIO):
    raise InputError(f"--crop {opts.crop} is too small (at least 32 for --assess)")
  height, width = info.pan_shape
  if opts.assess:
    return outputs.assess_crop(height, width, opts.crop, opts.fr_indexes)
  return outputs.central_crop(height, width, opts.crop, RATIO)


@dataclasses.dataclass
class Before:
  """The central crop as the model sharpened it before adaptation (--preview, --assess)."""

  fused: np.ndarray  # (h, w, C) float64 DN, the crop
  indexes: dict[str, float] | None  # --assess indexes, None without --assess


def run_scene(loaded: inference.LoadedModel, runner: TileRunner, opts: RunOptions,
              before: Before | None = None) -> dict[str, Any]:
  """Sharpens one scene into `opts.out` (GeoTIFF, .npz or .h5); returns a summary dict.

  `before`: the crop before adaptation, shown in the preview and assessed beside the result.
  """
  out = checks.check_output_path(opts.out, [opts.ms, opts.pan, opts.reference], opts.overwrite)
  with opts.open_scene() as scene:
    info = scene.info
    stats = check_scene(scene, loaded, runner.img_range, opts)
    sensor = opts.sensor or loaded.sensor
    rgb = _rgb(sensor, loaded.num_bands)
    height, width = info.pan_shape
    reference = None
    crop = run_crop(info, opts)
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
                                    opts, reference, before))
  return summary


def _crop_products(scene: scenes.Scene, out: pathlib.Path, collector: outputs.CropCollector,
                   crop: tuple[int, int, int, int], sensor: str,
                   loaded: inference.LoadedModel, runner: TileRunner, rgb: Sequence[int],
                   opts: RunOptions, reference: np.ndarray | None = None,
                   before: Before | None = None) -> dict[str, Any]:
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
                                reference, before=None if before is None else before.fused)
    result["preview"] = str(png)
    result["preview_region"] = where
    log.info("Preview of %s: %s", where, png)
  if opts.assess:
    bits = outputs.assess_bits(loaded.bits, runner.img_range)
    values = crop_indexes(scene, collector.array, crop, lms, sensor, bits, opts.fr_indexes)
    bands = collector.array.shape[-1]
    report = dict(indexes=values, names=outputs.assess_names(values, bands), region=where,
                  crop=dict(row=r0, col=c0, height=h, width=w), sensor=sensor, bits=bits,
                  ratio=RATIO, fr_indexes=opts.fr_indexes, output=str(out))
    if before is not None and before.indexes is not None:
      report["before_adaptation"] = before.indexes
      print("Before adaptation: " + outputs.assess_line(before.indexes, bands, where, sensor,
                                                        bits))
    path = files.write_json(outputs.sidecar(out, ".assess.json"), report)
    result["assess"] = report
    print(("After adaptation: " if before is not None else "") +
          outputs.assess_line(values, bands, where, sensor, bits))
    log.info("Assessment written to %s", path)
  return result


def crop_indexes(scene: scenes.Scene, fused: np.ndarray, crop: tuple[int, int, int, int],
                 lms: np.ndarray, sensor: str, bits: int, indexes: str = "all"
                 ) -> dict[str, float]:
  """The --assess indexes (`outputs.assess`) of `fused`, the result over the central `crop`."""
  r0, c0, h, w = crop
  ms = tiling.gather_2d(scene.read_ms, np.arange(r0 // RATIO, (r0 + h) // RATIO),
                        np.arange(c0 // RATIO, (c0 + w) // RATIO)).astype(np.float64)
  pan = scene.read_pan(r0, r0 + h, c0, c0 + w).astype(np.float64)
  return outputs.assess(fused, ms, pan, lms, sensor, bits, indexes)


def _read_reference(path: str, info: scenes.SceneInfo, num_bands: int, bands: str | None
                    ) -> np.ndarray:
  ref, _, _, _ = scenes.read_image(path, kind="ms")
  if ref.shape[-1] != num_bands and bands:
    ref = ref[..., scenes.check_bands(scenes.parse_bands(bands), ref.shape[-1], path)]
  expected = tuple(info.pan_shape) + (num_bands,)
  if ref.shape != expected:
    raise InputError(f"--reference {path}: shape {ref.shape}, expected the output's {expected}")
  return ref


def _pancollection_scene(path: str, index: int, dn: Mapping[str, np.ndarray], row: int = 0
                        ) -> scenes.ArrayScene:
  """Image `index` of a PanCollection file as a scene, from row `row` of a `read_dn` result."""
  ms, pan, lms = dn["ms"][row], dn["pan"][row, ..., 0], dn["lms"][row]
  info = scenes.SceneInfo(name=f"{path}[{index}]", pan_shape=pan.shape, ms_shape=ms.shape,
                          dtype=np.dtype(np.float32), pan_dtype=np.dtype(np.float32))
  return scenes.ArrayScene(ms, pan, info, lms=lms)


def run_pancollection(loaded: inference.LoadedModel, runner: TileRunner, opts: RunOptions,
                      images: Sequence[scenes.Scene] | None = None) -> dict[str, Any]:
  """Sharpens every image of a PanCollection h5 file into `opts.out` (`fused`, N,C,H,W, DN).

  `images`: the file's images already read (by the adaptation); otherwise one is read at a time.
  """
  out = checks.check_output_path(opts.out, [opts.ms], opts.overwrite)
  if out.suffix.lower() not in files.H5_SUFFIXES:
    raise InputError(f"--out {out}: a PanCollection input gives an h5 output (fused, N,C,H,W)")
  fused, timings = [], []
  with contextlib.ExitStack() as stack:
    if images is None:
      source = stack.enter_context(pancollection.PanCollectionSource(
          opts.ms, img_range=runner.img_range, ratio=RATIO, num_bands=loaded.num_bands))
      n = len(source)
      image = lambda i: _pancollection_scene(opts.ms, i, source.read_dn([i]))  # noqa: E731
    else:
      n, image = len(images), images.__getitem__
    for i in range(n):
      scene = image(i)
      (pan_h, pan_w), bands = scene.info.pan_shape, scene.info.ms_shape[-1]
      writer = outputs.ArrayWriter(pan_h, pan_w, bands, np.float32)
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


# ---------------------------------------------------------------------------------------------
# Target-adaptive fine-tuning before a run (--adapt-steps)


@dataclasses.dataclass
class Adaptation:
  """The adapted model, the --assess indexes before adaptation, and the summary of it."""

  model: inference.LoadedModel
  before: Before | None
  summary: dict[str, Any]
  images: list[scenes.Scene] | None = None  # a PanCollection file's images, read once


def scene_bands(opts: RunOptions, h5_mode: bool) -> int:
  """The band count of the run's input (after --bands): what a fresh model (--model) needs."""
  if h5_mode:
    with h5py.File(opts.ms, "r") as f:
      return int(f["ms"].shape[1])
  with opts.open_scene() as scene:
    return int(scene.info.ms_shape[-1])


def _pancollection_scenes(opts: RunOptions, img_range: float, num_bands: int
                          ) -> list[scenes.Scene]:
  source = pancollection.PanCollectionSource(opts.ms, img_range=img_range, ratio=RATIO,
                                             num_bands=num_bands)
  with source:
    dn = source.read_dn(np.arange(len(source)))
  return [_pancollection_scene(opts.ms, i, dn, i) for i in range(len(dn["ms"]))]


def _before(loaded: inference.LoadedModel, runner_options: dict[str, Any], opts: RunOptions,
            sensor: str, scene: scenes.Scene, crop: tuple[int, int, int, int]) -> Before:
  """The central crop sharpened by the model before adaptation, and its --assess indexes: the
  scene (open and checked by the caller) runs through the tile runner in memory-bounded rows
  (only the crop kept), nothing is written."""
  info = scene.info
  runner = TileRunner(loaded, runner_options["batch_size"],
                      precision=runner_options["precision"], clip=runner_options["clip"],
                      img_range=runner_options["img_range"])
  collector = outputs.CropCollector(crop, info.ms_shape[-1])
  nodata = info.nodata

  def emit(first: int, rows: np.ndarray) -> None:
    collector(first, outputs.finalize_rows(scene, first, rows, info.dtype, nodata)
              .astype(np.float64))

  sharpen_scene(scene, runner, opts.tiling, emit, progress=opts.progress,
                label="before adaptation")
  if not opts.assess:
    return Before(collector.array, None)
  lms = outputs.scene_lms(scene, *crop)
  bits = adapt.run_bits(loaded, runner.img_range)  # the adapted model's, for one comparison
  return Before(collector.array, crop_indexes(scene, collector.array, crop, lms, sensor, bits,
                                              opts.fr_indexes))


def adapt_to_run(loaded: inference.LoadedModel, runner_options: dict[str, Any],
                 opts: RunOptions, settings: adapt.AdaptSettings, h5_mode: bool) -> Adaptation:
  """Checks the inputs, assesses the model (--assess), adapts it to the run's scene(s), writes
  the adapted weights to OUT.adapted.npz (+ .json) and returns them for the run.

  A PanCollection file is adapted to as one domain (patches of all its images); a scene alone.
  """
  out = checks.check_output_path(opts.out, [opts.ms, opts.pan, opts.reference], opts.overwrite)
  img_range = float(runner_options["img_range"])
  sensor = opts.sensor or loaded.sensor
  before = None
  with contextlib.ExitStack() as stack:
    if h5_mode:
      items = _pancollection_scenes(opts, img_range, loaded.num_bands)
    else:
      scene = stack.enter_context(opts.open_scene())
      check_scene(scene, loaded, img_range, opts)
      if opts.reference:
        _read_reference(opts.reference, scene.info, loaded.num_bands, opts.bands)
      crop = run_crop(scene.info, opts)
      items = [scene]
    patches.check_scenes(settings.scope, settings.patch, items,
                         settings.for_sensor(sensor).loss)
    if settings.head == "reset":  # refused now for a model it cannot work on, not after --assess
      adapt.output_layer_path(loaded)
    if (opts.assess or opts.preview) and not h5_mode:
      before = _before(loaded, runner_options, opts, sensor, scene, crop)
    result = adapt.adapt(loaded, items, settings, img_range=img_range, sensor=sensor,
                         progress=opts.progress)
  weights = adapt.export_adapted(outputs.sidecar(out, ADAPTED_SUFFIX), result.model)
  model = dataclasses.replace(result.model, source=str(weights))
  summary = dict(result.report, weights=str(weights), loss_curve=[h["loss"] for h in
                                                                  result.history])
  return Adaptation(model, before, summary, items if h5_mode else None)
