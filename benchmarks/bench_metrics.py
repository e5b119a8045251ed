r"""Speed of the jitted toolbox-exact quality indices (reduced + full resolution).

  PYTHONPATH=. python benchmarks/bench_metrics.py [--num-images 20 --size 256 --bands 8 --repeats 5]

Default workload: the WV3 test set shape of the paper, 20 images of 256x256x8 (PAN
256x256, MS 64x64); reduced resolution = Q8, Q_avg, SAM, ERGAS, SCC with the
toolbox crop (dim_cut 21); full resolution = D_lambda, D_s, QNR, D_lambda_K, HQNR
(LMS = interp23tap(MS)). One jitted call per resolution over the whole batch, in
float32 and float64 (x64). First call (trace + compile) is reported apart; the
steady-state time is the median of ``--repeats`` calls ended by
``jax.block_until_ready``, as wall time and as process CPU time (all threads; a
fairer number on a shared machine). Data: seeded synthetic smooth scenes in DN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax import metrics


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


def _time(fn, repeats: int) -> tuple[float, float, float]:
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


def run(num_images: int, size: int, bands: int, repeats: int, x64: bool) -> dict[str, float]:
  data = make_data(num_images, size, bands)
  sensor = "wv3" if bands == 8 else "none"
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    arr = {k: jax.device_put(jnp.asarray(v, dtype)) for k, v in data.items()}
    rr = lambda: metrics.reduced_resolution_indexes(arr["fused"], arr["gt"])  # noqa: E731
    fr = lambda: metrics.full_resolution_indexes(  # noqa: E731
        arr["fused"], arr["ms"], arr["pan"], sensor=sensor)
    rr_first, rr_time, rr_cpu = _time(rr, repeats)
    fr_first, fr_time, fr_cpu = _time(fr, repeats)
    means = {k: float(jnp.mean(v)) for k, v in {**rr(), **fr()}.items()}
  return {"rr_first_call_s": rr_first, "rr_s": rr_time, "rr_cpu_s": rr_cpu,
          "fr_first_call_s": fr_first, "fr_s": fr_time, "fr_cpu_s": fr_cpu,
          "total_s": rr_time + fr_time, "total_cpu_s": rr_cpu + fr_cpu, "means": means}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num-images", type=int, default=20)
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--bands", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtypes", default="float32,float64")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  report = {
      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
      "load_avg": os.getloadavg(), "jax": jax.__version__, "backend": jax.default_backend(),
      "workload": f"{args.num_images} x {args.size}x{args.size}x{args.bands} "
                  f"(MS {args.size // 4}x{args.size // 4})",
      "results": {},
  }
  print(f"{report['workload']}, jax {jax.__version__} on {jax.default_backend()}, "
        f"load average {report['load_avg'][0]:.1f}", flush=True)
  print("| dtype | RR first call (s) | RR wall (s) | RR CPU (s) | FR first call (s) | "
        "FR wall (s) | FR CPU (s) | RR+FR wall (s) | RR+FR CPU (s) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.dtypes.split(","):
    res = run(args.num_images, args.size, args.bands, args.repeats, name == "float64")
    report["results"][name] = res
    print(f"| {name} | {res['rr_first_call_s']:.2f} | {res['rr_s']:.3f} | {res['rr_cpu_s']:.3f} | "
          f"{res['fr_first_call_s']:.2f} | {res['fr_s']:.3f} | {res['fr_cpu_s']:.3f} | "
          f"{res['total_s']:.3f} | {res['total_cpu_s']:.3f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
