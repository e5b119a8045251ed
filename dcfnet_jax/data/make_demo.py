r"""Regenerates the embedded demo set (dcfnet_jax/data/demo/*.h5) from the shared Landsat 7 data.

  python -m dcfnet_jax.data.make_demo --data-dir ../shared/data [--out dcfnet_jax/data/demo]

Source: the 24 FuseBox Landsat 7 ETM+ crops `l7_fusebox_*.npz` of shared/data (8-bit DN,
PAN 15 m nested on MS 30 m, ratio 2). Ratio-4 pairs by the "Ratio 4" recipe of the shared data
README with `make_dataset --pan-prescale 2`: GT = MS (30 m), PAN input = imresize(PAN, 1/2)
(30 m), MS input = MTF + decimation by 4 (120 m); test_full = native 15 m PAN with the MS
degraded by 2 (60 m), 4:1 without reference. Bands blue, green, red, NIR (FuseBox stores red,
green, blue, nir, swir1, swir2). Sensor 'none' (generic MTF gain 0.3; the toolbox has no
Landsat entry). Whole WRS scenes per split, so training never sees the test or validation
scenes. Deterministic: the same inputs and seed give byte-identical h5 files.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from dcfnet_jax import cli
from dcfnet_jax.data import make_dataset
from dcfnet_jax.errors import InputError

DEMO_DIR = pathlib.Path(__file__).resolve().parent / "demo"
# WRS-2 path/row of the FuseBox scenes -> split. Each scene has 4 crops in shared/data.
SCENE_SPLITS = {
    "p034r032": "train",  # USA (likely Colorado Front Range), 2001-09-24
    "p090r083": "train",  # south-east Australia, 2000-09-13
    "p091r083": "train",  # 2000-10-06
    "p092r086": "train",  # 1999-11-28
    "p093r085": "valid",  # 2000-10-04
    "p093r086": "test",   # 2000-10-05, a large bay (likely Port Phillip)
}
BANDS = (2, 1, 0, 3)  # FuseBox red, green, blue, nir, swir1, swir2 -> blue, green, red, nir
OPTIONS = make_dataset.Options(
    sensor="none", ratio=4, pan_prescale=2, bits=8, img_range=255.0, bands=BANDS,
    patch=64, stride=64, valid_stride=64, test_size=128, full_size=256,
    max_train=288, max_valid=48, max_test_reduced=8, max_test_full=4,
    seed=20240613, dtype="uint8", store_lms=False, compression_level=9)


def scene_specs(data_dir: pathlib.Path) -> list[make_dataset.SceneSpec]:
  files = sorted(data_dir.glob("l7_fusebox_*.npz"))
  if not files:
    raise InputError(f"no l7_fusebox_*.npz in {data_dir} (the shared Landsat data; see its README)")
  specs = []
  for f in files:
    path_row = f.stem.split("_")[3]  # l7_fusebox_NN_pPPPrRRR_YYYYMMDD
    if path_row not in SCENE_SPLITS:
      raise InputError(f"{f}: unknown WRS scene {path_row!r}; expected one of {sorted(SCENE_SPLITS)}")
    specs.append(make_dataset.SceneSpec(str(f), None, SCENE_SPLITS[path_row]))
  return specs


def build_parser() -> cli.Parser:
  parser = cli.make_parser("dcfnet_jax.data.make_demo", __doc__)
  parser.add_argument("--data-dir", required=True, help="folder with the l7_fusebox_*.npz")
  parser.add_argument("--out", default=str(DEMO_DIR))
  return parser


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> None:
  data_dir = pathlib.Path(args.data_dir)
  command = "python -m dcfnet_jax.data.make_demo " + " ".join(sys.argv[1:] if argv is None else argv)
  make_dataset.make_datasets(
      scene_specs(data_dir), args.out, OPTIONS,
      extra_manifest=dict(command=command, scene_splits=SCENE_SPLITS,
                          source_data="shared/data of the dcfnet_jax project (see demo/README.md)"),
      path_label=lambda p: pathlib.Path(p).name)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run_main(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
  sys.exit(main())
