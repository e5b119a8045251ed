r"""Quality indices of fused images, as the MATLAB toolbox's demos compute them.

  python -m dcfnet_jax.evaluate --fused out.h5 --reference test_wv3_multiExm1.h5 \
      --sensor wv3 [--full-resolution] [--json results.json]

Reduced resolution (default): fused vs the reference's ``gt`` -> SAM, ERGAS, SCC,
Q2n (printed as Q4/Q8) and Q_avg, with the toolbox demo settings (ratio 4, 32-pixel
blocks, asymmetric crop dim_cut 21, no thresholding). Full resolution
(``--full-resolution``): fused with the reference's ``ms``/``pan`` (and ``lms``
when present, as the toolbox demos pass ``I_MS``) -> D_lambda, D_s, QNR,
D_lambda_K, HQNR.

Files: PanCollection .h5 (keys gt/ms/lms/pan, layout N,C,H,W, raw DN), .npz or
.mat with the same keys; the fused file holds one array of the reference's
layout (key ``fused``; a .mat may also hold a single array under any name).
``--layout nhwc`` reads channel-last arrays instead. Data must be in DN; pass
``--scale 2047`` for [0, 1] data of an 11-bit sensor.

Indices run in float64 on the CPU (toolbox-exact) unless ``--float32``. Prints the
per-image values and a mean +- sample-std table; ``--json`` writes everything.
Uses argparse (not absl) so that tests and notebooks can call ``main(argv)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax import io_utils
from dcfnet_jax import metrics

RR_ORDER = ("SAM", "ERGAS", "SCC", "Q2n", "Q")
FR_ORDER = ("D_lambda", "D_s", "QNR", "D_lambda_K", "HQNR")
_DISPLAY = {"Q": "Q_avg"}


class EvaluationError(ValueError):
  """Bad input to the evaluation (wrong key, shape, range, ...)."""


def display_name(key: str, num_bands: int | None = None) -> str:
  """Column title of an index: Q2n -> Q4/Q8 by band count, Q -> Q_avg."""
  if key == "Q2n" and num_bands:
    return metrics.q2n_name(num_bands)
  return _DISPLAY.get(key, key)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def check_finite(name: str, x: np.ndarray) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    raise EvaluationError(f"{name}: {int(bad.sum())} NaN/inf values (first at index "
                          f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def check_range(name: str, x: np.ndarray, bits: int) -> None:
  """Refuses data that look like [0, 1] or far above the sensor's 2^bits range."""
  full = 2.0 ** bits - 1
  peak = float(np.max(x)) if x.size else 0.0
  if peak <= 1.5 and full > 2:
    raise EvaluationError(
        f"{name}: maximum {peak:.4g} looks like [0, 1] data, but the indices need DN of a "
        f"{bits}-bit sensor; pass --scale {full:g}")
  if peak > 2.0 * (full + 1):
    raise EvaluationError(
        f"{name}: maximum {peak:.6g} is far above 2^{bits} = {full + 1:g}; wrong --bits / "
        "--sensor, or data scaled twice?")


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
                    use_lms: bool = True, float64: bool = True, batch_size: int = 16,
                    progress: bool = False) -> dict[str, np.ndarray]:
  """Per-image indices of NHWC arrays in DN.

  Args:
    fused: (N, H, W, C) fused images.
    reference: arrays by name, NHWC: ``gt`` (reduced resolution), or ``ms``, ``pan``
      (N, H, W[, 1]) and optionally ``lms`` (full resolution).
    sensor: sensor name or ``imaging.Sensor`` (band count, bits, MTF gains).
    full_resolution: compute the full-resolution indices instead.
    ratio, block_size, flag_cut_bounds, dim_cut, thvalues: toolbox settings.
    bits: radiometric bits L; default the sensor's.
    use_lms: use ``reference['lms']`` when present (toolbox demos); else interp23tap(ms).
    float64: compute in float64 (toolbox-exact) rather than float32.
    batch_size: images per jitted call.
    progress: print progress to stderr.

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
  check_range("fused", fused, bits)
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
    if h % block_size or w % block_size:
      raise EvaluationError(f"full-resolution indices need H and W multiples of the block "
                            f"size {block_size}, got {h}x{w}")
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
  for name, arr in named:
    check_finite(name, arr)
    check_range(name, arr, bits)
  if not full_resolution:
    h, w = fused.shape[1:3]
    ch, cw = ((metrics.cut_size(h, dim_cut), metrics.cut_size(w, dim_cut)) if flag_cut_bounds
              else (h, w))
    if min(ch, cw) < block_size:
      raise EvaluationError(
          f"images of {h}x{w} leave {ch}x{cw} after the toolbox's border crop (dim_cut "
          f"{dim_cut}): smaller than the {block_size}-pixel Q/Q2n block; use a smaller "
          f"--dim-cut, --no-cut-bounds or a smaller --block-size (the toolbox's defaults, 21 "
          "and 32, need at least 73x73 images)")

  dtype = np.float64 if float64 else np.float32
  results: dict[str, list[np.ndarray]] = {}
  start = time.time()
  with jax.enable_x64(float64), jax.default_device(jax.local_devices(backend="cpu")[0]):
    for lo in range(0, fused.shape[0], batch_size):
      sl = slice(lo, lo + batch_size)
      f = jnp.asarray(fused[sl], dtype)
      if full_resolution:
        out = metrics.full_resolution_indexes(
            f, jnp.asarray(ms[sl], dtype), jnp.asarray(pan[sl], dtype), sensor=sensor,
            ratio=ratio, bits=bits, thvalues=thvalues, block_size=block_size,
            lms=None if lms is None else jnp.asarray(lms[sl], dtype))
      else:
        out = metrics.reduced_resolution_indexes(
            f, jnp.asarray(gt[sl], dtype), ratio=ratio, bits=bits, block_size=block_size,
            flag_cut_bounds=flag_cut_bounds, dim_cut=dim_cut, thvalues=thvalues)
      for k, v in out.items():
        results.setdefault(k, []).append(np.asarray(v, np.float64).reshape(-1))
      if progress:
        done = min(lo + batch_size, fused.shape[0])
        print(f"  evaluated {done}/{fused.shape[0]} images ({time.time() - start:.1f} s)",
              file=sys.stderr, flush=True)
  order = FR_ORDER if full_resolution else RR_ORDER
  return {k: np.concatenate(results[k]) for k in order}


def summarize(results: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
  """index -> (mean, sample std); std is NaN for a single image, NaN images propagate."""
  out = {}
  for k, v in results.items():
    v = np.asarray(v, np.float64)
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    out[k] = (float(np.mean(v)), std)
  return out


def format_table(results: Mapping[str, np.ndarray], num_bands: int | None = None,
                 per_image: bool = True, digits: int = 4) -> str:
  """Per-image values and a ``mean +- std`` line per index, like the paper's tables."""
  keys = list(results)
  names = [display_name(k, num_bands) for k in keys]
  width = max(digits + 8, max(len(n) for n in names) + 2)
  lines = []
  if per_image:
    n = len(next(iter(results.values()))) if keys else 0
    lines.append("image".ljust(7) + "".join(nm.rjust(width) for nm in names))
    for i in range(n):
      lines.append(f"{i:<7d}" + "".join(f"{results[k][i]:{width}.{digits + 2}f}" for k in keys))
    lines.append("")
  summary = summarize(results)
  name_width = max(len(n) for n in names) if names else 0
  for k, nm in zip(keys, names):
    mean, std = summary[k]
    std_text = "n/a (1 image)" if math.isnan(std) and len(results[k]) == 1 else f"{std:.{digits}f}"
    lines.append(f"{nm.ljust(name_width)}  {mean:.{digits}f} ± {std_text}")
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
    x = np.transpose(x, (0, 2, 3, 1))
  return np.ascontiguousarray(x)


def _load(path: str, what: str) -> dict[str, np.ndarray]:
  try:
    return io_utils.load_arrays(path)
  except (OSError, ValueError, KeyError) as e:
    raise EvaluationError(f"{what} file: {e}") from e


def load_fused(path: str, layout: str = "nchw") -> np.ndarray:
  """The fused array of a file (key ``fused``; a .mat may hold a single array)."""
  arrays = _load(path, "fused")
  if "fused" in arrays:
    x = arrays["fused"]
  elif pathlib.Path(path).suffix.lower() == ".mat" and len(arrays) == 1:
    x = next(iter(arrays.values()))
  else:
    raise EvaluationError(f"{path}: missing key 'fused'; the file holds {sorted(arrays)}")
  return _to_nhwc(f"{path}:fused", x, layout)


def load_reference(path: str, full_resolution: bool, layout: str = "nchw"
                   ) -> dict[str, np.ndarray]:
  """The reference arrays needed (gt, or ms/pan[/lms]) as NHWC float arrays."""
  arrays = _load(path, "reference")
  needed = ("ms", "pan") if full_resolution else ("gt",)
  missing = [k for k in needed if k not in arrays]
  if missing:
    raise EvaluationError(f"{path}: missing key(s) {missing} for "
                          f"{'full' if full_resolution else 'reduced'}-resolution evaluation; "
                          f"the file holds {sorted(arrays)}")
  keys = needed + (("lms",) if full_resolution and "lms" in arrays else ())
  return {k: _to_nhwc(f"{path}:{k}", arrays[k], layout, is_pan=(k == "pan")) for k in keys}


def write_json_atomic(path: str, payload: Mapping) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=1, allow_nan=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m dcfnet_jax.evaluate",
                              description=__doc__.split("\n")[0])
  p.add_argument("--fused", required=True, help="file with the fused images (key 'fused')")
  p.add_argument("--reference", required=True,
                 help="PanCollection-style file with gt (RR) or ms/pan[/lms] (FR)")
  p.add_argument("--sensor", required=True,
                 help=f"sensor table name: {', '.join(sorted(imaging.SENSORS))}")
  p.add_argument("--full-resolution", action="store_true",
                 help="full-resolution indices (D_lambda, D_s, QNR, D_lambda_K, HQNR)")
  p.add_argument("--json", default=None, help="write settings, per-image values and summary")
  p.add_argument("--ratio", type=int, default=4)
  p.add_argument("--block-size", type=int, default=32, help="Q/Q2n/QNR block size")
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


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    sensor = imaging.get_sensor(args.sensor)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    fused = load_fused(args.fused, args.layout) * args.scale
    reference = {k: v * args.scale
                 for k, v in load_reference(args.reference, args.full_resolution,
                                            args.layout).items()}
    print(f"evaluating {fused.shape[0]} image(s) of {fused.shape[1]}x{fused.shape[2]}x"
          f"{fused.shape[3]} ({'full' if args.full_resolution else 'reduced'} resolution, "
          f"sensor {sensor.name})", file=sys.stderr, flush=True)
    settings = dict(
        sensor=sensor.name, full_resolution=args.full_resolution, ratio=args.ratio,
        bits=sensor.bits if args.bits is None else args.bits, block_size=args.block_size,
        flag_cut_bounds=not args.no_cut_bounds, dim_cut=args.dim_cut, thvalues=args.thvalues,
        use_lms=not args.recompute_lms, float64=not args.float32)
    results = evaluate_arrays(fused, reference, batch_size=args.batch_size, progress=True,
                              **settings)
  except EvaluationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  num_bands = fused.shape[-1]
  print(format_table(results, num_bands))
  if args.json:
    summary = summarize(results)
    lms_source = None
    if args.full_resolution:
      lms_source = "file" if settings["use_lms"] and "lms" in reference else "interp23tap(ms)"
    write_json_atomic(args.json, {
        "fused": str(args.fused), "reference": str(args.reference), "scale": args.scale,
        "settings": settings, "lms": lms_source, "num_images": int(fused.shape[0]),
        "names": {k: display_name(k, num_bands) for k in results},
        "per_image": {k: v.tolist() for k, v in results.items()},
        "mean": {k: s[0] for k, s in summary.items()},
        "std": {k: s[1] for k, s in summary.items()},
    })
    print(f"wrote {args.json}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
