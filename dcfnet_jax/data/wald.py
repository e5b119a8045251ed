"""The Wald-protocol geometry and degradation of the dataset maker.

Written from docs/metric_definitions.md §1.4.

`Options` (how datasets are cut), `plan_bands` (the spatial split of a scene into train / valid /
test bands with guard gaps), `degrade` (reduced- and full-resolution arrays of a scene),
`candidates` / `select` / `cut` (patch and test-image origins, subsampling, extraction). Pure
functions of arrays; `make_dataset` reads the scenes and writes the files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.data import SPLITS
from dcfnet_jax.errors import InputError

SCENE_SPLITS = ("band", "train", "valid", "test")
STORE_DTYPES = ("float32", "float64", "uint8", "uint16")


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
      raise InputError("; ".join(problems))

  @property
  def native_ratio(self) -> int:
    """PAN/MS size ratio the input scenes must have."""
    return self.ratio // self.pan_prescale

  def resolved_bits(self) -> int:
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
    raise InputError(f"scene of {height}x{width} GT px is too small for the bands: test {test_len}, "
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


def check_sizes(ms_shape: tuple[int, ...], pan_shape: tuple[int, ...], opts: Options,
                name: str = "scene") -> None:
  """The PAN must be ratio / pan_prescale times the MS size exactly (InputError naming both)."""
  r, nr, s = opts.ratio, opts.native_ratio, opts.pan_prescale
  ratio = pan_shape[0] // ms_shape[0] if ms_shape[0] else 0
  if ratio != nr or tuple(pan_shape[:2]) != (nr * ms_shape[0], nr * ms_shape[1]):
    raise InputError(f"{name}: PAN/MS size ratio is {ratio} (PAN {tuple(pan_shape)}, MS "
                     f"{tuple(ms_shape[:2])}), expected ratio / pan_prescale = {r} / {s} = {nr}.")


def degrade(ms: np.ndarray, pan: np.ndarray, opts: Options, name: str = "scene"
            ) -> dict[str, np.ndarray]:
  """Reduced and full resolution arrays of a scene (ms (h, w, C), pan (H, W)), float64 DN.

  Returns gt (H, W, C), ms_lr (H/ratio, W/ratio, C), pan_lr (H, W) on the GT grid, and the
  full-resolution pair pan_full (native PAN) and ms_full (MS degraded by pan_prescale).
  """
  r, nr, s = opts.ratio, opts.native_ratio, opts.pan_prescale
  check_sizes(ms.shape, pan.shape, opts, name)
  h, w = _floor(ms.shape[0], r), _floor(ms.shape[1], r)
  if h == 0 or w == 0:
    raise InputError(f"{name}: MS {ms.shape[:2]} is smaller than ratio {r}.")
  ms = np.asarray(ms[:h, :w], np.float64)
  pan = np.asarray(pan[:nr * h, :nr * w], np.float64)
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
