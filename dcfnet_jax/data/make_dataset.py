r"""Makes PanCollection h5 datasets from co-registered MS/PAN scenes (Wald protocol).

  python -m dcfnet_jax.data.make_dataset --ms MS.tif --pan PAN.tif --sensor wv3 --ratio 4 \
      --out DIR [--patch 64 --stride 32 --test-size 256 --full-size 512 ...]

For every scene (repeat --ms/--pan, or --list FILE):
1. Reduced resolution (Wald protocol, docs/metric_definitions.md §1.4): GT = the MS as
   delivered; the MS input is the MS MTF-filtered with the sensor's filters and decimated by
   `ratio`; the PAN input is the PAN shrunk onto the GT grid with MATLAB's antialiased bicubic
   imresize (`dcfnet_jax.imaging`).
2. Full resolution: the undegraded pair (PAN as delivered, MS at its native resolution).
3. `lms = interp23tap(ms, ratio)` of every patch / image (the toolbox's LMS; circular borders,
   per image, float).
4. A spatial split keeps validation and test regions apart from training regions: a whole scene
   goes to one split (--scene-split), or a scene is cut into bands along rows (or columns) with
   a guard gap between them: train on top, then valid, then test (see `plan_bands`).

With `--pan-prescale s` the scene's PAN is only `ratio/s` times finer than the MS (e.g.
Landsat, ratio 2 native, for a ratio-4 model with s = 2): GT = MS (30 m), PAN input =
degrade(PAN, ratio/s) (30 m, on the GT grid), MS input = degrade(MS, ratio) (120 m); the
full-resolution pair is the native PAN (15 m) with degrade(MS, s) (60 m), which is 4:1 again
but has no reference.

Outputs in --out: train.h5, valid.h5, test_reduced.h5, test_full.h5 (PanCollection layout
N,C,H,W, one example per chunk, gzip+shuffle), manifest.json (sources with sha256, sensor,
ratio, seeds, split geometry, counts, files with sha256, tool version). Every file is written
to a temp file and renamed, and read back through the validating reader.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import dcfnet_jax
from dcfnet_jax import cli, dn, files, scenes
from dcfnet_jax.data import pancollection
from dcfnet_jax.data.wald import (SCENE_SPLITS, SPLITS, STORE_DTYPES, Options, candidates,
                                  check_sizes, cut, degrade, plan_bands, select)
from dcfnet_jax.errors import InputError

log = logging.getLogger(__name__)

TOOL = "dcfnet_jax.data.make_dataset"

# ------------------------------------------------------------------------------- main work


def sha256(path: str | os.PathLike[str]) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass
class SceneSpec:
  ms: str
  pan: str | None = None
  split: str = "band"
  ms_key: str | None = None
  pan_key: str | None = None


def make_datasets(specs: Sequence[SceneSpec], out_dir: str | os.PathLike[str], opts: Options, *,
                  extra_manifest: dict[str, Any] | None = None,
                  path_label: Callable[[str], str] = str,
                  progress: Callable[[str], None] = log.info) -> dict[str, Any]:
  """Reads the scenes, writes the four split files and manifest.json; returns the manifest.

  `path_label` turns a source path into the name recorded in the manifest (e.g. relative).
  """
  if not specs:
    raise InputError("no scenes given (--ms/--pan or --list)")
  for spec in specs:
    if spec.split not in SCENE_SPLITS:
      raise InputError(f"{spec.ms}: scene split must be one of {SCENE_SPLITS}, got {spec.split!r}")
  sources_in = [p for spec in specs for p in (spec.ms, spec.pan) if p]
  out_dir = files.check_output_folder(out_dir, flag="--out", inputs=sources_in)
  if out_dir.is_dir():  # the files it will replace: not inputs, not folders
    for name in [f"{split}.h5" for split in SPLITS] + ["manifest.json"]:
      files.check_output_file(out_dir / name, flag="--out", inputs=sources_in)
  img_range, bits = opts.resolved_img_range(), opts.resolved_bits()
  rng = np.random.default_rng(opts.seed)

  degraded, sources, geometry, band_names = [], [], [], None
  all_cands: list[_Candidate] = []
  for i, spec in enumerate(specs):
    progress(f"[{i + 1}/{len(specs)}] reading {spec.ms}" + (f" + {spec.pan}" if spec.pan else ""))
    with scenes.open_scene(spec.ms, spec.pan, bands=opts.bands, ms_key=spec.ms_key,
                           pan_key=spec.pan_key) as scene:
      info = scene.info
      check_sizes(info.ms_shape, info.pan_shape, opts, info.name)
      scenes.check_coregistration(info, opts.native_ratio, sizes=False)
      ms, pan = scene.read_all()
    check_scene_values(info.name, ms, pan, img_range, bits)
    if band_names is None:
      band_names = info.band_names
    arrays = degrade(ms, pan, opts, info.name)
    h, w = arrays["gt"].shape[:2]
    regions = plan_bands(h, w, opts, spec.split)
    cands = candidates(regions, i, opts)
    all_cands.extend(cands)
    degraded.append(arrays)
    inputs = [spec.ms] + ([spec.pan] if spec.pan else [])
    sources.append(dict(
        ms=path_label(spec.ms), pan=path_label(spec.pan) if spec.pan else None,
        ms_key=spec.ms_key, pan_key=spec.pan_key,
        sha256={path_label(f): sha256(f) for f in inputs},
        ms_shape=list(ms.shape), pan_shape=list(pan.shape),
        dtype=str(ms.dtype), band_names=list(info.band_names or []),
        crs=info.ms_crs, ms_transform=info.ms_transform,
        pan_transform=info.pan_transform))
    geometry.append(dict(scene=i, split=spec.split, gt_size=[h, w],
                         regions=[reg.as_dict() for reg in regions],
                         candidates={s: sum(c.split == s for c in cands) for s in SPLITS}))

  limits = dict(train=opts.max_train, valid=opts.max_valid,
                test_reduced=opts.max_test_reduced, test_full=opts.max_test_full)
  manifest_files, counts = {}, {}
  for split in SPLITS:
    chosen = select([c for c in all_cands if c.split == split], limits[split], rng)
    counts[split] = len(chosen)
    if not chosen:
      progress(f"{split}: no examples (no region or too small); no file written")
      continue
    examples = [cut(degraded[c.scene], c, opts) for c in chosen]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    stored = {k: dn.to_dtype(v, opts.dtype) for k, v in batch.items()}
    lms_dtype = opts.dtype if opts.dtype in ("float32", "float64") else "float32"
    if opts.store_lms:
      stored["lms"] = pancollection.compute_lms(stored["ms"], opts.ratio).astype(lms_dtype)
    attrs = dict(sensor=opts.sensor, ratio=opts.ratio, pan_prescale=opts.pan_prescale,
                 img_range=img_range, bits=bits, split=split, tool=TOOL,
                 tool_version=dcfnet_jax.__version__,
                 band_names=list(band_names or []), layout="N,C,H,W, raw DN")
    if not opts.store_lms:
      attrs[pancollection.LMS_ATTR] = pancollection.LMS_OMITTED
    path = out_dir / f"{split}.h5"
    pancollection.write_h5(path, stored, attrs=attrs, compression_level=opts.compression_level)
    # Read back through the validating reader: the output must pass it.
    with pancollection.PanCollectionSource(
        path, img_range=img_range, ratio=opts.ratio, num_bands=stored["ms"].shape[-1],
        require_gt=split != "test_full") as source:
      info = source.info
    manifest_files[split] = dict(
        file=path.name, sha256=sha256(path), bytes=path.stat().st_size, num_examples=len(chosen),
        shapes={k: [v.shape[0], v.shape[3], v.shape[1], v.shape[2]] for k, v in stored.items()},
        dtypes={k: str(v.dtype) for k, v in stored.items()},
        max_dn={k: round(v, 6) for k, v in info.max_dn.items()},
        origins_note="[scene, row, col] of each example: scene index into 'sources', origin "
                     "on the GT grid (test_full: on the native PAN grid)",
        origins=[[c.scene, c.row, c.col] for c in chosen])
    progress(f"{split}: {len(chosen)} examples -> {path} ({path.stat().st_size / 1e6:.2f} MB)")

  manifest = dict(
      tool=TOOL, tool_version=dcfnet_jax.__version__, command=list(sys.argv),
      sensor=opts.sensor, ratio=opts.ratio, pan_prescale=opts.pan_prescale,
      native_ratio=opts.native_ratio, img_range=img_range, bits=bits,
      band_names=list(band_names or []), seed=opts.seed, options=dataclasses.asdict(opts),
      recipe=dict(
          reduced="gt = MS; ms = decimate(MTF(MS, sensor, ratio), ratio); "
                  f"pan = imresize(PAN, 1/{opts.native_ratio}, bicubic) "
                  "(docs/metric_definitions.md §1.4)",
          full=("pan = PAN; ms = MS" if opts.pan_prescale == 1 else
                f"pan = PAN; ms = decimate(MTF(MS, sensor, {opts.pan_prescale}), {opts.pan_prescale})"),
          lms="interp23tap(ms, ratio) per patch/image" + ("" if opts.store_lms else
                                                           " (not stored: the reader computes it)"),
          split=("whole scenes per split, or bands along "
                 f"{opts.split_axis} (train, valid, test) with {opts.guard} GT px guards")),
      sources=sources, split_geometry=geometry, counts=counts, files=manifest_files)
  if extra_manifest:
    manifest.update(extra_manifest)
  files.write_json(out_dir / "manifest.json", manifest)
  progress(f"manifest -> {out_dir / 'manifest.json'}")
  return manifest


def check_scene_values(name: str, ms: np.ndarray, pan: np.ndarray, img_range: float,
                       bits: int) -> None:
  """The value-range rule (`dn.check_range`) on a scene before anything is written (the split
  files are read back through the validating reader, which applies the same rule)."""
  for what, x in (("MS", ms), ("PAN", pan)):
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
      raise InputError(f"{name}: the {what} has dtype {x.dtype}; expected real numbers (DN)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
      raise InputError(f"{name}: the {what} holds {int(np.size(x) - np.isfinite(x).sum())} "
                       "NaN/inf values; fill them or cut them away first")
  peak = max(float(ms.max()), float(pan.max()))
  low = min(float(ms.min()), float(pan.min()))
  dn.check_range(f"{name} (img_range {img_range:g})", peak, img_range, low=low, bits=bits,
                 fix="pass the sensor's --bits / --img-range")


# ------------------------------------------------------------------------------- CLI


def parse_list_file(path: str) -> list[SceneSpec]:
  """Lines `MS [PAN|-] [SPLIT]`; '#' starts a comment; relative paths are relative to the file."""
  base = pathlib.Path(path).resolve().parent
  files.check_input_file(path, "--list")
  try:
    text = pathlib.Path(path).read_text()
  except UnicodeDecodeError as e:
    raise InputError(f"--list {path}: not a text file (it looks like {files.looks_like(path)}); "
                     "expected lines 'MS [PAN|-] [SPLIT]'") from e
  specs = []
  for n, line in enumerate(text.splitlines(), 1):
    fields = line.split("#", 1)[0].split()
    if not fields:
      continue
    if len(fields) > 3:
      raise InputError(f"{path}:{n}: expected 'MS [PAN|-] [SPLIT]', got {line!r}")
    resolve = lambda p: str(p if pathlib.Path(p).is_absolute() else base / p)  # noqa: E731
    pan = fields[1] if len(fields) > 1 and fields[1] != "-" else None
    specs.append(SceneSpec(resolve(fields[0]), resolve(pan) if pan else None,
                           fields[2] if len(fields) > 2 else "band"))
  return specs


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.data.make_dataset", __doc__)
  p.add_argument("--ms", action="append", default=[], help="MS scene (repeat for several scenes)")
  p.add_argument("--pan", action="append", default=[],
                 help="PAN of each --ms, in order ('-' or omitted: the PAN is in the MS file)")
  p.add_argument("--scene-split", action="append", default=[], choices=SCENE_SPLITS,
                 help="per scene: a whole-scene split, or 'band' to cut the scene into bands")
  p.add_argument("--list", help="file with lines 'MS [PAN|-] [SPLIT]' (instead of --ms/--pan)")
  p.add_argument("--ms-key", help="array name of the MS in .npz/.mat/.h5 scenes")
  p.add_argument("--pan-key", help="array name of the PAN in .npz/.mat/.h5 scenes")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--sensor", required=True,
                 help="sensor of dcfnet_jax.imaging (MTF filters), e.g. wv3, qb, none")
  p.add_argument("--ratio", type=int, default=4)
  p.add_argument("--pan-prescale", type=int, default=1,
                 help="scenes whose PAN is ratio/s times finer than the MS (Landsat: 2)")
  p.add_argument("--bits", type=int, help="radiometric bits (default: the sensor table's)")
  p.add_argument("--img-range", type=float, help="full-scale DN (default 2**bits - 1)")
  p.add_argument("--bands", help="MS bands to keep, 1-based (GDAL style, as pansharpen), in "
                 "this order: 3,2,1,4")
  p.add_argument("--patch", type=int, default=64)
  p.add_argument("--stride", type=int, default=32)
  p.add_argument("--valid-stride", type=int, help="default: --patch")
  p.add_argument("--test-size", type=int, default=256)
  p.add_argument("--full-size", type=int, default=512, help="PAN pixels (multiple of 32)")
  p.add_argument("--split-axis", choices=("rows", "cols"), default="rows")
  p.add_argument("--valid-fraction", type=float, default=0.1)
  p.add_argument("--test-fraction", type=float, default=0.2)
  p.add_argument("--guard", type=int, default=32, help="GT pixels between split bands")
  for split in SPLITS:
    p.add_argument(f"--max-{split.replace('_', '-')}", type=int,
                   help=f"at most this many {split} examples")
  p.add_argument("--seed", type=int, default=0, help="for the --max-* subsampling")
  p.add_argument("--dtype", choices=STORE_DTYPES, default="float32",
                 help="stored dtype of gt/ms/pan (integers: rounded and clipped)")
  p.add_argument("--no-lms", action="store_true",
                 help="omit lms (the reader computes interp23tap(ms) on read)")
  p.add_argument("--compression-level", type=int, default=4)
  return p


def specs_from_args(args: argparse.Namespace) -> list[SceneSpec]:
  if args.list:
    if args.ms or args.pan or args.scene_split:
      raise InputError("give either --list or --ms/--pan/--scene-split, not both")
    specs = parse_list_file(args.list)
  else:
    if args.pan and len(args.pan) != len(args.ms):
      raise InputError(f"{len(args.ms)} --ms but {len(args.pan)} --pan; give one --pan per --ms "
                       "('-' when the PAN is in the MS file)")
    if args.scene_split and len(args.scene_split) not in (1, len(args.ms)):
      raise InputError(f"{len(args.ms)} --ms but {len(args.scene_split)} --scene-split")
    pans = args.pan or [None] * len(args.ms)
    splits = args.scene_split or ["band"]
    splits = splits * len(args.ms) if len(splits) == 1 else splits
    specs = [SceneSpec(ms, None if pan in (None, "-") else pan, split)
             for ms, pan, split in zip(args.ms, pans, splits)]
  for spec in specs:
    spec.ms_key, spec.pan_key = args.ms_key, args.pan_key
  return specs


def options_from_args(args: argparse.Namespace) -> Options:
  return Options(
      sensor=args.sensor, ratio=args.ratio, pan_prescale=args.pan_prescale, bits=args.bits,
      img_range=args.img_range, bands=scenes.parse_bands(args.bands), patch=args.patch,
      stride=args.stride,
      valid_stride=args.valid_stride, test_size=args.test_size, full_size=args.full_size,
      split_axis=args.split_axis, valid_fraction=args.valid_fraction,
      test_fraction=args.test_fraction, guard=args.guard, max_train=args.max_train,
      max_valid=args.max_valid, max_test_reduced=args.max_test_reduced,
      max_test_full=args.max_test_full, seed=args.seed, dtype=args.dtype,
      store_lms=not args.no_lms, compression_level=args.compression_level)


def run(args: argparse.Namespace) -> None:
  make_datasets(specs_from_args(args), args.out, options_from_args(args))


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
