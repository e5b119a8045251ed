"""Data: PanCollection h5 sources, Wald-protocol dataset maker, grain pipelines, TFDS builds.

Batches are dicts of NHWC float32 arrays `pan`, `lms`, `ms` (and `gt` at reduced resolution)
divided by `config.data.img_range`. `mms` is not part of a batch: the steps derive it on device
(`models.predict`).

`open_split(config, "train")` opens a split from the h5 file named in the config
(`config.data.source == "h5"`) or from a prepared TFDS build (`"tfds"`, see `tfds_builder`);
`has_split` says whether the config provides it. Training and evaluation open every split
through them.
"""

from __future__ import annotations

import pathlib
from typing import Any

from dcfnet_jax.data.pancollection import (DataFormatError, PanCollectionSource, load_all,
                                           open_source)
from dcfnet_jax.data.tfds_source import TfdsSource, split_names
from dcfnet_jax.errors import DataWarning, InputError

SPLITS = ("train", "valid", "test_reduced", "test_full")
DEMO_DIR = pathlib.Path(__file__).resolve().parent / "demo"  # the embedded demo data set


def _check_split(config: Any, split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if config.data.source not in ("h5", "tfds"):
    raise InputError(f"config.data.source must be 'h5' or 'tfds', got {config.data.source!r}")


def has_split(config: Any, split: str) -> bool:
  """Whether the config provides `split`: an h5 file is named, or the TFDS build has it."""
  _check_split(config, split)
  if config.data.source == "tfds":
    return split in split_names(config.data.tfds_name, config.data.tfds_data_dir or None)
  return bool(config.data[f"{split}_file"])


def open_split(config: Any, split: str, **kwargs: Any) -> Any:
  """The source of `split` (train, valid, test_reduced, test_full) as the config describes it.

  h5: `config.data.<split>_file` through the validating reader (PanCollectionSource; keyword
  arguments go to it). tfds: `config.data.tfds_name` in `config.data.tfds_data_dir`
  (TfdsSource; needs the `tfds` extra).
  """
  _check_split(config, split)
  data = config.data
  if data.source == "tfds":
    if not data.tfds_name:
      raise InputError('config.data.tfds_name is empty; e.g. "pancollection/wv3"')
    return TfdsSource(data.tfds_name, split, data_dir=data.tfds_data_dir or None,
                      img_range=data.img_range, num_bands=data.num_bands)
  path = data[f"{split}_file"]
  if not path:
    raise InputError(f"config.data.{split}_file is empty; set it to a PanCollection h5 file "
                     f"(or use --config=demo for the embedded demo set).")
  # Full-resolution training (config.loss "full_resolution") needs no gt in any split.
  unsupervised = config.get("loss", "supervised") == "full_resolution"
  require_gt = split == "test_reduced" or (split != "test_full" and not unsupervised)
  return open_source(path, data, require_gt=require_gt, **kwargs)


__all__ = ["DataFormatError", "DataWarning", "PanCollectionSource", "SPLITS", "TfdsSource",
           "has_split", "load_all", "open_source", "open_split"]
