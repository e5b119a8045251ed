"""What a benchmark run measures and how: settings, the batch, FLOP figures, the timing loop and
the per-framework result records (shared by the JAX and PyTorch runners, `frameworks`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from dcfnet_jax.errors import InputError

FRAMEWORKS = ("jax", "torch", "torch-compile")
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("train", "infer", "both")

# Convolution multiply-accumulates per 64x64 sample (docs/dcfnet_architecture.md §8):
# BASE + PER_BAND * bands.
_BASE_MACS_64 = 3_392_405_504
_PER_BAND_MACS_64 = 4_161_536
# Convs whose input is data (conv1 on [pan, lms]; the two conv_up on mms and ms) need no input
# gradient: their MACs per 64x64 sample are DATA_BASE + DATA_PER_BAND * bands.
_DATA_BASE_MACS_64 = 2_359_296
_DATA_PER_BAND_MACS_64 = 3_244_032


@dataclasses.dataclass
class BenchSettings:
  """What to run; the defaults are the official training shape (batch 32, 64x64, 8 bands)."""
  batch_size: int = 32
  steps: int = 20
  warmup: int = 3
  frameworks: tuple[str, ...] = FRAMEWORKS
  precision: str = "fp32"
  size: int = 64
  bands: int = 8
  mode: str = "both"
  learning_rate: float = 1e-4
  seed: int = 0
  threads: int = 0  # torch intra-op threads; 0 = all cores (os.cpu_count())
  devices: int = 1  # JAX devices the batch is split over (data parallel); torch uses one
  fold: bool | None = None  # JAX inference with BatchNorm folded; None: the predictor's default

  def validate(self) -> None:
    unknown = [f for f in self.frameworks if f not in FRAMEWORKS]
    if unknown or not self.frameworks:
      raise InputError(f"frameworks {list(self.frameworks)}: expected a non-empty subset of "
                       f"{', '.join(FRAMEWORKS)}")
    if self.precision not in PRECISIONS:
      raise InputError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if self.mode not in MODES:
      raise InputError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
    if self.size <= 0 or self.size % 4:
      raise InputError(f"size {self.size}: must be a positive multiple of 4 "
                       "(docs/dcfnet_architecture.md §1)")
    for name in ("batch_size", "steps", "warmup", "bands", "devices"):
      if getattr(self, name) < 1:
        raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.batch_size % self.devices:
      raise InputError(f"batch_size {self.batch_size} must be a multiple of devices "
                       f"{self.devices}")


def conv_flops_per_sample(bands: int, size: int, train: bool) -> int:
  """Convolution FLOPs (2 per MAC) per sample, as torch's flop counter counts them.

  Every feature map lives at H, H/2 or H/4, so for a size that is a multiple of 4 the 64x64
  figures of docs/dcfnet_architecture.md §8 scale exactly with (size/64)^2. A training step
  costs forward, input gradient and weight gradient (3x forward) minus the input gradients
  nobody needs (data inputs).
  """
  scale_num, scale_den = size * size, 64 * 64
  fwd = 2 * (_BASE_MACS_64 + _PER_BAND_MACS_64 * bands)
  if not train:
    return fwd * scale_num // scale_den
  data = 2 * (_DATA_BASE_MACS_64 + _DATA_PER_BAND_MACS_64 * bands)
  return (3 * fwd - data) * scale_num // scale_den


def make_batch(settings: BenchSettings) -> dict[str, np.ndarray]:
  """A random NHWC float32 batch in [0, 1] (pan, lms, ms, gt); mms is made inside each step."""
  rng = np.random.default_rng(settings.seed)
  n, s, c = settings.batch_size, settings.size, settings.bands
  return {
      "pan": rng.random((n, s, s, 1), dtype=np.float32),
      "lms": rng.random((n, s, s, c), dtype=np.float32),
      "ms": rng.random((n, s // 4, s // 4, c), dtype=np.float32),
      "gt": rng.random((n, s, s, c), dtype=np.float32),
  }


def time_loop(step: Callable[[], Any], sync: Callable[[Any], None], warmup: int,
              steps: int) -> tuple[dict[str, Any], Any]:
  """Runs `step` once (timed alone), warmup-1 more times, then `steps` timed, synced steps.

  Returns the timings and the last step's output.
  """
  t0 = time.perf_counter()
  sync(step())
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    sync(step())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    out = step()
    sync(out)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {
      "first_step_s": first,
      "compile_or_warmup_s": max(first - median, 0.0),
      "step_time_median_s": median,
      "step_time_min_s": min(times),
      "step_time_max_s": max(times),
      "step_times_s": times,
  }, out


def result(framework: str, mode: str, settings: BenchSettings, timing: dict[str, Any],
           **extra) -> dict[str, Any]:
  """The record of one framework and mode: timings, samples/s, convolution FLOP/s, extras."""
  flops = conv_flops_per_sample(settings.bands, settings.size, mode == "train")
  flops *= settings.batch_size
  median = timing["step_time_median_s"]
  return {
      "framework": framework, "mode": mode, "status": "ok", **timing,
      "samples_per_s": settings.batch_size / median,
      "conv_flops_per_step": flops,
      "achieved_tflops": flops / median / 1e12,
      **{k: v for k, v in extra.items() if v is not None},
  }


def failure(framework: str, mode: str, err: BaseException) -> dict[str, Any]:
  """The record of a framework and mode that failed (the run goes on)."""
  lines = traceback.format_exception_only(type(err), err)
  return {"framework": framework, "mode": mode, "status": "failed",
          "error": "".join(lines).strip()[-2000:]}


