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

import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from metric_workload import finish, machine_record, make_data, parse_args, time_call  # noqa: E402

from dcfnet_jax import metrics  # noqa: E402


def run(num_images: int, size: int, bands: int, repeats: int, x64: bool) -> dict[str, float]:
  data = make_data(num_images, size, bands)
  sensor = "wv3" if bands == 8 else "none"
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    arr = {k: jax.device_put(jnp.asarray(v, dtype)) for k, v in data.items()}
    rr = lambda: metrics.reduced_resolution_indexes(arr["fused"], arr["gt"])  # noqa: E731
    fr = lambda: metrics.full_resolution_indexes(  # noqa: E731
        arr["fused"], arr["ms"], arr["pan"], sensor=sensor)
    rr_first, rr_time, rr_cpu = time_call(rr, repeats)
    fr_first, fr_time, fr_cpu = time_call(fr, repeats)
    means = {k: float(jnp.mean(v)) for k, v in {**rr(), **fr()}.items()}
  return {"rr_first_call_s": rr_first, "rr_s": rr_time, "rr_cpu_s": rr_cpu,
          "fr_first_call_s": fr_first, "fr_s": fr_time, "fr_cpu_s": fr_cpu,
          "total_s": rr_time + fr_time, "total_cpu_s": rr_cpu + fr_cpu, "means": means}


def main(argv=None) -> int:
  args = parse_args(__doc__.split("\n")[0], argv)
  report = machine_record(args)
  print("| dtype | RR first call (s) | RR wall (s) | RR CPU (s) | FR first call (s) | "
        "FR wall (s) | FR CPU (s) | RR+FR wall (s) | RR+FR CPU (s) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.dtypes.split(","):
    res = run(args.num_images, args.size, args.bands, args.repeats, name == "float64")
    report["results"][name] = res
    print(f"| {name} | {res['rr_first_call_s']:.2f} | {res['rr_s']:.3f} | {res['rr_cpu_s']:.3f} | "
          f"{res['fr_first_call_s']:.2f} | {res['fr_s']:.3f} | {res['fr_cpu_s']:.3f} | "
          f"{res['total_s']:.3f} | {res['total_cpu_s']:.3f} |", flush=True)
  return finish(report, args.json)


if __name__ == "__main__":
  sys.exit(main())
