"""`python -m dcfnet_jax.bench`: one JAX-vs-PyTorch run, or the accelerator suite.

  python -m dcfnet_jax.bench --batch-size 32 --steps 20 --frameworks jax,torch,torch-compile
  python -m dcfnet_jax.bench --precision bf16 --mode infer --json bench.json
  python -m dcfnet_jax.bench --suite accelerator --out-dir bench_gpu     # on a GPU/TPU machine
  python -m dcfnet_jax.bench --suite accelerator --tiny --out-dir /tmp/t # the CPU check

A single run times the same thing in each framework on the same batch: a training step
(forward, MSE loss on the residual output `net + lms`, backward, Adam lr 1e-4) and/or an
inference forward in eval mode. The steady-state time per step is the median of `--steps`
timed steps after `--warmup` untimed ones, each ended by `jax.block_until_ready` /
`torch.cuda.synchronize`; the first call (tracing and compilation for jax.jit and
torch.compile) is reported apart. Achieved FLOP/s use the convolution FLOPs of
docs/dcfnet_architecture.md §8 (the figure torch's flop counter gives), scaled to the size and
band count; XLA's own estimate is reported beside it.

Precision is pinned and recorded: fp32 disables TF32 on both sides and sets JAX's default matmul
precision to "highest"; tf32 allows TF32 on both; bf16 runs torch under bf16 autocast and the JAX
model with a bfloat16 compute dtype (parameters, loss and optimizer stay float32).

`--suite accelerator` runs the GPU/TPU plan of `dcfnet_jax.bench.accelerator` and writes
OUT_DIR/accelerator.json and OUT_DIR/accelerator.md (the BENCHMARKS.md section naming the
device; docs/bench_accelerator.md). Without a GPU/TPU it stops with a message (exit 1) unless
`--tiny`. torch is optional: without it only JAX runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dcfnet_jax import cli, files
from dcfnet_jax.bench import accelerator, accelerator_report, runner
from dcfnet_jax.bench.measure import FRAMEWORKS, MODES, PRECISIONS, BenchSettings
from dcfnet_jax.errors import InputError, RunError

log = logging.getLogger(__name__)

SUITES = ("single", "accelerator")
# Flags of one suite only (dest names); the other suite refuses them.
_SINGLE_ONLY = ("batch_size", "frameworks", "precision", "size", "bands", "mode", "lr", "seed",
                "threads", "devices", "fold", "json")
_SUITE_ONLY = ("out_dir", "tiny", "batch_sizes", "precisions", "scene_size", "max_devices",
               "budget_s", "no_torch", "no_compile")


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.bench", __doc__)
  p.add_argument("--suite", default="single", choices=SUITES,
                 help="one run of the settings below, or the accelerator suite")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps, the median is reported (default 20; tiny suite: 1)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed steps first, incl. the first call (default 3; tiny suite: 1)")
  single = p.add_argument_group("one run (--suite single)")
  single.add_argument("--batch-size", type=int, default=None, help="(default 32)")
  single.add_argument("--frameworks", default=None,
                      help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default all)")
  single.add_argument("--precision", default=None, choices=PRECISIONS, help="(default fp32)")
  single.add_argument("--size", type=int, default=None,
                      help="pan/lms height and width, a multiple of 4 (default 64)")
  single.add_argument("--bands", type=int, default=None, help="(default 8)")
  single.add_argument("--mode", default=None, choices=MODES, help="(default both)")
  single.add_argument("--lr", type=float, default=None, help="(default 1e-4)")
  single.add_argument("--seed", type=int, default=None, help="(default 0)")
  single.add_argument("--threads", type=int, default=None, help="torch threads (0: all cores)")
  single.add_argument("--devices", type=int, default=None,
                      help="JAX devices the batch is split over (default 1)")
  single.add_argument("--fold", default=None, choices=("on", "off"),
                      help="JAX inference with BatchNorm folded into the convolutions (default: "
                           "the predictor's, off on the CPU and on elsewhere)")
  single.add_argument("--json", default=None, help="write the full report here")
  suite = p.add_argument_group("the accelerator suite (--suite accelerator)")
  suite.add_argument("--out-dir", default=None,
                     help="where accelerator.json and accelerator.md go (default "
                          "bench_accelerator)")
  suite.add_argument("--tiny", action="store_true",
                     help="small sizes on whatever backend JAX has (the CPU check of the tests)")
  suite.add_argument("--batch-sizes", default=None, help="comma-separated (default 256,32)")
  suite.add_argument("--precisions", default=None, help=f"subset of {','.join(PRECISIONS)}")
  suite.add_argument("--scene-size", type=int, default=None, help="scene height/width (1024)")
  suite.add_argument("--max-devices", type=int, default=None, help="scaling up to this many")
  suite.add_argument("--budget-s", type=float, default=None,
                     help="seconds of measurements before the remaining items are skipped (450)")
  suite.add_argument("--no-torch", action="store_true", help="JAX only")
  suite.add_argument("--no-compile", action="store_true", help="no torch.compile runs")
  return p


def _check_flags(a: argparse.Namespace) -> None:
  """Refuses the flags of the other suite (they would silently do nothing)."""
  other = _SUITE_ONLY if a.suite == "single" else _SINGLE_ONLY
  given = [dest for dest in other if getattr(a, dest) not in (None, False)]
  if given:
    flags = ", ".join("--" + d.replace("_", "-") for d in given)
    raise InputError(f"{flags}: not a flag of --suite {a.suite}")
  for name in ("steps", "warmup"):
    if getattr(a, name) is not None and getattr(a, name) < 1:
      raise InputError(f"--{name} {getattr(a, name)}: must be >= 1")


def settings_from_args(a: argparse.Namespace) -> BenchSettings:
  """The settings of one run (unset flags keep `BenchSettings`' defaults)."""
  values: dict[str, Any] = dict(batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
                                precision=a.precision, size=a.size, bands=a.bands, mode=a.mode,
                                learning_rate=a.lr, seed=a.seed, threads=a.threads,
                                devices=a.devices)
  if a.frameworks is not None:
    values["frameworks"] = tuple(f.strip() for f in a.frameworks.split(",") if f.strip())
  if a.fold is not None:
    values["fold"] = a.fold == "on"
  settings = BenchSettings(**{k: v for k, v in values.items() if v is not None})
  settings.validate()
  return settings


def _ints(flag: str, text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise InputError(f"--{flag} {text!r}: expected comma-separated integers") from None
  if not values or any(v < 1 for v in values):
    raise InputError(f"--{flag} {text!r}: expected integers >= 1")
  return values


def suite_config_from_args(a: argparse.Namespace) -> accelerator.SuiteConfig:
  """The accelerator plan (`full`, or `tiny` with --tiny) with the flags' overrides."""
  overrides: dict[str, Any] = {}
  if a.batch_sizes:
    overrides["batch_sizes"] = _ints("batch-sizes", a.batch_sizes)
  if a.precisions:
    precisions = tuple(x.strip() for x in a.precisions.split(",") if x.strip())
    if not precisions or any(x not in PRECISIONS for x in precisions):
      raise InputError(f"--precisions {a.precisions!r}: expected a subset of "
                       f"{','.join(PRECISIONS)}")
    overrides["precisions"] = precisions
  if a.scene_size is not None and (a.scene_size < 4 or a.scene_size % 4):
    raise InputError(f"--scene-size {a.scene_size}: must be a positive multiple of 4")
  for dest in ("steps", "warmup", "scene_size", "max_devices", "budget_s"):
    if getattr(a, dest) is not None:
      overrides[dest] = getattr(a, dest)
  if a.no_torch:
    overrides["torch"] = False
  if a.no_compile:
    overrides["torch_compile"] = False
  make = accelerator.SuiteConfig.tiny if a.tiny else accelerator.SuiteConfig.full
  return make(**overrides)


def run_single(a: argparse.Namespace) -> int:
  settings = settings_from_args(a)
  if a.json:  # refused before the benchmark, not after it
    files.check_output_file(a.json, flag="--json")
  report = runner.run_benchmark(settings, progress=log.info)
  print(runner.format_table(report))
  if a.json:
    files.write_json(a.json, report)
    log.info("wrote %s", a.json)
  failed = [r for r in report["results"] if r["status"] != "ok"]
  return 1 if failed and len(failed) == len(report["results"]) else 0


def run_accelerator(a: argparse.Namespace, argv: list[str]) -> int:
  cfg = suite_config_from_args(a)
  out = files.check_output_folder(a.out_dir or "bench_accelerator", flag="--out-dir")
  backend, kind = accelerator.accelerator()
  if backend == "cpu" and not a.tiny:
    raise RunError(f"No GPU or TPU: JAX's backend is the CPU ({kind}). The accelerator suite "
                   "measures GPUs/TPUs; install jax with CUDA or TPU support on such a machine, "
                   "or run `python -m dcfnet_jax.bench` for the CPU comparison (`--tiny` "
                   "checks this command on the CPU).")
  report = accelerator.run_suite(cfg, tiny=a.tiny, progress=log.info)
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / "accelerator.json", report, indent=1, default=str)
  markdown = accelerator_report.render_markdown(
      report, " ".join(["python -m dcfnet_jax.bench"] + argv))
  files.write_text(out / "accelerator.md", markdown)
  print(markdown, end="")
  log.info("wrote %s and %s", out / "accelerator.json", out / "accelerator.md")
  return 0


def main(argv: list[str] | None = None) -> int:
  """Runs the tool on `argv` (default: sys.argv[1:]); returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)

  def run(a: argparse.Namespace) -> int:
    _check_flags(a)
    return run_single(a) if a.suite == "single" else run_accelerator(a, argv)

  return cli.run_main(build_parser(), run, argv)


if __name__ == "__main__":
  sys.exit(main())
