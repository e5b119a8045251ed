"""Data: PanCollection h5 sources, Wald-protocol dataset maker, grain pipelines, TFDS builder.

Batches are dicts of NHWC float32 arrays `pan`, `lms`, `ms` (and `gt` at reduced resolution)
divided by `config.data.img_range`. `mms` is not part of a batch: the train step derives it on
device with `dcfnet_jax.models.dcfnet.make_mms(ms)`.

`open_split(config, "train")` opens a split from the h5 file named in the config
(`config.data.source == "h5"`) or from a prepared TFDS build (`"tfds"`).
"""

from __future__ import annotations

from typing import Any

from dcfnet_jax.data.pancollection import (DataFormatError, DataWarning, PanCollectionSource,
                                           load_all, open_source)

SPLITS = ("train", "valid", "test_reduced", "test_full")


def open_split(config: Any, split: str, **kwargs: Any) -> Any:
  """The source of `split` (train, valid, test_reduced, test_full) as the config describes it.

  h5: `config.data.<split>_file` through the validating reader (PanCollectionSource; keyword
  arguments go to it). tfds: `config.data.tfds_name` in `config.data.tfds_data_dir`
  (TfdsSource; needs the `tfds` extra).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  data = config.data
  if data.source == "h5":
    path = data[f"{split}_file"]
    if not path:
      raise ValueError(f"config.data.{split}_file is empty; set it to a PanCollection h5 file "
                       f"(or use --config=configs/demo.py for the embedded demo set).")
    return open_source(path, data, require_gt=split != "test_full", **kwargs)
  if data.source == "tfds":
    if not data.tfds_name:
      raise ValueError('config.data.tfds_name is empty; e.g. "pancollection/wv3"')
    from dcfnet_jax.data.tfds_builder import TfdsSource  # pylint: disable=g-import-not-at-top
    return TfdsSource(data.tfds_name, split, data_dir=data.tfds_data_dir or None,
                      img_range=data.img_range, num_bands=data.num_bands)
  raise ValueError(f"config.data.source must be 'h5' or 'tfds', got {data.source!r}")


__all__ = ["DataFormatError", "DataWarning", "PanCollectionSource", "SPLITS", "load_all",
           "open_source", "open_split"]
