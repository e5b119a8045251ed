r"""Speed of both full-resolution families: the toolbox's (QNR/HQNR) and the reprojection + D_rho.

  PYTHONPATH=. python benchmarks/bench_full_resolution.py [--num-images 20 --size 256 --bands 8]

Default workload: 20 images of 256x256x8 (PAN 256x256, MS 64x64), seeded synthetic
smooth scenes in DN (``metric_workload.make_data``), sensor WV3. Timed separately, one
jitted call over the whole batch each:
- toolbox family: ``metrics.full_resolution_indexes`` (D_lambda, D_s, QNR,
  D_lambda_K, HQNR; LMS = interp23tap(MS));
- reprojection family: ``metrics.reprojection_indexes`` (co-registration search,
  reprojection, R-Q2n, R-Q, R-SAM, R-ERGAS, D_rho), input checks included;
- its parts: ``coregistration_phases``, ``reproject``, ``d_rho``;
- ``host``: both families through the tools' wrapper ``metrics.host.full_resolution`` (NumPy
  in, per-image NumPy out: the transfer, the checks and the two jitted calls), to be compared
  with the sum of the first two (``both``): the wrapper's overhead.
The first call (trace + compile) is reported apart; the steady state is the median of
``--repeats`` calls ended by ``jax.block_until_ready``, as wall time and as process
CPU time (all threads; fairer on a shared machine). The load average is printed: the
goal (both families under 1 s wall on 2 cores) is meant for a quiet machine.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from metric_workload import finish, machine_record, make_data, parse_args, time_call  # noqa: E402

from dcfnet_jax import metrics  # noqa: E402
from dcfnet_jax.metrics import host  # noqa: E402


def run(num_images: int, size: int, bands: int, repeats: int, x64: bool) -> dict:
  data = make_data(num_images, size, bands)
  sensor = "wv3" if bands == 8 else "none"
  results = {}
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    arr = {k: jax.device_put(jnp.asarray(v, dtype)) for k, v in data.items()}
    fused, ms, pan = arr["fused"], arr["ms"], arr["pan"][..., 0]
    phases = []  # filled by the "phases" call, before "reproject" runs
    calls = {
        "toolbox": lambda: metrics.full_resolution_indexes(fused, ms, pan, sensor=sensor),
        "reprojection": lambda: metrics.reprojection_indexes(fused, ms, pan, sensor=sensor),
        "phases": lambda: metrics.coregistration_phases(ms, pan, sensor=sensor),
        "reproject": lambda: metrics.reproject(fused, phases[0], sensor=sensor),
        "d_rho": lambda: metrics.d_rho(fused, pan),
        "host": lambda: host.full_resolution(data["fused"], data["ms"], data["pan"],
                                             sensor=sensor, float64=x64),
    }
    for name, fn in calls.items():
      first, wall, cpu = time_call(fn, repeats)
      results[name] = {"first_call_s": first, "wall_s": wall, "cpu_s": cpu}
      if name == "phases":
        phases.append(fn())
    means = {k: float(jnp.mean(v)) for k, v in {**calls["toolbox"](),
                                                  **calls["reprojection"]()}.items()}
  results["both"] = {k: results["toolbox"][k] + results["reprojection"][k]
                     for k in ("first_call_s", "wall_s", "cpu_s")}
  return {"timings": results, "means": means}


def main(argv=None) -> int:
  args = parse_args(__doc__.split("\n")[0], argv)
  report = machine_record(args)
  print("| dtype | part | first call (s) | wall (s) | CPU (s) |")
  print("|---|---|---|---|---|")
  for name in args.dtypes.split(","):
    res = run(args.num_images, args.size, args.bands, args.repeats, name == "float64")
    report["results"][name] = res
    for part, t in res["timings"].items():
      print(f"| {name} | {part} | {t['first_call_s']:.2f} | {t['wall_s']:.3f} | "
            f"{t['cpu_s']:.3f} |", flush=True)
  print("means:", json.dumps(report["results"][args.dtypes.split(",")[0]]["means"]))
  return finish(report, args.json)


if __name__ == "__main__":
  sys.exit(main())
