"""What the metric benchmarks share: the synthetic workload, the timer, the command line and the
machine record (`bench_metrics.py`, `bench_full_resolution.py`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from dcfnet_jax import imaging


def make_data(num_images: int, size: int, bands: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Smooth DN scenes (0..2047): gt, fused = gt + noise, Wald-degraded ms and a pan."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(num_images, size // 16 + 2, size // 16 + 2, bands + 1))
  field = np.kron(coarse, np.ones((1, 16, 16, 1)))[:, :size, :size]
  scenes = np.clip(700 + 250 * field + rng.normal(0, 20, field.shape), 1, 2000)
  gt, pan = scenes[..., :bands], scenes[..., bands:]
  fused = gt + rng.normal(0, 15, gt.shape)
  ms, _ = imaging.wald_degrade(gt, pan, 4, "wv3" if bands == 8 else "none")
  return {"gt": gt, "fused": fused, "ms": np.asarray(ms, np.float64), "pan": pan}


def time_call(fn, repeats: int) -> tuple[float, float, float]:
  """(first call wall s, median wall s, median process CPU s) of ``fn``.

  The process CPU time (all threads) is less sensitive than wall time to other
  jobs on a shared machine: alone on P cores, wall >= CPU / P.
  """
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
  return first, statistics.median(walls), statistics.median(cpus)


def parse_args(description: str, argv=None) -> argparse.Namespace:
  """The workload options: --num-images --size --bands --repeats --dtypes --json."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--num-images", type=int, default=20)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--bands", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtypes", default="float32,float64")
  p.add_argument("--json", default=None)
  return p.parse_args(argv)


def machine_record(args: argparse.Namespace) -> dict:
  """Machine, versions, load average and workload of a run (the JSON record's head), printed."""
  report = {
      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
      "load_avg_start": os.getloadavg(), "jax": jax.__version__, "numpy": np.__version__,
      "python": platform.python_version(), "backend": jax.default_backend(),
      "workload": f"{args.num_images} x {args.size}x{args.size}x{args.bands} "
                  f"(MS {args.size // 4}x{args.size // 4})",
      "results": {},
  }
  print(f"{report['workload']}, jax {jax.__version__} on {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs, load average {report['load_avg_start'][0]:.1f}", flush=True)
  return report


def finish(report: dict, json_path: str | None) -> int:
  """Adds the load average at the end (printed) and writes the record to `json_path`."""
  report["load_avg_end"] = os.getloadavg()
  print(f"load average at the end: {report['load_avg_end'][0]:.1f}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=1)
  return 0
