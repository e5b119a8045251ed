"""The shipped Landsat 8 OLI crop as a ratio-4 scene to sharpen: a sensor and a bit depth the
demo model was not trained on (`bench_adapt.py`'s landsat8 data set, the README's adaptation
example).

  python benchmarks/landsat8_scene.py OUT.npz

tests/data/l8_liverpool_20200927_crop.npz holds a 15 m PAN and a 30 m MS (ratio 2). It is
brought to ratio 4 as the demo's full-resolution split is made: the 30 m MS degraded by 2 with
the MTF at ratio 2 and decimated (`data.wald.degrade` with `pan_prescale` 2), the 15 m PAN kept;
bands blue, green, red, NIR (B2-B5) in the demo's order. OUT.npz is a scene `pansharpen --ms`
reads (ms 64x96x4 and pan 256x384, uint16, with the georeferencing and band names).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from dcfnet_jax import files
from dcfnet_jax.data import wald

ROOT = pathlib.Path(__file__).resolve().parents[1]
LANDSAT8 = ROOT / "tests" / "data" / "l8_liverpool_20200927_crop.npz"
L8_BANDS = [1, 2, 3, 4]  # B2-B5: blue, green, red, NIR (the demo's order)


def landsat8_arrays() -> dict[str, np.ndarray]:
  """The Liverpool scene at ratio 4: ms (64, 96, 4) uint16 (60 m), pan (256, 384) uint16."""
  d = np.load(LANDSAT8)
  ms30 = d["ms"][..., L8_BANDS]
  opts = wald.Options(sensor="none", ratio=4, pan_prescale=2, bits=16)
  out = wald.degrade(ms30, d["pan"], opts, "landsat8")
  ms = np.clip(np.rint(out["ms_full"]), 0, 65535).astype(np.uint16)
  a, b, c, dd, e, f = (float(v) for v in d["pan_transform"])
  return dict(ms=ms, pan=d["pan"], crs_epsg=np.asarray(int(d["crs_epsg"])),
              pan_transform=np.asarray(d["pan_transform"], np.float64),
              ms_transform=np.asarray([4 * a, b, c, dd, 4 * e, f], np.float64),
              band_names=np.asarray([str(n) for n in d["band_names"][L8_BANDS]]))


def main(argv: list[str]) -> int:
  if len(argv) != 1 or not argv[0].endswith(".npz"):
    print("usage: python benchmarks/landsat8_scene.py OUT.npz", file=sys.stderr)
    return 2
  path = files.save_npz(argv[0], landsat8_arrays())
  print(f"wrote {path}: Landsat 8 at ratio 4, PAN 256x384, MS 64x96x4 (B2-B5), uint16")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
