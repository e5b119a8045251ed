"""The command line of sharpening: `python -m dcfnet_jax.pansharpen` (`dcfnet-pansharpen`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from dcfnet_jax import cli, files, inference, models, scenes, tiling
from dcfnet_jax import pansharpen as package
from dcfnet_jax.errors import InputError
from dcfnet_jax.losses import objective
from dcfnet_jax.metrics import host
from dcfnet_jax.pansharpen import adapt, checks, outputs, patches, runs
from dcfnet_jax.pansharpen.checks import RATIO, TilingOptions
from dcfnet_jax.pansharpen.tiles import TileRunner


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.pansharpen", package.__doc__)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--checkpoint",
                     help="exported parameters .npz, or a training workdir / checkpoint directory "
                     "(a workdir: its best step by validation)")
  model.add_argument("--model", help="zero-shot: a freshly initialised network of this name "
                     f"({', '.join(models.model_names())}) for the scene's bands, adapted to the "
                     "scene (needs --adapt-steps and --img-range)")
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
  add_adapt_arguments(p)
  return p


def add_adapt_arguments(p: cli.Parser) -> None:
  """The --adapt-* flags of target-adaptive fine-tuning (docs/adaptation.md)."""
  g = p.add_argument_group("target-adaptive fine-tuning (docs/adaptation.md): the model is "
                           "fine-tuned on the scene itself with an unsupervised full-resolution "
                           "loss, written to OUT.adapted.npz, then used to sharpen; defaults "
                           "of the loss and learning rate are the sensor's (--sensor)")
  g.add_argument("--adapt-steps", type=int, default=0, help="optimiser steps (0: no adaptation)")
  g.add_argument("--adapt-loss", choices=objective.KINDS,
                 help="Z-PNN (spectral L1 + beta spatial) or lambda-PNN (alpha R-ERGAS + beta' "
                 "D_lambda + gamma spatial); default: zpnn for the sensors with the authors' "
                 "settings (WV3, WV2, GeoEye1), lambda for any other")
  g.add_argument("--adapt-lr", type=float, help="Adam learning rate (default: the sensor's)")
  g.add_argument("--adapt-weight-decay", type=float,
                 help="Adam's (coupled) weight decay (default: the sensor's; lambda-PNN 1e-4)")
  g.add_argument("--adapt-beta", type=float, help="Z-PNN's spatial weight beta")
  g.add_argument("--adapt-alpha", type=float, help="lambda-PNN's R-ERGAS weight alpha")
  g.add_argument("--adapt-beta-prime", type=float, help="lambda-PNN's D_lambda weight beta'")
  g.add_argument("--adapt-gamma", type=float, help="lambda-PNN's spatial weight gamma")
  g.add_argument("--adapt-spatial-mean", choices=objective.SPATIAL_MEANS, default="selected",
                 help="spatial term: mean over the pixels past the threshold, or over all")
  g.add_argument("--adapt-scope", choices=patches.SCOPES, default="auto",
                 help="what a step trains on: the whole scene(s) (scene: the same batch every "
                 "step, no random draw), random patches (patches), or auto: whole scenes when "
                 f"they hold at most {patches.WHOLE_SCENE_PIXELS} PAN pixels in all")
  g.add_argument("--adapt-patch", type=int, default=adapt.DEFAULT_PATCH,
                 help="patch side, PAN pixels (multiple of 4, at least 64)")
  g.add_argument("--adapt-batch", type=int, default=adapt.DEFAULT_BATCH,
                 help="patches per step (rounded up to a multiple of the device count)")
  g.add_argument("--adapt-bn", choices=adapt.BN_MODES,
                 help="BatchNorm during adaptation: running statistics (eval), batch "
                 "statistics with running ones updated (train), or running statistics first "
                 "re-estimated on the scene (adabn); default: eval for the authors' sensors, "
                 "adabn for any other")
  g.add_argument("--adapt-schedule", choices=adapt.SCHEDULES,
                 help="learning rate over the steps: constant, or cosine decay to 0; default: "
                 "constant for the authors' sensors, cosine for any other")
  g.add_argument("--adapt-head", choices=adapt.HEADS,
                 help="the model's output layer: kept, or reset to zero first so that a residual "
                 "network starts as EXP with its trained features; default: keep for the "
                 "authors' sensors, reset for any other (residual models)")
  g.add_argument("--adapt-salient", type=float, default=1.0,
                 help="fraction of patch positions kept by k-means salient selection (1: all)")
  g.add_argument("--adapt-seed", type=int, default=0,
                 help="seed of the patch draws (and of --model's initialisation)")


def adapt_settings(args: argparse.Namespace) -> adapt.AdaptSettings | None:
  """The adaptation the flags ask for (None: none), checked before any slow work."""
  if args.model and args.adapt_steps <= 0:
    raise InputError(f"--model {args.model}: a fresh network must be adapted to the scene; "
                     "pass --adapt-steps N (e.g. 200)")
  if args.adapt_steps == 0:
    return None
  settings = adapt.AdaptSettings(
      steps=args.adapt_steps, loss=args.adapt_loss, learning_rate=args.adapt_lr,
      weight_decay=args.adapt_weight_decay, beta=args.adapt_beta, alpha=args.adapt_alpha,
      beta_prime=args.adapt_beta_prime, gamma=args.adapt_gamma,
      spatial_mean=args.adapt_spatial_mean, patch=args.adapt_patch, batch_size=args.adapt_batch,
      bn=args.adapt_bn, schedule=args.adapt_schedule, salient=args.adapt_salient,
      seed=args.adapt_seed, scope=args.adapt_scope, head=args.adapt_head)
  settings.validate()
  return settings


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
  settings = adapt_settings(args)
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
      [".assess.json"] if opts.assess else []) + (
      [runs.ADAPTED_SUFFIX, runs.ADAPTED_JSON_SUFFIX] if settings else [])
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
  if args.model:
    if not args.img_range:
      raise InputError(f"--model {args.model}: a fresh network has no img_range; pass "
                       "--img-range (DN of full scale, e.g. 2047 for 11-bit data)")
    loaded = adapt.fresh_model(args.model, runs.scene_bands(opts, h5_mode),
                               img_range=float(args.img_range),
                               bits=outputs.assess_bits(0, float(args.img_range)),
                               sensor=objective.sensor_key(args.sensor or "none"),
                               seed=args.adapt_seed)
  else:
    try:
      loaded = inference.load(args.checkpoint)
    except InputError as e:
      raise InputError(f"--checkpoint {args.checkpoint}: {e}") from e
  img_range = float(args.img_range) if args.img_range else loaded.img_range
  if img_range <= 0:
    raise InputError(f"--checkpoint {args.checkpoint}: the metadata has no img_range; pass "
                     "--img-range")
  runner_options = dict(batch_size=opts.batch_size, precision=args.precision,
                        clip=not args.no_clip, img_range=img_range)
  adaptation = None
  if settings is not None:
    adaptation = runs.adapt_to_run(loaded, runner_options, opts, settings, h5_mode)
    loaded = adaptation.model
  runner = TileRunner(loaded, opts.batch_size, precision=args.precision, clip=not args.no_clip,
                      img_range=img_range)
  if h5_mode:
    summary = runs.run_pancollection(loaded, runner, opts,
                                     images=adaptation.images if adaptation else None)
  else:
    summary = runs.run_scene(loaded, runner, opts,
                             before=adaptation.before if adaptation else None)
  if adaptation is not None:
    summary["adaptation"] = adaptation.summary
  return summary


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
