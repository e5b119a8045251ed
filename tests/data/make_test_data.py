r"""Regenerates the two real-scene files of tests/data (see tests/data/README.md).

  python tests/data/make_test_data.py --fusebox FuseBox --liverpool LIVERPOOL.npz [--out tests/data]

--fusebox: a clone of github.com/sjtrny/FuseBox at commit d5424bcefdd67cffe073b20ce9632760fcaa93c1
  (or --fusebox-prepared: an already prepared l7_fusebox_32_p093r086_20001005.npz). Crop 32 is
  prepared exactly as `python -m dcfnet_jax.data.make_demo --fusebox` prepares it.
--liverpool: the full prepared Landsat 8 Liverpool pair (260x427x7 MS, 520x854 nested PAN, with
  `pan_native`), made from compgeolab/xlandsat as tests/data/README.md describes. The file here
  is a 128x192 MS / 256x384 PAN window of it with the transforms moved to the window.
The golden metric files and the state-dict key list are copies, not regenerated.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from dcfnet_jax.data import make_demo  # noqa: E402  (after the path setup)

FUSEBOX_CROP = 32
LIVERPOOL_NAME = "l8_liverpool_20200927_crop.npz"
# Window of the prepared Liverpool pair, in its MS pixels: the open sea of its upper-left
# corner with offshore wind turbines (the tests' tiling tolerances were measured on it).
LIVERPOOL_ROWS, LIVERPOOL_COLS = (0, 128), (0, 192)
# Half-sample taps of the 23-tap interpolator (docs/metric_definitions.md §1.1): the prepared
# `pan` is `pan_native` shifted by half a PAN pixel in both axes with these weights.
_HALF = np.array([0.61066818237, -0.145397186478, 0.043619155884, -0.010385513306,
                  0.001615524292, -0.000120162964])
HALF_PIXEL_TAPS = np.concatenate([_HALF[::-1], _HALF])
# Keys copied unchanged from the prepared Liverpool file.
LIVERPOOL_KEYS = (
    "band_names", "band_ids", "wavelengths_nm", "band_ranges_nm", "pan_overlap", "sensor",
    "platform", "gsd_ms_m", "gsd_pan_m", "ratio", "bit_depth", "valid_min", "valid_max",
    "fill_value", "acquisition_date", "wrs_path_row", "crs_epsg", "crs_wkt",
    "processing_level_ms", "processing_level_pan", "product_id_ms", "product_id_pan",
    "source_repo", "source_commit", "source_paths", "license", "attribution")


def check_half_pixel_pan(pan: np.ndarray, pan_native: np.ndarray) -> None:
  """The nested `pan` equals the documented half-pixel resampling of `pan_native` (interior)."""
  raw = pan_native.astype(np.float64)
  r = len(_HALF)
  rows = sum(w * raw[m:m + raw.shape[0] - 2 * r + 1] for m, w in enumerate(HALF_PIXEL_TAPS))
  both = sum(w * rows[:, m:m + raw.shape[1] - 2 * r + 1] for m, w in enumerate(HALF_PIXEL_TAPS))
  expected = np.clip(np.rint(both), 1, 65535)
  got = pan[r:r + expected.shape[0], r:r + expected.shape[1]]
  if not np.array_equal(got, expected):
    raise SystemExit("pan is not the half-pixel resampling of pan_native: wrong input file?")


def shift_transform(transform, row: int, col: int) -> np.ndarray:
  """Affine (a, b, c, d, e, f) of a window whose upper-left pixel is (row, col)."""
  a, b, c, d, e, f = (float(v) for v in transform)
  return np.array([a, b, c + a * col + b * row, d, e, f + d * col + e * row])


def cut_liverpool(source: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
  with np.load(source, allow_pickle=False) as f:
    d = {k: f[k] for k in f.files}
  if d["ms"].shape != (260, 427, 7) or d["pan"].shape != (520, 854):
    raise SystemExit(f"{source}: MS {d['ms'].shape}, PAN {d['pan'].shape}; expected the "
                     "prepared Liverpool pair (260, 427, 7) / (520, 854)")
  check_half_pixel_pan(d["pan"], d["pan_native"])
  (r0, r1), (c0, c1) = LIVERPOOL_ROWS, LIVERPOOL_COLS
  source_crop = json.loads(str(d["crop_info"]))
  out = {k: d[k] for k in LIVERPOOL_KEYS}
  out.update(
      ms=d["ms"][r0:r1, c0:c1], pan=d["pan"][2 * r0:2 * r1, 2 * c0:2 * c1],
      ms_transform=shift_transform(d["ms_transform"], r0, c0),
      pan_transform=shift_transform(d["pan_transform"], 2 * r0, 2 * c0),
      pan_alignment=np.array(
          "nested: pan[2i:2i+2, 2j:2j+2] covers ms[i, j]; the USGS PAN samples are co-centred "
          "with the MS, so pan is them shifted by half a PAN pixel (12 half-sample taps of the "
          "23-tap interpolator, rounded to uint16); see tests/data/README.md"),
      crop_info=np.array(json.dumps(dict(
          ms_rows=[r0, r1], ms_cols=[c0, c1], pan_rows=[2 * r0, 2 * r1], pan_cols=[2 * c0, 2 * c1],
          note="window of the prepared pair, whose MS rows/cols start at "
               f"{source_crop['ms_rows'][0]}/{source_crop['ms_cols'][0]} of the USGS MS raster"))))
  a, _, c, _, e, f = out["ms_transform"]
  out["ms_ul_pixel_centre_xy"] = np.array([c + a / 2, f + e / 2])
  path = out_dir / LIVERPOOL_NAME
  np.savez_compressed(path, **out)
  return path


def prepare_fusebox_crop(args: argparse.Namespace, out_dir: pathlib.Path) -> pathlib.Path:
  if args.fusebox:
    ms, pan = make_demo.fix_crop_offset(
        *make_demo.read_fusebox_crop(pathlib.Path(args.fusebox), FUSEBOX_CROP))
  else:
    with np.load(args.fusebox_prepared, allow_pickle=False) as f:
      ms, pan = f["ms"], f["pan"]
  return make_demo.write_prepared_crop(out_dir, FUSEBOX_CROP, ms, pan, compressed=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  fusebox = parser.add_mutually_exclusive_group(required=True)
  fusebox.add_argument("--fusebox", help="clone of sjtrny/FuseBox at d5424bc")
  fusebox.add_argument("--fusebox-prepared", help="prepared l7_fusebox_32_p093r086_20001005.npz")
  parser.add_argument("--liverpool", required=True, help="the prepared Liverpool pair (.npz)")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
  args = parser.parse_args()
  out_dir = pathlib.Path(args.out)
  for path in (prepare_fusebox_crop(args, out_dir), cut_liverpool(pathlib.Path(args.liverpool),
                                                                   out_dir)):
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
