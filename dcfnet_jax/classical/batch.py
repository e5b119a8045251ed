"""Runs a classical method over a batch of images (one jitted call per image, float64 default)."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.classical import methods

ProgressFn = Callable[[int, int, float], None]  # (images done, total, seconds for the last)


@functools.lru_cache(maxsize=64)
def _jitted(method: str, sensor: Any, ratio: int, options: tuple[tuple[str, Any], ...]):
  fn = methods.get_method(method)
  return jax.jit(functools.partial(fn, sensor=sensor, ratio=ratio, **dict(options)))


def fuse_images(method: str, ms: np.ndarray, pan: np.ndarray, lms: np.ndarray | None = None, *,
                sensor: str | imaging.Sensor, ratio: int = 4, float64: bool = True,
                progress: ProgressFn | None = None, **options: Any) -> np.ndarray:
  """Fused images (N, H, W, C) in DN from NHWC batches in DN.

  Args:
    method: a name of `classical.methods.METHODS`.
    ms: (N, h, w, C) low-resolution MS. pan: (N, H, W, 1) or (N, H, W). lms: (N, H, W, C) or
      None (interp23tap(ms) per image).
    sensor: sensor name or `imaging.Sensor` (MTF gains; the PAN gain for BDSD-PC).
    ratio: PAN/MS resolution ratio.
    float64: compute in float64 (toolbox precision) inside `jax.enable_x64`; else float32.
    progress: called after every image.
    **options: extra keyword arguments of the method (e.g. cvpr19's `params`).
  """
  ms = np.asarray(ms)
  pan = np.asarray(pan)
  if ms.ndim != 4:
    raise ValueError(f"ms must be (N, h, w, C), got shape {ms.shape}")
  if pan.ndim == 4 and pan.shape[-1] == 1:
    pan = pan[..., 0]
  if pan.ndim != 3 or pan.shape[0] != ms.shape[0]:
    raise ValueError(f"pan must be (N, H, W[, 1]) with N = {ms.shape[0]}, got shape {pan.shape}")
  if lms is not None and (np.ndim(lms) != 4 or np.shape(lms)[0] != ms.shape[0]):
    raise ValueError(f"lms must be (N, H, W, C) with N = {ms.shape[0]}, got {np.shape(lms)}")
  if isinstance(sensor, str):
    sensor = imaging.get_sensor(sensor)
  fn = _jitted(method, sensor, int(ratio), tuple(sorted(options.items())))
  dtype = np.float64 if float64 else np.float32
  outputs = []
  with jax.enable_x64(float64):
    for i in range(ms.shape[0]):
      t0 = time.perf_counter()
      args = [ms[i].astype(dtype), pan[i].astype(dtype)]
      kwargs = {} if lms is None else dict(lms=np.asarray(lms[i], dtype))
      outputs.append(np.asarray(fn(*args, **kwargs), np.float64))
      if progress is not None:
        progress(i + 1, ms.shape[0], time.perf_counter() - t0)
  return np.stack(outputs)
