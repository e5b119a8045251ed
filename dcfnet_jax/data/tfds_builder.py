"""TensorFlow Datasets builder `pancollection` (optional extra: pip install dcfnet_jax[tfds]).

One BuilderConfig per sensor (wv3, wv2, qb, gf2) plus `demo`. Preparation reads the PanCollection
h5 files from the manual directory (`demo`: the embedded files of dcfnet_jax/data/demo) through
the validating h5 reader and writes `array_record` files, so that

  tfds.data_source("pancollection/demo", data_dir=DIR)

reads them with random access and without TensorFlow. `tfds.load` / `as_dataset` build
tf.data pipelines and need TensorFlow; this project never imports it.

Examples store DN as float32, H,W,C (`lms` as the h5 reader gives it, computed when the file
has none); test_full examples have an empty gt of shape (0, 0, C). `tfds_source.TfdsSource`
turns a split back into batches of the project's contract (divided by img_range, no empty gt);
training reads it with `--config.data.source=tfds --config.data.tfds_name=pancollection/demo
--config.data.tfds_data_dir=DIR`. Splits: train,
valid, test_reduced, test_full (those whose file exists), in file order (no shuffling on write).

Prepare from the command line:

  python -m dcfnet_jax.data.tfds_builder --config demo --data-dir DIR
  python -m dcfnet_jax.data.tfds_builder --config wv3 --data-dir DIR --manual-dir PANCOLLECTION
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

try:
  import importlib_resources  # noqa: F401  pylint: disable=unused-import
except ImportError as e:  # tensorflow-datasets 4.9.x needs it to prepare but does not declare it
  raise ImportError("preparing TFDS datasets with tensorflow-datasets 4.9 needs importlib_resources "
                    "(an undeclared dependency, tensorflow/datasets#11212): "
                    "pip install 'dcfnet_jax[tfds]' or pip install importlib_resources") from e

from dcfnet_jax import cli, files
from dcfnet_jax.data import DEMO_DIR, SPLITS, pancollection
from dcfnet_jax.errors import InputError

FILE_FORMAT = "array_record"


@dataclasses.dataclass
class PancollectionConfig(tfds.core.BuilderConfig):
  """Per-sensor data description (matches config_lib.SENSORS / _apply_demo)."""

  num_bands: int = 8
  img_range: float = 2047.0
  ratio: int = 4


def file_candidates(sensor: str, split: str) -> tuple[str, ...]:
  """File names tried for a split: PanCollection's names, then make_dataset's generic ones."""
  return {
      "train": (f"train_{sensor}.h5", "train.h5"),
      "valid": (f"valid_{sensor}.h5", "valid.h5"),
      "test_reduced": (f"test_{sensor}_multiExm1.h5", "test_reduced.h5"),
      "test_full": (f"test_{sensor}_OrigScale_multiExm1.h5", "test_full.h5"),
  }[split]


def find_split_files(root: pathlib.Path, sensor: str) -> dict[str, pathlib.Path]:
  """The h5 file of every split found under `root` (searched recursively)."""
  found = {}
  for split in SPLITS:
    for name in file_candidates(sensor, split):
      matches = sorted(root.rglob(name))
      if len(matches) > 1:
        raise InputError(f"{root}: several files named {name} for split {split!r}: "
                              f"{[str(m) for m in matches]}; keep one.")
      if matches:
        found[split] = matches[0]
        break
  return found


class Pancollection(tfds.core.GeneratorBasedBuilder):
  """PanCollection pansharpening sets (gt, lms, ms, pan) and the embedded Landsat demo."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      PancollectionConfig(name="wv3", description="WorldView-3, 8 bands, 11-bit.",
                          num_bands=8, img_range=2047.0),
      PancollectionConfig(name="wv2", description="WorldView-2, 8 bands, 11-bit.",
                          num_bands=8, img_range=2047.0),
      PancollectionConfig(name="qb", description="QuickBird, 4 bands, 11-bit.",
                          num_bands=4, img_range=2047.0),
      PancollectionConfig(name="gf2", description="GaoFen-2, 4 bands, 10-bit.",
                          num_bands=4, img_range=1023.0),
      PancollectionConfig(name="demo", description="Embedded Landsat 7 demo (B, G, R, NIR; 8-bit).",
                          num_bands=4, img_range=255.0),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the PanCollection h5 files of the sensor in the manual directory (any sub-folders): "
      "train_<sensor>.h5, valid_<sensor>.h5, test_<sensor>_multiExm1.h5 and "
      "test_<sensor>_OrigScale_multiExm1.h5, or make_dataset's train.h5, valid.h5, "
      "test_reduced.h5 and test_full.h5. The demo config needs nothing: it uses the files "
      "embedded in dcfnet_jax.")

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config.num_bands
    tensor = lambda ch: tfds.features.Tensor(shape=(None, None, ch), dtype=np.float32,  # noqa: E731
                                             encoding="zlib")
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Pansharpening examples in DN (float32, H,W,C): pan (PAN), ms (low-resolution "
                     "MS), lms (MS upsampled by interp23tap), gt (reference; empty in test_full). "
                     f"Divide by img_range = {self.builder_config.img_range:g} for the model."),
        features=tfds.features.FeaturesDict(
            {"pan": tensor(1), "ms": tensor(c), "lms": tensor(c), "gt": tensor(c)}),
        homepage="https://github.com/liangjiandeng/PanCollection",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(img_range=self.builder_config.img_range,
                                        ratio=self.builder_config.ratio),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = DEMO_DIR if self.builder_config.name == "demo" else pathlib.Path(dl_manager.manual_dir)
    files = split_files(self.builder_config.name, root)
    return {split: self._generate_examples(path=path, split=split) for split, path in files.items()}

  def _generate_examples(self, path: pathlib.Path, split: str):
    cfg = self.builder_config
    with pancollection.PanCollectionSource(
        path, img_range=cfg.img_range, ratio=cfg.ratio, num_bands=cfg.num_bands,
        require_gt=split != "test_full", in_memory=False) as source:
      empty_gt = np.zeros((0, 0, cfg.num_bands), np.float32)
      for i in range(len(source)):
        example = {k: v[0] for k, v in source.read_dn([i]).items()}
        example.setdefault("gt", empty_gt)
        yield i, example


def split_files(config_name: str, root: pathlib.Path) -> dict[str, pathlib.Path]:
  """The h5 file of every split of `config_name` under `root`; a training file is required."""
  found = find_split_files(root, config_name)
  if "train" not in found:
    raise InputError(
        f"{root}: no training file for pancollection/{config_name} (looked for "
        f"{file_candidates(config_name, 'train')}). {Pancollection.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return found


def check_split_files(config_name: str, manual_dir: str | os.PathLike[str] | None) -> None:
  """Validates every split file with the PanCollection reader before TFDS writes anything."""
  config = next(c for c in Pancollection.BUILDER_CONFIGS if c.name == config_name)
  root = DEMO_DIR if config_name == "demo" else pathlib.Path(manual_dir)
  for split, path in split_files(config_name, root).items():
    with pancollection.PanCollectionSource(
        path, img_range=config.img_range, ratio=config.ratio, num_bands=config.num_bands,
        require_gt=split != "test_full", in_memory=False):
      pass


def prepare(config_name: str, data_dir: str | os.PathLike[str],
            manual_dir: str | os.PathLike[str] | None = None, *,
            max_examples_per_split: int | None = None) -> Pancollection:
  """Builds pancollection/<config_name> into `data_dir` as array_record (no TensorFlow).

  `max_examples_per_split` keeps only the first examples of every split (for quick tests).
  """
  builder = Pancollection(config=config_name, data_dir=str(data_dir), file_format=FILE_FORMAT)
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else str(manual_dir), try_download_gcs=False,
      max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(download_config=download_config)
  return builder


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.data.tfds_builder", __doc__)
  p.add_argument("--config", required=True, choices=[c.name for c in Pancollection.BUILDER_CONFIGS])
  p.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
  p.add_argument("--manual-dir", help="folder with the PanCollection h5 files (not for demo)")
  return p


def run(args: argparse.Namespace) -> None:
  if args.config != "demo" and not args.manual_dir:
    raise InputError(f"--config {args.config} needs --manual-dir, the folder of the PanCollection "
                     "h5 files")
  if args.manual_dir and not pathlib.Path(args.manual_dir).is_dir():
    raise InputError(f"--manual-dir {args.manual_dir}: no such folder (expected the folder of "
                     "the PanCollection h5 files)")
  files.check_output_folder(args.data_dir, flag="--data-dir", inputs=[args.manual_dir])
  check_split_files(args.config, args.manual_dir)  # bad data: refused before TFDS writes
  builder = prepare(args.config, args.data_dir, args.manual_dir)
  print(f"prepared {builder.info.full_name} in {args.data_dir}: "
        + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
