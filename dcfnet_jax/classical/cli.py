r"""Runs a classical pansharpening method on a PanCollection test file.

  python -m dcfnet_jax.classical METHOD --input TEST.h5 --sensor S --out FUSED.h5

METHOD: exp, bdsd_pc, mtf_glp_hpm, mtf_glp_fs (the DCFNet paper's GLP-Reg) or cvpr19 (our
reconstruction). The input holds `ms` and `pan` (and `lms`, else lms = interp23tap(ms)) in the
layout N,C,H,W in DN; the output holds `fused` (N,C,H,W, float64 DN, not clipped, as the toolbox
leaves it) and is written atomically. Evaluate it with `python -m dcfnet_jax.evaluate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

import h5py
import numpy as np

from dcfnet_jax import cli, files, imaging
from dcfnet_jax.classical import batch, cvpr19, methods
from dcfnet_jax.data import pancollection
from dcfnet_jax.errors import InputError
from dcfnet_jax.progress import Progress

log = logging.getLogger(__name__)


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.classical", __doc__)
  p.add_argument("method", choices=sorted(methods.METHODS))
  p.add_argument("--input", required=True, help="PanCollection .h5 (keys ms, pan[, lms, gt])")
  p.add_argument("--out", required=True, help="output .h5 with key 'fused' (N,C,H,W, DN)")
  p.add_argument("--sensor", default=None,
                 help=f"sensor name ({', '.join(sorted(imaging.SENSORS))}); default: the "
                      "input file's 'sensor' attribute")
  p.add_argument("--ratio", type=int, default=4)
  p.add_argument("--recompute-lms", action="store_true",
                 help="use interp23tap(ms) even if the file has 'lms'")
  p.add_argument("--max-images", type=int, default=-1, help="only the first N images")
  p.add_argument("--float32", action="store_true", help="compute in float32 (not toolbox-exact)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  g = p.add_argument_group("cvpr19 (reconstruction parameters; see docs/baselines.md)")
  g.add_argument("--cvpr19-eta", type=float, default=None)
  g.add_argument("--cvpr19-epsilon", type=float, default=None)
  g.add_argument("--cvpr19-window", type=int, default=None)
  g.add_argument("--cvpr19-outer-iterations", type=int, default=None)
  g.add_argument("--cvpr19-cg-iterations", type=int, default=None)
  return p


def _attr(value):
  """An h5 attribute as a plain Python value (bytes decoded)."""
  if isinstance(value, bytes):
    return value.decode()
  return value.item() if isinstance(value, np.generic) else value


def read_input(path: str, ratio: int, recompute_lms: bool, max_images: int
               ) -> tuple[dict[str, np.ndarray], dict]:
  """(NHWC float64 ms, pan, lms; file attributes) of a PanCollection file, validated by the
  PanCollection reader's structural check (`pancollection.check_h5_layout`)."""
  files.check_input_file(path, "--input")
  if not h5py.is_hdf5(path):
    raise InputError(f"--input {path}: not an HDF5 file (it looks like {files.looks_like(path)}); "
                     "expected a PanCollection .h5 with ms, pan[, lms, gt] (N,C,H,W)")
  try:
    with h5py.File(path, "r") as f:
      attrs = {k: _attr(v) for k, v in f.attrs.items()}
      structure = pancollection.check_h5_layout(path, f, ratio=ratio)
  except OSError as e:
    raise InputError(f"--input {path}: cannot be read as HDF5 (truncated or damaged?): {e}") from e
  wanted = ["ms", "pan"] + (["lms"] if "lms" in structure["shapes"] and not recompute_lms else [])
  raw = files.load_arrays(path, wanted)
  n = raw["ms"].shape[0]
  if max_images > 0:
    raw = {k: v[:max_images] for k, v in raw.items()}
  out = {k: pancollection.nchw_to_nhwc(v).astype(np.float64) for k, v in raw.items()}
  if "lms" not in out:
    out["lms"] = pancollection.compute_lms(out["ms"], ratio)
  for k, v in out.items():
    if not np.all(np.isfinite(v)):
      raise InputError(f"--input {path}: '{k}' holds NaN or inf values")
  attrs["_num_examples"] = n
  return out, attrs


def run(args: argparse.Namespace) -> None:
  out = files.check_output_file(args.out, flag="--out", inputs=[args.input],
                                overwrite=args.overwrite)
  data, attrs = read_input(args.input, args.ratio, args.recompute_lms, args.max_images)
  sensor_name = args.sensor or attrs.get("sensor")
  if not sensor_name:
    raise InputError(f"--input {args.input} has no 'sensor' attribute; pass --sensor")
  try:
    sensor = imaging.get_sensor(sensor_name)
  except ValueError as e:
    raise InputError(f"--sensor: {e}") from e
  options = {}
  if args.method == "cvpr19":
    fields = {k: getattr(args, f"cvpr19_{k}") for k in
              ("eta", "epsilon", "window", "outer_iterations", "cg_iterations")}
    try:
      options["params"] = cvpr19.CVPR19Params(**{k: v for k, v in fields.items()
                                                 if v is not None})
    except (TypeError, ValueError) as e:
      raise InputError(f"--cvpr19-*: {e}") from e
  elif any(getattr(args, a) is not None for a in vars(args) if a.startswith("cvpr19_")):
    raise InputError("--cvpr19-* options only apply to the cvpr19 method")
  n = data["ms"].shape[0]
  log.info("%s: %d image(s), pan %dx%d, %d bands, sensor %s, ratio %d", args.method, n,
           data["pan"].shape[1], data["pan"].shape[2], data["ms"].shape[-1], sensor.name,
           args.ratio)
  t0 = time.perf_counter()
  progress = Progress(n, args.method, "images", every_seconds=0.0)
  fused = batch.fuse_images(args.method, data["ms"], data["pan"], data["lms"], sensor=sensor,
                            ratio=args.ratio, float64=not args.float32,
                            progress=lambda done, total, seconds: progress.update(done),
                            **options)
  files.save_arrays_h5(
      out, {"fused": np.ascontiguousarray(np.moveaxis(fused, -1, 1))}, method=args.method,
      sensor=sensor.name, ratio=args.ratio, source=str(args.input), layout="N,C,H,W, DN",
      float64=not args.float32)
  log.info("wrote %s (%d images, %.1f s)", out, n, time.perf_counter() - t0)


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
