"""A split of a prepared TFDS `pancollection` build as a batch source (no TensorFlow).

`TfdsSource` reads `tfds.data_source(name, split, data_dir)` (random access to array_record
files) and returns batches of the project's contract, like `PanCollectionSource`. The builder
that prepares the files is `dcfnet_jax.data.tfds_builder`. tensorflow-datasets is an optional
extra (`pip install 'dcfnet_jax[tfds]'`), imported only when a TFDS source is opened.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from dcfnet_jax import dn
from dcfnet_jax.data import pancollection
from dcfnet_jax.errors import InputError


def tfds() -> Any:
  """The tensorflow_datasets module, or an InputError saying how to install it."""
  try:
    return importlib.import_module("tensorflow_datasets")
  except ImportError as e:
    raise InputError("config.data.source 'tfds' needs tensorflow-datasets: "
                     "pip install 'dcfnet_jax[tfds]'") from e


def split_names(name: str, data_dir: str | os.PathLike[str] | None) -> list[str]:
  """The splits of a prepared build (e.g. ["test_full", "test_reduced", "train", "valid"])."""
  try:
    builder = tfds().builder(name, data_dir=None if data_dir is None else str(data_dir))
    return sorted(builder.info.splits)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
    if isinstance(e, InputError):
      raise
    raise InputError(f"TFDS dataset {name!r} in {data_dir}: cannot be read ({e}); prepare it "
                     "with python -m dcfnet_jax.data.tfds_builder") from e


class TfdsSource:
  """A split of a prepared `pancollection` build as a batch source of the project's contract.

  Same interface as PanCollectionSource (`len`, `get_batch`, `[i]`): float32 H,W,C arrays
  divided by img_range; test_full batches have no `gt`.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike[str] | None,
               img_range: float, num_bands: int | None = None):
    self.name, self.split, self.img_range = name, split, float(img_range)
    available = split_names(name, data_dir)
    if split not in available:
      raise InputError(f"TFDS dataset {name!r} has no split {split!r} (it has {available})")
    self._source = tfds().data_source(name, split=split, data_dir=None if data_dir is None
                                      else str(data_dir))
    self.has_gt = split != "test_full"
    info = self._source.dataset_info
    built_range = (info.metadata or {}).get("img_range")
    if built_range is not None and not np.isclose(float(built_range), self.img_range):
      raise pancollection.DataFormatError(
          f"{name} ({split}): built with img_range = {float(built_range):g}, the config "
          f"img_range = {self.img_range:g}.")
    bands = info.features["ms"].shape[-1]
    if num_bands is not None and bands != num_bands:
      raise pancollection.DataFormatError(
          f"{name} ({split}): {bands} bands, but the config declares num_bands = {num_bands}.")

  def __len__(self) -> int:
    return len(self._source)

  def read_dn(self, indices: Iterable[int]) -> dict[str, np.ndarray]:
    idx = [int(i) for i in indices]
    records = (self._source.__getitems__(idx) if hasattr(self._source, "__getitems__")
               else [self._source[i] for i in idx])
    out = {k: np.stack([np.asarray(r[k], np.float32) for r in records]) for k in records[0]}
    if not self.has_gt or out["gt"].size == 0:
      out.pop("gt")
    return {k: out[k] for k in pancollection.KEYS if k in out}

  def get_batch(self, indices: Iterable[int]) -> dict[str, np.ndarray]:
    return {k: dn.to_model_units(v, self.img_range)
            for k, v in self.read_dn(indices).items()}

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch([index]).items()}

  def close(self) -> None:
    """Nothing to release (`tfds.data_source` opens files per read); for `contextlib.closing`."""

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, N={len(self)})"
