"""The command line of sharpening: `python -m dcfnet_jax.pansharpen` (`dcfnet-pansharpen`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from dcfnet_jax import cli, files, inference, scenes, tiling
from dcfnet_jax import pansharpen as package
from dcfnet_jax.errors import InputError
from dcfnet_jax.metrics import host
from dcfnet_jax.pansharpen import checks, outputs, runs
from dcfnet_jax.pansharpen.checks import RATIO, TilingOptions
from dcfnet_jax.pansharpen.tiles import TileRunner


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.pansharpen", package.__doc__)
  p.add_argument("--checkpoint", required=True,
                 help="exported parameters .npz, or a training workdir / checkpoint directory "
                 "(a workdir: its best step by validation)")
  p.add_argument("--ms", required=True, help="MS GeoTIFF, .npz/.mat/.h5 scene, or a PanCollection "
                 "h5 test file (then omit --pan)")
  p.add_argument("--pan", help="PAN GeoTIFF (or array file); omit when --ms holds both")
  p.add_argument("--out", required=True, help="output .tif/.tiff, .npz or .h5")
  p.add_argument("--sensor", help="sensor name for RGB bands and the MTF of --assess "
                 "(default: the checkpoint's)")
  p.add_argument("--tile", type=int, default=checks.DEFAULT_TILE,
                 help="tile size in PAN pixels (multiple of 4)")
  p.add_argument("--overlap", type=int, default=checks.DEFAULT_OVERLAP,
                 help="minimum overlap of neighbouring tiles, PAN pixels (multiple of 4)")
  p.add_argument("--trim", type=int, default=checks.DEFAULT_TRIM,
                 help="pixels at each overlapped tile edge that get zero blending weight")
  p.add_argument("--pad", type=int, default=None,
                 help=f"symmetric padding of the scene borders, PAN pixels (multiple of 4); "
                 f"default {checks.DEFAULT_PAD} for scenes, 0 for PanCollection files (official "
                 "one-pass parity)")
  p.add_argument("--blend", choices=tiling.BLEND_KINDS, default="cosine")
  p.add_argument("--batch-size", type=int, default=4, help="tiles per batch (rounded up to a "
                 "multiple of the local device count)")
  p.add_argument("--bands", help="MS bands to use, 1-based comma-separated (e.g. 2,3,4,5)")
  p.add_argument("--nodata", type=float, help="input value to treat as nodata (default: the "
                 "GeoTIFFs' own)")
  p.add_argument("--ms-key", help="array name of the MS in .npz/.mat/.h5 scenes")
  p.add_argument("--pan-key", help="array name of the PAN in .npz/.mat/.h5 scenes")
  p.add_argument("--img-range", type=float, help="override the checkpoint's img_range (DN of "
                 "full scale)")
  p.add_argument("--precision", choices=inference.PRECISIONS, default="highest",
                 help="matmul/conv precision on GPU/TPU (no effect on CPU)")
  p.add_argument("--no-clip", action="store_true", help="keep network outputs outside [0, 1] "
                 "(x img_range) instead of clipping them as the official test step does")
  p.add_argument("--preview", action="store_true", help="write OUT.preview.png: lms | result")
  p.add_argument("--reference", help="reference image at PAN resolution; adds an error map to "
                 "the preview")
  p.add_argument("--assess", action="store_true", help="print and save OUT.assess.json: the "
                 "full-resolution indexes of the central crop (D_lambda, D_s, QNR, D_lambda_K, "
                 "HQNR; R-Q2n, R-Q, R-SAM, R-ERGAS, D_rho)")
  p.add_argument("--fr-indexes", choices=host.FR_INDEXES, default="all",
                 help="families of --assess: all, the toolbox's (QNR/HQNR) or the reprojection "
                 "protocol's (R-* and D_rho, crops of at least 128x128)")
  p.add_argument("--crop", type=int, default=runs.DEFAULT_CROP, help="side of the central crop "
                 "used by --preview/--assess for big scenes (PAN pixels)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--no-progress", action="store_true", help="no progress lines")
  p.add_argument("--summary-json", help="also write the run summary to this JSON file")
  return p


def run(args: argparse.Namespace) -> None:
  """Runs the CLI with parsed `args`; raises InputError on bad input."""
  summary = sharpen(args)
  if args.summary_json:
    files.write_json(args.summary_json, summary, default=str)


def sharpen(args: argparse.Namespace) -> dict[str, Any]:
  """Checks everything cheap first, then loads the model and sharpens; returns the summary."""
  h5_mode = runs.is_pancollection_file(args.ms, args.pan)
  pad = args.pad if args.pad is not None else (0 if h5_mode else checks.DEFAULT_PAD)
  options = TilingOptions(tile=args.tile, overlap=args.overlap, pad=pad, trim=args.trim,
                          blend=args.blend)
  options.validate()  # before any slow work
  opts = runs.RunOptions(ms=args.ms, pan=args.pan, out=args.out, sensor=args.sensor,
                         tiling=options, batch_size=args.batch_size, preview=args.preview,
                         reference=args.reference, assess=args.assess,
                         fr_indexes=args.fr_indexes, crop=args.crop,
                         overwrite=args.overwrite, bands=args.bands, nodata=args.nodata,
                         ms_key=args.ms_key, pan_key=args.pan_key,
                         progress=not args.no_progress)
  inputs = [opts.ms, opts.pan, opts.reference, args.checkpoint]
  out = checks.check_output_path(opts.out, inputs, opts.overwrite)
  sidecars = ([".preview.png"] if opts.preview or opts.reference else []) + (
      [".assess.json"] if opts.assess else [])
  for suffix in sidecars:
    files.check_output_file(outputs.sidecar(out, suffix), flag="--out (its sidecar)",
                            inputs=inputs, overwrite=opts.overwrite)
  if args.summary_json:
    files.check_output_file(args.summary_json, flag="--summary-json", inputs=inputs + [opts.out])
  if h5_mode and (opts.preview or opts.assess or opts.reference):
    raise InputError("--preview/--assess/--reference apply to scenes; for PanCollection files "
                     "use python -m dcfnet_jax.evaluate")
  if not h5_mode:  # fail on unreadable or misregistered inputs before loading anything
    with opts.open_scene() as scene:
      scenes.check_coregistration(scene.info, RATIO)
      if opts.assess:  # the assessed crop must fit the chosen full-resolution families
        outputs.assess_crop(*scene.info.pan_shape, opts.crop, opts.fr_indexes)
  try:
    loaded = inference.load(args.checkpoint)
  except InputError as e:
    raise InputError(f"--checkpoint {args.checkpoint}: {e}") from e
  img_range = float(args.img_range) if args.img_range else loaded.img_range
  if img_range <= 0:
    raise InputError(f"--checkpoint {args.checkpoint}: the metadata has no img_range; pass "
                     "--img-range")
  runner = TileRunner(loaded, opts.batch_size, precision=args.precision, clip=not args.no_clip,
                      img_range=img_range)
  if h5_mode:
    return runs.run_pancollection(loaded, runner, opts)
  return runs.run_scene(loaded, runner, opts)


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
