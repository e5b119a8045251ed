r"""Quality indices of fused images, as the MATLAB toolbox's demos compute them.

  python -m dcfnet_jax.evaluate --fused out.h5 --reference test_wv3_multiExm1.h5 \
      --sensor wv3 [--full-resolution] [--json results.json]

Reduced resolution (default): fused vs the reference's ``gt`` -> Q2n (printed as Q4/Q8),
Q_avg, SAM, ERGAS and SCC, with the toolbox demo settings (ratio 4, 32-pixel blocks, asymmetric
crop dim_cut 21, no thresholding). Full resolution (``--full-resolution``): fused with the
reference's ``ms``/``pan`` -> two families, both by default (``--fr-indexes`` picks one):
- the toolbox's D_lambda, D_s, QNR, D_lambda_K, HQNR (with the file's ``lms`` when present, as
  the toolbox demos pass ``I_MS``; D_lambda_K filters with the sensor's toolbox MTF);
- the reprojection protocol of Scarpa & Ciotola (2022): R-Q2n (printed R-Q4/R-Q8), R-Q, R-SAM,
  R-ERGAS and D_rho (the sensor's protocol MTF bank, clipped and unit-sum; 32-pixel blocks at MS
  scale, so images of at least 128x128).

Files: PanCollection .h5 (keys gt/ms/lms/pan, layout N,C,H,W, raw DN), .npz or
.mat with the same keys; the fused file holds one array of the reference's
layout (key ``fused``; a .mat may also hold a single array under any name).
``--layout nhwc`` reads channel-last arrays instead. Data must be in DN; pass
``--scale 2047`` for [0, 1] data of an 11-bit sensor.

Indices run in float64 on the CPU (toolbox-exact) unless ``--float32``, through the one
host-side wrapper (``metrics.host``: images too small for the settings are refused). Prints the
per-image values and a mean +- sample-std table (``reports.summarize``); ``--json`` writes
everything (keys: Q2n Q SAM ERGAS SCC, or D_lambda D_s QNR D_lambda_K HQNR R_Q2n R_Q R_SAM
R_ERGAS D_rho, in that order; display names under ``names``). Value ranges follow ``dn.check_range`` (sensor data up to 1.05 x (2^bits - 1),
fused images up to 2 x 2^bits). Exit status 2 for bad input (``dcfnet_jax.cli``).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import warnings
from typing import Mapping, Sequence

import numpy as np

from dcfnet_jax import cli, dn, files, imaging, names, reports
from dcfnet_jax.data import pancollection
from dcfnet_jax.errors import DataWarning, InputError
from dcfnet_jax.metrics import host
from dcfnet_jax.progress import Progress

log = logging.getLogger(__name__)


class EvaluationError(InputError):
  """Bad input to the evaluation (wrong key, shape, range, ...)."""


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def check_finite(name: str, x: np.ndarray) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    raise EvaluationError(f"{name}: {int(bad.sum())} NaN/inf values (first at index "
                          f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def check_range(name: str, x: np.ndarray, bits: int, *, fused: bool = False) -> None:
  """The value-range rule (`dn.check_range`) for DN of a `bits`-bit sensor."""
  full = 2.0 ** bits - 1
  peak = float(np.max(x)) if x.size else 0.0
  try:
    dn.check_range(name, peak, full, fused=fused, bits=bits, fix=f"pass --scale {full:g} for "
                   "[0, 1] data, or check --bits / --sensor")
  except InputError as e:
    raise EvaluationError(str(e)) from e


def check_bands(name: str, x: np.ndarray, sensor: imaging.Sensor) -> None:
  if sensor.num_bands is not None and x.shape[-1] != sensor.num_bands:
    raise EvaluationError(f"{name}: {x.shape[-1]} bands, but sensor {sensor.name!r} has "
                          f"{sensor.num_bands} (shape {x.shape})")


def _check_same(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
  if a.shape != b.shape:
    raise EvaluationError(f"shape mismatch: {name_a} is {a.shape} but {name_b} is {b.shape}")


# ---------------------------------------------------------------------------
# Core (importable)
# ---------------------------------------------------------------------------


def evaluate_arrays(fused: np.ndarray, reference: Mapping[str, np.ndarray], *,
                    sensor: str | imaging.Sensor, full_resolution: bool = False,
                    ratio: int = 4, bits: int | None = None, block_size: int = 32,
                    flag_cut_bounds: bool = True, dim_cut: int = 21, thvalues: bool = False,
                    use_lms: bool = True, fr_indexes: str = "all", float64: bool = True,
                    batch_size: int = 16, progress: bool = False) -> dict[str, np.ndarray]:
  """Per-image indices of NHWC arrays in DN (keys in the metrics package's order).

  Args:
    fused: (N, H, W, C) fused images.
    reference: arrays by name, NHWC: ``gt`` (reduced resolution), or ``ms``, ``pan``
      (N, H, W[, 1]) and optionally ``lms`` (full resolution).
    sensor: sensor name or ``imaging.Sensor`` (band count, bits, MTF gains).
    full_resolution: compute the full-resolution indices instead.
    fr_indexes: full-resolution families, "all" (toolbox then reprojection), "toolbox" or
      "reprojection" (`metrics.host.FR_INDEXES`).
    ratio, block_size, flag_cut_bounds, dim_cut, thvalues: toolbox settings.
    bits: radiometric bits L; default the sensor's.
    use_lms: use ``reference['lms']`` when present (toolbox demos); else interp23tap(ms)
      (the toolbox family only; the reprojection family does not use lms).
    float64: compute in float64 (toolbox-exact) rather than float32.
    batch_size: images per jitted call.
    progress: log progress.

  Returns:
    index name -> (N,) float64 values.
  """
  sensor = imaging.get_sensor(sensor)
  bits = sensor.bits if bits is None else int(bits)
  fused = np.asarray(fused)
  if fused.ndim != 4:
    raise EvaluationError(f"fused must be (N, H, W, C), got shape {fused.shape}")
  check_finite("fused", fused)
  check_bands("fused", fused, sensor)
  check_range("fused", fused, bits, fused=True)
  if full_resolution:
    for key in ("ms", "pan"):
      if key not in reference:
        raise EvaluationError(f"full resolution needs reference key {key!r}; have "
                              f"{sorted(reference)}")
    ms, pan = np.asarray(reference["ms"]), np.asarray(reference["pan"])
    if pan.ndim == 3:
      pan = pan[..., None]
    lms = np.asarray(reference["lms"]) if use_lms and "lms" in reference else None
    n, h, w, c = fused.shape
    if pan.shape != (n, h, w, 1):
      raise EvaluationError(f"shape mismatch: fused is {fused.shape} but pan is {pan.shape} "
                            f"(expected {(n, h, w, 1)})")
    if h % ratio or w % ratio or ms.shape != (n, h // ratio, w // ratio, c):
      raise EvaluationError(f"shape mismatch: fused is {fused.shape} but ms is {ms.shape} "
                            f"(expected fused reduced by ratio {ratio}: "
                            f"{(n, h // ratio, w // ratio, c)})")
    named = [("ms", ms), ("pan", pan)] + ([("lms", lms)] if lms is not None else [])
    if lms is not None:
      _check_same("fused", fused, "lms", lms)
  else:
    if "gt" not in reference:
      raise EvaluationError(f"reduced resolution needs reference key 'gt'; have "
                            f"{sorted(reference)} (full-resolution data? pass "
                            "--full-resolution)")
    gt = np.asarray(reference["gt"])
    _check_same("fused", fused, "gt", gt)
    named = [("gt", gt)]
  used = dict(named)
  named += [(k, np.asarray(reference[k])) for k in ("gt", "ms", "pan", "lms")
            if k in reference and k not in used]  # the whole file is checked
  for name, arr in named:
    check_finite(name, arr)
    if name != "lms":  # an interpolation may ring past the sensor range
      with warnings.catch_warnings():  # a low range warns only for the arrays compared
        if name not in used:
          warnings.simplefilter("ignore", DataWarning)
        check_range(name, arr, bits)

  bar = Progress(fused.shape[0], "evaluate", "images", enabled=progress, every_seconds=0.0)
  common = dict(ratio=ratio, bits=bits, block_size=block_size, thvalues=thvalues,
                float64=float64, batch_size=batch_size, progress=lambda done, _: bar.update(done))
  if full_resolution:
    return host.full_resolution(
        fused, ms, pan, sensor=sensor, lms=lms, indexes=fr_indexes,
        hint="use a smaller --block-size, or one family with --fr-indexes toolbox|reprojection",
        **common)
  return host.reduced_resolution(
      fused, gt, flag_cut_bounds=flag_cut_bounds, dim_cut=dim_cut,
      hint="use a smaller --dim-cut, --no-cut-bounds or a smaller --block-size", **common)


def format_table(results: Mapping[str, np.ndarray], num_bands: int | None = None,
                 per_image: bool = True, digits: int = 4) -> str:
  """Per-image values and a ``mean +- std`` line per index, like the paper's tables."""
  keys = list(results)
  titles = [names.index(k, num_bands) for k in keys]
  width = max(digits + 8, max(len(n) for n in titles) + 2) if titles else digits + 8
  lines = []
  if per_image:
    n = len(next(iter(results.values()))) if keys else 0
    lines.append("image".ljust(7) + "".join(t.rjust(width) for t in titles))
    for i in range(n):
      lines.append(f"{i:<7d}" + "".join(f"{results[k][i]:{width}.{digits + 2}f}" for k in keys))
    lines.append("")
  summary = reports.summarize(results)
  name_width = max(len(t) for t in titles) if titles else 0
  for k, title in zip(keys, titles):
    stat = summary[k]
    single = " (1 image)" if stat["n"] == 1 else ""
    lines.append(f"{title.ljust(name_width)}  {stat['mean']:.{digits}f} ± "
                 f"{stat['std']:.{digits}f}{single}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _to_nhwc(name: str, x: np.ndarray, layout: str, is_pan: bool = False) -> np.ndarray:
  """File layout -> NHWC. A single image may omit N; a PAN may omit its channel axis."""
  x = np.asarray(x)
  if layout not in ("nchw", "nhwc"):
    raise EvaluationError(f"unknown layout {layout!r}; use nchw or nhwc")
  channel_axis = 1 if layout == "nchw" else 3
  if is_pan:
    if x.ndim == 2:  # H, W
      x = x[None, None] if layout == "nchw" else x[None, ..., None]
    elif x.ndim == 3:  # N, H, W  (or H, W, 1 in nhwc)
      x = x[None] if layout == "nhwc" and x.shape[-1] == 1 else np.expand_dims(x, channel_axis)
  elif x.ndim == 3:  # one image
    x = x[None]
  if x.ndim != 4:
    raise EvaluationError(f"{name}: expected {layout.upper()} (or one image without N), "
                          f"got shape {x.shape}")
  if layout == "nchw":
    return pancollection.nchw_to_nhwc(x)
  return np.ascontiguousarray(x)


def _load(path: str, what: str) -> dict[str, np.ndarray]:
  try:
    return files.load_arrays(path)
  except (OSError, ValueError, KeyError) as e:
    raise EvaluationError(f"{what} file: {e}") from e


def _check_numeric(name: str, x: np.ndarray) -> None:
  if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
    raise EvaluationError(f"{name} has dtype {x.dtype}; expected real numbers (DN)")


def load_fused(path: str, layout: str = "nchw") -> np.ndarray:
  """The fused array of a file (key ``fused``; a .mat may hold a single array)."""
  arrays = _load(path, "fused")
  if "fused" in arrays:
    x = arrays["fused"]
  elif pathlib.Path(path).suffix.lower() == ".mat" and len(arrays) == 1:
    x = next(iter(arrays.values()))
  else:
    raise EvaluationError(f"{path}: missing key 'fused'; the file holds {sorted(arrays)}")
  _check_numeric(f"{path}:fused", np.asarray(x))
  return _to_nhwc(f"{path}:fused", x, layout)


def load_reference(path: str, full_resolution: bool, layout: str = "nchw", ratio: int = 4
                   ) -> dict[str, np.ndarray]:
  """The reference's PanCollection arrays (gt, ms, lms, pan: those it holds) as NHWC arrays.

  The whole file is validated as the PanCollection reader validates its files
  (`pancollection.check_layout`: the same N for every key, band counts, the PAN `ratio` times
  the MS size, ...), not only the arrays the chosen resolution needs (gt, or ms and pan).
  """
  arrays = _load(path, "reference")
  needed = ("ms", "pan") if full_resolution else ("gt",)
  missing = [k for k in needed if k not in arrays]
  if missing:
    raise EvaluationError(f"{path}: missing key(s) {missing} for "
                          f"{'full' if full_resolution else 'reduced'}-resolution evaluation; "
                          f"the file holds {sorted(arrays)}")
  found = {k: _to_nhwc(f"{path}:{k}", arrays[k], layout, is_pan=(k == "pan"))
           for k in pancollection.KEYS if k in arrays}
  pancollection.check_layout(
      path, {k: (x.shape[0], x.shape[3]) + x.shape[1:3] for k, x in found.items()},
      {k: x.dtype for k, x in found.items()}, ratio=ratio, required=needed,
      layout="N,C,H,W" if layout == "nchw" else "N,H,W,C")
  return found


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.evaluate", __doc__)
  p.add_argument("--fused", required=True, help="file with the fused images (key 'fused')")
  p.add_argument("--reference", required=True,
                 help="PanCollection-style file with gt (RR) or ms/pan[/lms] (FR)")
  p.add_argument("--sensor", required=True,
                 help=f"sensor table name: {', '.join(sorted(imaging.SENSORS))}")
  p.add_argument("--full-resolution", action="store_true",
                 help="full-resolution indices (D_lambda, D_s, QNR, D_lambda_K, HQNR; R-Q2n, "
                 "R-Q, R-SAM, R-ERGAS, D_rho)")
  p.add_argument("--fr-indexes", choices=host.FR_INDEXES, default="all",
                 help="full-resolution families: all, the toolbox's (QNR/HQNR) or the "
                 "reprojection protocol's (R-* and D_rho)")
  p.add_argument("--json", default=None, help="write settings, per-image values and summary")
  p.add_argument("--ratio", type=int, default=4)
  p.add_argument("--block-size", type=int, default=32,
                 help="Q/Q2n/QNR block size (PAN scale; the R-Q2n/R-Q blocks at MS scale)")
  p.add_argument("--dim-cut", type=int, default=21, help="RR border crop (toolbox: 21)")
  p.add_argument("--no-cut-bounds", action="store_true", help="RR: do not crop the borders")
  p.add_argument("--thvalues", action="store_true", help="clip fused to [0, 2^bits] first")
  p.add_argument("--bits", type=int, default=None, help="radiometric bits (default: sensor's)")
  p.add_argument("--scale", type=float, default=1.0,
                 help="multiply fused and reference by this (e.g. 2047 for [0,1] data)")
  p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                 help="array layout in the files (PanCollection: nchw)")
  p.add_argument("--recompute-lms", action="store_true",
                 help="FR: use interp23tap(ms) even if the reference has 'lms'")
  p.add_argument("--float32", action="store_true", help="compute in float32 (not exact)")
  p.add_argument("--batch-size", type=int, default=16, help="images per jitted call")
  return p


def run(args: argparse.Namespace) -> None:
  try:
    sensor = imaging.get_sensor(args.sensor)
  except ValueError as e:
    raise InputError(f"--sensor: {e}") from e
  if args.json:  # refused before any work: a folder, an input, a missing or read-only folder
    files.check_output_file(args.json, flag="--json", inputs=[args.fused, args.reference])
  fused = load_fused(args.fused, args.layout) * args.scale
  reference = {k: v * args.scale
               for k, v in load_reference(args.reference, args.full_resolution,
                                          args.layout, args.ratio).items()}
  log.info("evaluating %d image(s) of %dx%dx%d (%s resolution, sensor %s)", *fused.shape,
           "full" if args.full_resolution else "reduced", sensor.name)
  settings = dict(
      sensor=sensor.name, full_resolution=args.full_resolution, ratio=args.ratio,
      bits=sensor.bits if args.bits is None else args.bits, block_size=args.block_size,
      flag_cut_bounds=not args.no_cut_bounds, dim_cut=args.dim_cut, thvalues=args.thvalues,
      use_lms=not args.recompute_lms, float64=not args.float32)
  if args.full_resolution:
    settings["fr_indexes"] = args.fr_indexes
  try:
    results = evaluate_arrays(fused, reference, batch_size=args.batch_size, progress=True,
                              **settings)
  except InputError as e:  # the arrays are named by key; say which files they come from
    raise EvaluationError(f"--fused {args.fused} / --reference {args.reference}: {e}") from e
  num_bands = fused.shape[-1]
  print(format_table(results, num_bands))
  if args.json:
    summary = reports.summarize(results)
    lms_source = None
    if args.full_resolution:
      lms_source = "file" if settings["use_lms"] and "lms" in reference else "interp23tap(ms)"
    files.write_json(args.json, {
        "fused": str(args.fused), "reference": str(args.reference), "scale": args.scale,
        "settings": settings, "lms": lms_source, "num_images": int(fused.shape[0]),
        "names": {k: names.index(k, num_bands) for k in results},
        "per_image": {k: v.tolist() for k, v in results.items()},
        "mean": {k: s["mean"] for k, s in summary.items()},
        "std": {k: s["std"] for k, s in summary.items()},
    }, indent=1)
    log.info("wrote %s", args.json)


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
