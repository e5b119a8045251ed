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
import json
import logging
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dcfnet_jax.data import pancollection
from dcfnet_jax.data import scenes as scenes_lib

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test_reduced", "test_full")
SCENE_SPLITS = ("band", "train", "valid", "test")
STORE_DTYPES = ("float32", "float64", "uint8", "uint16")
TOOL = "dcfnet_jax.data.make_dataset"


@dataclasses.dataclass(frozen=True)
class Options:
  """How the datasets are cut. Sizes are in GT pixels unless said otherwise."""

  sensor: str
  ratio: int = 4
  pan_prescale: int = 1
  bits: int | None = None  # None: the sensor table's bits
  img_range: float | None = None  # None: 2**bits - 1
  bands: tuple[int, ...] | None = None  # MS bands kept, 0-based, in this order
  patch: int = 64
  stride: int = 32
  valid_stride: int | None = None  # None: = patch (no overlap)
  test_size: int = 256
  full_size: int = 512  # PAN pixels of a full-resolution test image (multiple of 32)
  split_axis: str = "rows"
  valid_fraction: float = 0.1
  test_fraction: float = 0.2
  guard: int = 32
  max_train: int | None = None
  max_valid: int | None = None
  max_test_reduced: int | None = None
  max_test_full: int | None = None
  seed: int = 0
  dtype: str = "float32"
  store_lms: bool = True
  compression_level: int = 4

  def __post_init__(self):
    r = self.ratio
    problems = []
    if r < 2 or r & (r - 1):
      problems.append(f"--ratio must be a power of 2 >= 2, got {r}")
    if self.pan_prescale < 1 or r % self.pan_prescale:
      problems.append(f"--pan-prescale {self.pan_prescale} must divide --ratio {r}")
    for flag, value in (("--patch", self.patch), ("--stride", self.stride),
                        ("--valid-stride", self.valid_stride), ("--test-size", self.test_size)):
      if value is not None and (value <= 0 or value % r):
        problems.append(f"{flag} {value} must be a positive multiple of --ratio {r}")
    if self.full_size <= 0 or self.full_size % 32:
      problems.append(f"--full-size {self.full_size} must be a multiple of 32 "
                      "(the full-resolution indices use 32x32 blocks)")
    if self.split_axis not in ("rows", "cols"):
      problems.append(f"--split-axis must be rows or cols, got {self.split_axis!r}")
    if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1
            and self.valid_fraction + self.test_fraction < 1):
      problems.append("--valid-fraction and --test-fraction must be in [0, 1) with a sum below 1")
    if self.guard < 0:
      problems.append("--guard must be >= 0")
    if self.dtype not in STORE_DTYPES:
      problems.append(f"--dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def native_ratio(self) -> int:
    """PAN/MS size ratio the input scenes must have."""
    return self.ratio // self.pan_prescale

  def resolved_bits(self) -> int:
    from dcfnet_jax import imaging  # pylint: disable=g-import-not-at-top
    return self.bits if self.bits is not None else imaging.get_sensor(self.sensor).bits

  def resolved_img_range(self) -> float:
    return float(self.img_range) if self.img_range is not None else float(2**self.resolved_bits() - 1)


@dataclasses.dataclass(frozen=True)
class Region:
  """A rectangle of the GT grid [r0, r1) x [c0, c1) assigned to a split."""

  split: str  # train, valid or test
  r0: int
  r1: int
  c0: int
  c1: int

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ------------------------------------------------------------------------------- geometry


def _floor(x: float, m: int) -> int:
  return int(x // m) * m


def plan_bands(height: int, width: int, opts: Options, scene_split: str = "band") -> list[Region]:
  """Split regions of one scene of GT size (height, width); boundaries are multiples of ratio.

  `scene_split` train / valid / test gives the whole scene to that split. "band" cuts the scene
  along `opts.split_axis` into train (first), valid, test (last) bands of the given fractions,
  with `opts.guard` GT pixels between neighbours, so that no filter used for the degradation
  (41-tap MTF: 20 px; interp23tap works per patch) reaches from one split into another.
  """
  r = opts.ratio
  height, width = _floor(height, r), _floor(width, r)
  if scene_split != "band":
    split = {"train": "train", "valid": "valid", "test": "test"}[scene_split]
    return [Region(split, 0, height, 0, width)]
  length = height if opts.split_axis == "rows" else width
  guard = -(-opts.guard // r) * r
  test_len = _floor(opts.test_fraction * length, r)
  valid_len = _floor(opts.valid_fraction * length, r)
  spans = []
  end = length
  for split, size in (("test", test_len), ("valid", valid_len)):
    if size > 0:
      spans.append((split, end - size, end))
      end = end - size - guard
  if end <= 0:
    raise ValueError(f"scene of {height}x{width} GT px is too small for the bands: test {test_len}, "
                     f"valid {valid_len}, guards {guard} along {opts.split_axis}.")
  spans.append(("train", 0, end))
  regions = []
  for split, a, b in reversed(spans):
    if opts.split_axis == "rows":
      regions.append(Region(split, a, b, 0, width))
    else:
      regions.append(Region(split, 0, height, a, b))
  return regions


def tile_origins(start: int, stop: int, size: int, stride: int) -> list[int]:
  """Origins of tiles of `size` every `stride` inside [start, stop)."""
  return list(range(start, stop - size + 1, stride))


# ------------------------------------------------------------------------------- degradation


def degrade(scene: scenes_lib.Scene, opts: Options) -> dict[str, np.ndarray]:
  """Reduced and full resolution arrays of a scene, float64 DN.

  Returns gt (H, W, C), ms_lr (H/ratio, W/ratio, C), pan_lr (H, W) on the GT grid, and the
  full-resolution pair pan_full (native PAN) and ms_full (MS degraded by pan_prescale).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dcfnet_jax import imaging  # pylint: disable=g-import-not-at-top

  r, nr, s = opts.ratio, opts.native_ratio, opts.pan_prescale
  if scene.ratio != nr:
    raise ValueError(f"{', '.join(scene.sources)}: PAN/MS size ratio is {scene.ratio} "
                     f"(PAN {scene.pan.shape}, MS {scene.ms.shape[:2]}), expected ratio / "
                     f"pan_prescale = {r} / {s} = {nr}.")
  h, w = _floor(scene.ms.shape[0], r), _floor(scene.ms.shape[1], r)
  if h == 0 or w == 0:
    raise ValueError(f"{', '.join(scene.sources)}: MS {scene.ms.shape[:2]} is smaller than ratio {r}.")
  ms = np.asarray(scene.ms[:h, :w], np.float64)
  pan = np.asarray(scene.pan[:nr * h, :nr * w], np.float64)
  with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
    # Toolbox resize_images: MTF filter + decimation for the MS, bicubic imresize for the PAN.
    # (imaging.wald_degrade is exactly this when both use the same ratio, i.e. pan_prescale 1.)
    if s == 1:
      ms_lr, pan_lr = imaging.wald_degrade(ms, pan, r, opts.sensor)
    else:
      ms_lr = imaging.decimate(imaging.mtf_filter(ms, opts.sensor, r), r)
      pan_lr = imaging.imresize(pan, 1.0 / nr, method="bicubic")
    ms_full = ms if s == 1 else imaging.decimate(imaging.mtf_filter(ms, opts.sensor, s), s)
    out = dict(gt=ms, ms_lr=np.asarray(ms_lr), pan_lr=np.asarray(pan_lr),
               pan_full=pan, ms_full=np.asarray(ms_full))
  assert out["ms_lr"].shape[:2] == (h // r, w // r), out["ms_lr"].shape
  assert out["pan_lr"].shape == (h, w), out["pan_lr"].shape
  return out


def to_store_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
  """Float DN -> the stored dtype (integers are rounded and clipped to the dtype's range)."""
  dt = np.dtype(dtype)
  if np.issubdtype(dt, np.integer):
    info = np.iinfo(dt)
    return np.clip(np.rint(x), info.min, info.max).astype(dt)
  return np.asarray(x, dt)


# ------------------------------------------------------------------------------- extraction


@dataclasses.dataclass
class _Candidate:
  split: str  # one of SPLITS
  scene: int
  row: int  # origin on the grid of the array it is cut from (GT grid, or PAN grid for full)
  col: int


def candidates(regions: Sequence[Region], scene_index: int, opts: Options) -> list[_Candidate]:
  """All patch / image origins of one scene, per output split."""
  out = []
  r, nr = opts.ratio, opts.native_ratio
  for reg in regions:
    if reg.split == "train":
      jobs = [("train", opts.patch, opts.stride, 1)]
    elif reg.split == "valid":
      jobs = [("valid", opts.patch, opts.valid_stride or opts.patch, 1)]
    else:
      jobs = [("test_reduced", opts.test_size, opts.test_size, 1),
              ("test_full", opts.full_size, opts.full_size, nr)]
    for split, size, stride, scale in jobs:
      # The full-resolution grid is the native PAN grid: GT coordinates times native ratio.
      for row in tile_origins(reg.r0 * scale, reg.r1 * scale, size, stride):
        for col in tile_origins(reg.c0 * scale, reg.c1 * scale, size, stride):
          assert row % r == 0 and col % r == 0
          out.append(_Candidate(split, scene_index, row, col))
  return out


def select(cands: list[_Candidate], limit: int | None, rng: np.random.Generator) -> list[_Candidate]:
  """At most `limit` candidates, drawn without replacement, in their original order."""
  if limit is None or len(cands) <= limit:
    return cands
  keep = np.sort(rng.choice(len(cands), size=limit, replace=False))
  return [cands[i] for i in keep]


def cut(arrays: dict[str, np.ndarray], cand: _Candidate, opts: Options) -> dict[str, np.ndarray]:
  """One example (HWC float64 DN, pan as H,W,1) of split `cand.split`."""
  r = opts.ratio
  y, x = cand.row, cand.col
  if cand.split == "test_full":
    n = opts.full_size
    return dict(pan=arrays["pan_full"][y:y + n, x:x + n, None],
                ms=arrays["ms_full"][y // r:(y + n) // r, x // r:(x + n) // r])
  n = {"train": opts.patch, "valid": opts.patch, "test_reduced": opts.test_size}[cand.split]
  return dict(gt=arrays["gt"][y:y + n, x:x + n], pan=arrays["pan_lr"][y:y + n, x:x + n, None],
              ms=arrays["ms_lr"][y // r:(y + n) // r, x // r:(x + n) // r])


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


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=False)
      f.write("\n")
    pancollection.set_default_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def make_datasets(specs: Sequence[SceneSpec], out_dir: str | os.PathLike[str], opts: Options, *,
                  extra_manifest: dict[str, Any] | None = None,
                  path_label: Callable[[str], str] = str, progress=print) -> dict[str, Any]:
  """Reads the scenes, writes the four split files and manifest.json; returns the manifest.

  `path_label` turns a source path into the name recorded in the manifest (e.g. relative).
  """
  from dcfnet_jax import __version__  # pylint: disable=g-import-not-at-top

  if not specs:
    raise ValueError("no scenes given (--ms/--pan or --list)")
  for spec in specs:
    if spec.split not in SCENE_SPLITS:
      raise ValueError(f"{spec.ms}: scene split must be one of {SCENE_SPLITS}, got {spec.split!r}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  img_range, bits = opts.resolved_img_range(), opts.resolved_bits()
  rng = np.random.default_rng(opts.seed)

  degraded, sources, geometry, band_names = [], [], [], None
  all_cands: list[_Candidate] = []
  for i, spec in enumerate(specs):
    progress(f"[{i + 1}/{len(specs)}] reading {spec.ms}" + (f" + {spec.pan}" if spec.pan else ""))
    scene = scenes_lib.read_scene(spec.ms, spec.pan, ms_key=spec.ms_key, pan_key=spec.pan_key)
    if opts.bands is not None:
      scene = scene.select_bands(opts.bands)
    if band_names is None:
      band_names = scene.band_names
    arrays = degrade(scene, opts)
    h, w = arrays["gt"].shape[:2]
    regions = plan_bands(h, w, opts, spec.split)
    cands = candidates(regions, i, opts)
    all_cands.extend(cands)
    degraded.append(arrays)
    files = [spec.ms] + ([spec.pan] if spec.pan else [])
    sources.append(dict(
        ms=path_label(spec.ms), pan=path_label(spec.pan) if spec.pan else None,
        ms_key=spec.ms_key, pan_key=spec.pan_key,
        sha256={path_label(f): sha256(f) for f in files},
        ms_shape=list(scene.ms.shape), pan_shape=list(scene.pan.shape),
        dtype=str(scene.ms.dtype), band_names=list(scene.band_names or []),
        crs=scene.ms_geo.crs, ms_transform=scene.ms_geo.transform,
        pan_transform=scene.pan_geo.transform))
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
    stored = {k: to_store_dtype(v, opts.dtype) for k, v in batch.items()}
    lms_dtype = opts.dtype if opts.dtype in ("float32", "float64") else "float32"
    if opts.store_lms:
      stored["lms"] = pancollection.compute_lms(stored["ms"], opts.ratio).astype(lms_dtype)
    attrs = dict(sensor=opts.sensor, ratio=opts.ratio, pan_prescale=opts.pan_prescale,
                 img_range=img_range, bits=bits, split=split, tool=TOOL, tool_version=__version__,
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
      tool=TOOL, tool_version=__version__, command=list(sys.argv),
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
  _write_json_atomic(out_dir / "manifest.json", manifest)
  progress(f"manifest -> {out_dir / 'manifest.json'}")
  return manifest


# ------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.replace(" ", "").split(",") if t)


def parse_list_file(path: str) -> list[SceneSpec]:
  """Lines `MS [PAN|-] [SPLIT]`; '#' starts a comment; relative paths are relative to the file."""
  base = pathlib.Path(path).resolve().parent
  specs = []
  for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    fields = line.split("#", 1)[0].split()
    if not fields:
      continue
    if len(fields) > 3:
      raise ValueError(f"{path}:{n}: expected 'MS [PAN|-] [SPLIT]', got {line!r}")
    resolve = lambda p: str(p if pathlib.Path(p).is_absolute() else base / p)  # noqa: E731
    pan = fields[1] if len(fields) > 1 and fields[1] != "-" else None
    specs.append(SceneSpec(resolve(fields[0]), resolve(pan) if pan else None,
                           fields[2] if len(fields) > 2 else "band"))
  return specs


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m dcfnet_jax.data.make_dataset",
      description="Wald-protocol PanCollection h5 datasets from MS/PAN scenes.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
  p.add_argument("--bands", type=_int_list, help="MS bands to keep, 0-based, in this order: 2,1,0,3")
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
      raise SystemExit("give either --list or --ms/--pan/--scene-split, not both")
    specs = parse_list_file(args.list)
  else:
    if args.pan and len(args.pan) != len(args.ms):
      raise SystemExit(f"{len(args.ms)} --ms but {len(args.pan)} --pan; give one --pan per --ms "
                       "('-' when the PAN is in the MS file)")
    if args.scene_split and len(args.scene_split) not in (1, len(args.ms)):
      raise SystemExit(f"{len(args.ms)} --ms but {len(args.scene_split)} --scene-split")
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
      img_range=args.img_range, bands=args.bands, patch=args.patch, stride=args.stride,
      valid_stride=args.valid_stride, test_size=args.test_size, full_size=args.full_size,
      split_axis=args.split_axis, valid_fraction=args.valid_fraction,
      test_fraction=args.test_fraction, guard=args.guard, max_train=args.max_train,
      max_valid=args.max_valid, max_test_reduced=args.max_test_reduced,
      max_test_full=args.max_test_full, seed=args.seed, dtype=args.dtype,
      store_lms=not args.no_lms, compression_level=args.compression_level)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  args = build_parser().parse_args(argv)
  try:
    opts = options_from_args(args)
  except ValueError as e:
    raise SystemExit(f"make_dataset: {e}") from e
  return make_datasets(specs_from_args(args), args.out, opts)


if __name__ == "__main__":
  main()
