r"""Rebuilds the embedded demo set (dcfnet_jax/data/demo/*.h5) from public Landsat 7 imagery.

  python -m dcfnet_jax.data.make_demo --fusebox FuseBox [--out dcfnet_jax/data/demo]
  python -m dcfnet_jax.data.make_demo --data-dir PREPARED [--out dcfnet_jax/data/demo]

Source: 24 Landsat 7 ETM+ crops of the FuseBox repository (github.com/sjtrny/FuseBox, commit
d5424bcefdd67cffe073b20ce9632760fcaa93c1; USGS imagery, 8-bit DN, PAN 15 m / MS 30 m):
`imagery/cropped/{k}_ms.mat` (`cropped_im`, 400x400x6) and `imagery/cropped/{k}_pan.mat`
(`cropped_gray`, 800x800). `--fusebox` takes a clone of that repository and prepares each crop
(FuseBox's PAN crop starts one PAN pixel late: MS row/col 0 and one PAN row/col at each end are
dropped, which leaves a nested 399x399 / 798x798 pair, no resampling). `--data-dir` takes
crops prepared that way (`l7_fusebox_NN_pPPPrRRR_YYYYMMDD.npz`, e.g. from `--keep-prepared`).

Ratio-4 pairs by `make_dataset --pan-prescale 2`: GT = MS (30 m), PAN input = imresize(PAN, 1/2)
(30 m), MS input = MTF + decimation by 4 (120 m); test_full = native 15 m PAN with the MS
degraded by 2 (60 m), 4:1 without reference. Bands blue, green, red, NIR (FuseBox stores red,
green, blue, nir, swir1, swir2). Sensor 'none' (generic MTF gain 0.3; the toolbox has no
Landsat entry). Whole WRS scenes per split, so training never sees the test or validation
scenes. Deterministic: the same inputs and seed give byte-identical h5 files.
See dcfnet_jax/data/demo/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import pathlib
import re
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from dcfnet_jax import cli, files
from dcfnet_jax.data import DEMO_DIR, make_dataset
from dcfnet_jax.errors import InputError

log = logging.getLogger(__name__)

FUSEBOX_REPOSITORY = "https://github.com/sjtrny/FuseBox"
FUSEBOX_COMMIT = "d5424bcefdd67cffe073b20ce9632760fcaa93c1"
FUSEBOX_BANDS = ("red", "green", "blue", "nir", "swir1", "swir2")  # FuseBox's channel order
FUSEBOX_MS_KEY, FUSEBOX_PAN_KEY = "cropped_im", "cropped_gray"
PREPARED_PATTERN = re.compile(r"l7_fusebox_(\d+)_(p\d{3}r\d{3})_(\d{8})\.npz")


@dataclasses.dataclass(frozen=True)
class FuseBoxScene:
  """One WRS-2 scene of FuseBox: acquisition date, the crop numbers used, the demo split."""

  date: str  # YYYYMMDD, as in FuseBox's imagery/locations.txt
  crops: tuple[int, ...]
  split: str


# The first four FuseBox crops of each WRS-2 scene (path/row). Whole scenes per split.
SCENES = {
    "p034r032": FuseBoxScene("20010924", (1, 2, 3, 4), "train"),  # USA (likely Colorado)
    "p090r083": FuseBoxScene("20000913", (7, 8, 9, 10), "train"),  # south-east Australia
    "p091r083": FuseBoxScene("20001006", (13, 14, 15, 16), "train"),
    "p092r086": FuseBoxScene("19991128", (19, 20, 21, 22), "train"),
    "p093r085": FuseBoxScene("20001004", (25, 26, 27, 28), "valid"),
    "p093r086": FuseBoxScene("20001005", (32, 33, 34, 35), "test"),  # a large bay (Port Phillip?)
}
BANDS = (2, 1, 0, 3)  # FuseBox red, green, blue, nir, swir1, swir2 -> blue, green, red, nir
OPTIONS = make_dataset.Options(
    sensor="none", ratio=4, pan_prescale=2, bits=8, img_range=255.0, bands=BANDS,
    patch=64, stride=64, valid_stride=64, test_size=128, full_size=256,
    max_train=288, max_valid=48, max_test_reduced=8, max_test_full=4,
    seed=20240613, dtype="uint8", store_lms=False, compression_level=9)


def scene_splits() -> dict[str, str]:
  return {path_row: scene.split for path_row, scene in SCENES.items()}


def demo_crops() -> dict[int, tuple[str, str]]:
  """FuseBox crop number -> (WRS-2 path/row, date) of every crop the demo uses."""
  return {k: (path_row, scene.date) for path_row, scene in SCENES.items() for k in scene.crops}


def prepared_name(crop: int, path_row: str, date: str) -> str:
  return f"l7_fusebox_{crop:02d}_{path_row}_{date}.npz"


# ------------------------------------------------------------------------ the FuseBox files


def fix_crop_offset(ms: np.ndarray, pan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """FuseBox's stored pair -> a nested pair (pan[2i:2i+2, 2j:2j+2] covers ms[i, j]).

  FuseBox's crop script cuts MS rows y..y+h-1 but PAN rows 2y..2(y+h)-1 (1-based), so the
  stored PAN starts one PAN pixel (15 m) late in both axes: stored PAN rows 2i-1, 2i cover MS
  row i (0-based). Dropping MS row/col 0 and the first and last PAN row/col restores the nesting with
  no resampling (400x400 -> 399x399, 800x800 -> 798x798).
  """
  return ms[1:, 1:], pan[1:-1, 1:-1]


def read_fusebox_crop(clone: pathlib.Path, crop: int) -> tuple[np.ndarray, np.ndarray]:
  """The stored MS (H, W, 6) and PAN (2H, 2W) uint8 arrays of FuseBox crop `crop`, as stored."""
  folder = pathlib.Path(clone) / "imagery" / "cropped"
  arrays = []
  for name, key in ((f"{crop}_ms.mat", FUSEBOX_MS_KEY), (f"{crop}_pan.mat", FUSEBOX_PAN_KEY)):
    path = folder / name
    if not path.is_file():
      raise InputError(f"{path}: no such file; --fusebox must be a clone of {FUSEBOX_REPOSITORY} "
                       f"at commit {FUSEBOX_COMMIT} (it holds imagery/cropped/{{k}}_ms.mat).")
    try:
      arrays.append(np.asarray(files.load_arrays(path, keys=[key])[key]))
    except KeyError as e:
      raise InputError(f"{path}: no array {key!r}; expected FuseBox's layout") from e
  ms, pan = arrays
  if ms.ndim != 3 or ms.shape[2] != len(FUSEBOX_BANDS) or ms.dtype != np.uint8:
    raise InputError(f"{folder / f'{crop}_ms.mat'}: {FUSEBOX_MS_KEY!r} is {ms.dtype} {ms.shape}; "
                     f"expected uint8 (H, W, {len(FUSEBOX_BANDS)}) (FuseBox: 400x400x6)")
  if pan.shape != (2 * ms.shape[0], 2 * ms.shape[1]) or pan.dtype != np.uint8:
    raise InputError(f"{folder / f'{crop}_pan.mat'}: {FUSEBOX_PAN_KEY!r} is {pan.dtype} "
                     f"{pan.shape}; expected uint8 {(2 * ms.shape[0], 2 * ms.shape[1])} "
                     f"(twice the MS {ms.shape[:2]})")
  return ms, pan


def check_locations(clone: pathlib.Path, crops: dict[int, tuple[str, str]]) -> None:
  """Each crop's line of FuseBox's imagery/locations.txt names the scene and date expected."""
  path = pathlib.Path(clone) / "imagery" / "locations.txt"
  if not path.is_file():
    raise InputError(f"{path}: no such file; --fusebox must be a clone of {FUSEBOX_REPOSITORY}.")
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  for crop, (path_row, date) in sorted(crops.items()):
    line = lines[crop - 1] if crop <= len(lines) else ""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) < 2 or (fields[0].lower(), fields[1]) != (path_row, date):
      raise InputError(f"{path}: line {crop} is {line or 'missing'!r}; expected crop {crop} of "
                       f"scene {path_row.upper()}, {date} (FuseBox at commit {FUSEBOX_COMMIT}).")


def write_prepared_crop(folder: pathlib.Path, crop: int, ms: np.ndarray, pan: np.ndarray,
                        *, compressed: bool = False) -> pathlib.Path:
  """Saves one prepared (nested) crop as `l7_fusebox_NN_pPPPrRRR_YYYYMMDD.npz`."""
  path_row, date = demo_crops()[crop]
  path = pathlib.Path(folder) / prepared_name(crop, path_row, date)
  arrays = dict(
      ms=ms, pan=pan, band_names=np.array(FUSEBOX_BANDS),
      fusebox_crop=np.array(crop), wrs_path_row=np.array(path_row),
      acquisition_date=np.array(date),
      source=np.array(f"{FUSEBOX_REPOSITORY} @ {FUSEBOX_COMMIT}: imagery/cropped/{crop}_ms.mat "
                      f"({FUSEBOX_MS_KEY}), imagery/cropped/{crop}_pan.mat ({FUSEBOX_PAN_KEY}); "
                      "MS row/col 0 and the first and last PAN row/col dropped (nested pair)"),
      attribution=np.array("Landsat imagery courtesy of the U.S. Geological Survey"))
  return files.save_npz(path, arrays, compressed=compressed)


def prepare_fusebox(clone: pathlib.Path, folder: pathlib.Path) -> list[pathlib.Path]:
  """Reads, checks and prepares every demo crop of a FuseBox clone into `folder`."""
  crops = demo_crops()
  check_locations(clone, crops)
  paths = []
  for i, crop in enumerate(sorted(crops)):
    log.info("[%d/%d] preparing FuseBox crop %d", i + 1, len(crops), crop)
    ms, pan = fix_crop_offset(*read_fusebox_crop(clone, crop))
    paths.append(write_prepared_crop(folder, crop, ms, pan))
  return paths


# ------------------------------------------------------------------------ the demo set


def scene_specs(data_dir: pathlib.Path) -> list[make_dataset.SceneSpec]:
  """One whole-scene spec per prepared crop; every demo crop must be there, nothing else."""
  crops = demo_crops()
  found = {}
  for f in sorted(pathlib.Path(data_dir).glob("l7_fusebox_*.npz")):
    match = PREPARED_PATTERN.fullmatch(f.name)
    crop = int(match.group(1)) if match else None
    if crop not in crops or (match.group(2), match.group(3)) != crops[crop]:
      raise InputError(f"{f}: not one of the demo's crops (expected names like "
                       f"{prepared_name(32, *crops.get(32, ('p093r086', '20001005')))})")
    found[crop] = f
  missing = sorted(set(crops) - set(found))
  if missing:
    raise InputError(f"{data_dir}: prepared FuseBox crops {missing} are missing (expected "
                     f"{len(crops)} files l7_fusebox_NN_pPPPrRRR_YYYYMMDD.npz; see --fusebox)")
  return [make_dataset.SceneSpec(str(found[k]), None, SCENES[crops[k][0]].split)
          for k in sorted(found)]


def _array_sha256(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def crop_records(specs: list[make_dataset.SceneSpec]) -> list[dict]:
  """Per crop: its FuseBox files and the sha256 of the prepared arrays (C order bytes)."""
  records = []
  for spec in specs:
    crop = int(PREPARED_PATTERN.fullmatch(pathlib.Path(spec.ms).name).group(1))
    arrays = files.load_npz(spec.ms, ["ms", "pan"])
    ms, pan = arrays["ms"], arrays["pan"]
    path_row, date = demo_crops()[crop]
    records.append(dict(
        crop=crop, scene=path_row, date=date, split=SCENES[path_row].split,
        files=[f"imagery/cropped/{crop}_ms.mat", f"imagery/cropped/{crop}_pan.mat"],
        prepared_shapes=[list(ms.shape), list(pan.shape)], dtype=str(ms.dtype),
        ms_sha256=_array_sha256(ms), pan_sha256=_array_sha256(pan)))
  return records


def build(data_dir: pathlib.Path, out: str, command: str) -> dict:
  specs = scene_specs(data_dir)
  return make_dataset.make_datasets(
      specs, out, OPTIONS,
      extra_manifest=dict(
          command=command, scene_splits=scene_splits(),
          source_data=(f"Landsat 7 ETM+ crops of FuseBox ({FUSEBOX_REPOSITORY}, commit "
                       f"{FUSEBOX_COMMIT}), prepared by dcfnet_jax.data.make_demo "
                       "(one-PAN-pixel crop offset removed); see demo/README.md"),
          fusebox=dict(repository=FUSEBOX_REPOSITORY, commit=FUSEBOX_COMMIT,
                       bands=list(FUSEBOX_BANDS), crops=crop_records(specs)),
          attribution="Landsat imagery courtesy of the U.S. Geological Survey"),
      path_label=lambda p: pathlib.Path(p).name)


def build_parser() -> cli.Parser:
  parser = cli.make_parser("dcfnet_jax.data.make_demo", __doc__)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--fusebox", help=f"a clone of {FUSEBOX_REPOSITORY} at {FUSEBOX_COMMIT[:7]}")
  source.add_argument("--data-dir", help="folder of prepared crops l7_fusebox_NN_*.npz")
  parser.add_argument("--keep-prepared", help="with --fusebox: keep the prepared crops here")
  parser.add_argument("--out", default=str(DEMO_DIR))
  return parser


def _check_folder(path: str, flag: str) -> pathlib.Path:
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise InputError(f"{flag} {folder}: {'not a folder' if folder.exists() else 'no such folder'}"
                     + (f"; expected a clone of {FUSEBOX_REPOSITORY}" if flag == "--fusebox" else
                        "; expected the prepared crops l7_fusebox_NN_pPPPrRRR_YYYYMMDD.npz"))
  return folder


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> None:
  command = "python -m dcfnet_jax.data.make_demo " + " ".join(sys.argv[1:] if argv is None else argv)
  _check_folder(args.fusebox or args.data_dir, "--fusebox" if args.fusebox else "--data-dir")
  files.check_output_folder(args.out, flag="--out")
  if args.keep_prepared:
    files.check_output_folder(args.keep_prepared, flag="--keep-prepared")
  if args.data_dir:
    if args.keep_prepared:
      raise InputError("--keep-prepared goes with --fusebox")
    build(pathlib.Path(args.data_dir), args.out, command)
  elif args.keep_prepared:
    folder = pathlib.Path(args.keep_prepared)
    folder.mkdir(parents=True, exist_ok=True)
    prepare_fusebox(pathlib.Path(args.fusebox), folder)
    build(folder, args.out, command)
  else:
    with tempfile.TemporaryDirectory(prefix="fusebox_prepared_") as folder:
      prepare_fusebox(pathlib.Path(args.fusebox), pathlib.Path(folder))
      build(pathlib.Path(folder), args.out, command)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run_main(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
  sys.exit(main())
