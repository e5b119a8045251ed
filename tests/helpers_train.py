"""Test utilities for the training tests: tiny PanCollection-layout h5 files and configs.

The synthetic scenes are smooth random fields, so a network can learn something from them:
gt (N,H,W,C) in DN, ms = gt block-averaged by `ratio`, lms = ms repeated (nearest) to the gt
size, pan = the band mean of gt. Written with `dcfnet_jax.data.pancollection.write_h5` (N,C,H,W).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
from scipy import ndimage

from dcfnet_jax import config_lib
from dcfnet_jax.data import pancollection


def make_scenes(n: int, size: int, num_bands: int, max_dn: float, ratio: int = 4,
                seed: int = 0, with_gt: bool = True) -> dict[str, np.ndarray]:
  """NHWC float32 DN arrays gt/ms/lms/pan for `n` synthetic size x size scenes."""
  if size % ratio:
    raise ValueError(f"size {size} must be a multiple of ratio {ratio}")
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal((n, size, size, num_bands))
  smooth = ndimage.gaussian_filter(noise, sigma=(0, 2, 2, 0), mode="wrap")
  smooth += 0.5 * ndimage.gaussian_filter(rng.standard_normal((n, size, size, 1)),
                                          sigma=(0, 1, 1, 0), mode="wrap")
  smooth -= smooth.min(axis=(1, 2, 3), keepdims=True)
  smooth /= smooth.max(axis=(1, 2, 3), keepdims=True)
  gt = (0.05 + 0.9 * smooth) * max_dn
  h = size // ratio
  ms = gt.reshape(n, h, ratio, h, ratio, num_bands).mean(axis=(2, 4))
  lms = ms.repeat(ratio, axis=1).repeat(ratio, axis=2)
  pan = gt.mean(axis=-1, keepdims=True)
  out = dict(ms=ms, lms=lms, pan=pan)
  if with_gt:
    out["gt"] = gt
  return {k: v.astype(np.float32) for k, v in out.items()}


def write_pancollection(path: str | pathlib.Path, n: int, size: int, num_bands: int,
                        img_range: float, *, ratio: int = 4, seed: int = 0,
                        with_gt: bool = True) -> pathlib.Path:
  """Writes a small PanCollection h5 file (DN values) and returns its path."""
  path = pathlib.Path(path)
  arrays = make_scenes(n, size, num_bands, img_range, ratio=ratio, seed=seed, with_gt=with_gt)
  pancollection.write_h5(path, arrays, layout="nhwc", compression=None)
  return path


def write_dataset(directory: str | pathlib.Path, num_bands: int, img_range: float, *,
                  n_train: int = 16, train_size: int = 16, n_valid: int = 4,
                  n_test: int = 2, test_size: int = 32, full_size: int = 32
                  ) -> dict[str, str]:
  """Train/valid/test_reduced/test_full files in `directory`; returns config.data fields."""
  directory = pathlib.Path(directory)
  files = dict(
      train_file=write_pancollection(directory / "train.h5", n_train, train_size, num_bands,
                                     img_range, seed=1),
      valid_file=write_pancollection(directory / "valid.h5", n_valid, train_size, num_bands,
                                     img_range, seed=2),
      test_reduced_file=write_pancollection(directory / "test_reduced.h5", n_test, test_size,
                                            num_bands, img_range, seed=3),
      test_full_file=write_pancollection(directory / "test_full.h5", n_test, full_size,
                                         num_bands, img_range, seed=4, with_gt=False),
  )
  return {k: str(v) for k, v in files.items()}


def tiny_config(name: str, files: dict[str, str], **overrides) -> ml_collections.ConfigDict:
  """`config_lib.get_config(name, "smoke")` on `files`, with `overrides` (locked config).

  Overrides use dotted keys: tiny_config("demo", files, **{"eval.block_size": 8}).
  """
  config = config_lib.get_config(name, "smoke")  # locked: misspelt keys fail
  config.data.update(files)
  # The demo's zero-initialised head would give every layer below it a zero gradient in the
  # first step, which would hide wrong gradients in the step-equality tests: official init.
  config.model.head_init = "torch"
  # Constant lr (the demo's cosine depends on the run length, and the resume tests extend runs).
  config.lr_schedule = "constant"
  # The tiny test images (32x32) are smaller than the toolbox crop plus one Q block, the
  # validation patches (16x16) than one 32-pixel block, and the full-resolution MS (8x8) than the
  # reprojection protocol's 32-pixel MS blocks: the indices would refuse them.
  config.eval.flag_cut_bounds = False
  config.eval.valid_block_size = 16
  config.eval.fr_indexes = "toolbox"
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# A cheap registered network for tests of the loop, checkpoints and CLI, whose cost is
# dominated by compiling: DiCNN1 (three convolutions, no BatchNorm) compiles in seconds where
# DCFNet takes minutes. The DCFNet-specific step tests live in test_train.py.
CHEAP_MODEL = "dicnn1"
