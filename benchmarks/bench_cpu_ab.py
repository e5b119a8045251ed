"""A/B speed of CPU formulations of DCFNet, interleaved in ONE process (robust on a busy machine).

Every variant (JAX formulations, XLA compiler options, PyTorch eager / torch.compile) is built
and compiled first; then `--rounds` rounds time one step of every variant in turn, so that all
variants see the same machine load. Each step records wall time and process CPU time
(`time.process_time`, all threads). Reported: medians, and the median over rounds of each
variant's time divided by the reference variant's time in the same round (paired ratios).

The JAX variants run the package's own steps: the training step is `steps.train_step` on a
model built with the variant's CPU formulations (`fast=`, a static per-layer option), the
inference is `inference.predict_dn` (what the predictor runs: no CPU formulations, BatchNorm
folded or not), except `jax-fast-infer`, the raw eval-mode model with its CPU formulations (the
inference path before issue 20). XLA options are given per compilation (`jax.jit(...,
compiler_options=...)`: the package's own option, `xla_flags.compiler_options("cpu")`, updated
by the variant's), so variants with different XLA:CPU settings share the process. Process-wide
settings (the number of fake host devices, for the data-parallel variants) come from
XLA_FLAGS, set below before JAX starts.

  python benchmarks/bench_cpu_ab.py --mode infer --batch 32 --rounds 5 \\
      --variants jax,jax-fold,torch,torch-compile --reference torch
  python benchmarks/bench_cpu_ab.py --list        # the variants

CPU time is the fairer measure under load only for single-threaded variants; a 2-thread
variant's CPU time includes spin-waiting of its thread pool, so quote both.
"""

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import statistics
import sys
import time
from typing import Any, Callable

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()
if "--one-core" in sys.argv:  # before JAX and torch create their thread pools
  _core = os.environ.get("BENCH_CORE", "")  # which core (default: the last allowed one)
  os.sched_setaffinity(0, {int(_core) if _core else max(os.sched_getaffinity(0))})
  os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from dcfnet_jax import files, inference, sharding, steps, xla_flags  # noqa: E402
from dcfnet_jax.bench import frameworks, measure  # noqa: E402
from dcfnet_jax.models import dcfnet, ops  # noqa: E402
from dcfnet_jax.train_state import ModelSpec, TrainState, split_model  # noqa: E402

# XLA:CPU library-fusion lists (compiler options take enum names, not XLA_FLAGS' +/- syntax).
# The package's own value is xla_flags.YNN_WITHOUT_CONVOLUTIONS (jaxlib's default minus the
# convolutions).
_YNN = xla_flags.YNN_FLAG_NAME
_DOT, _REDUCE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE"


@dataclasses.dataclass(frozen=True)
class JaxVariant:
  """One JAX formulation: model options, step options and XLA compiler options."""
  tricks: frozenset = ops.DEFAULT_FAST_TRICKS  # the model's CPU formulations (`fast=`)
  compiler_options: tuple = ()  # on top of the package's own option
  devices: int = 1
  fold_bn: bool = False
  fast_infer: bool = False  # inference by the raw model with its CPU formulations
  bf16: bool = False  # bfloat16 compute, float32 parameters (config.half_precision)
  note: str = ""


JAX_VARIANTS: dict[str, JaxVariant] = {
    "jax": JaxVariant(note="the package default (fast formulations; predictor for inference)"),
    "jax-plain": JaxVariant(tricks=frozenset(), note="plain formulations"),
    "jax-conv1x1": JaxVariant(tricks=ops.DEFAULT_FAST_TRICKS | {"conv1x1"},
                              note="+ 1x1 convolutions as dot_general (weight gradient a GEMM)"),
    "jax-wgrad-square": JaxVariant(tricks=ops.DEFAULT_FAST_TRICKS | {"conv_wgrad_square"},
                                   note="+ swapped kernel gradient also for square 3x3 convs"),
    "jax-resize": JaxVariant(tricks=ops.DEFAULT_FAST_TRICKS | {"resize"},
                             note="+ align-corners resize by interpolation matrices"),
    "jax-fold": JaxVariant(fold_bn=True, note="inference: BatchNorm folded into the convs"),
    "jax-fast-infer": JaxVariant(fast_infer=True,
                                 note="inference by the raw model with the CPU formulations"),
    "jax-bf16": JaxVariant(bf16=True, note="bfloat16 compute (opt-in; not the fp32 numerics)"),
    "jax-ynn-conv": JaxVariant(
        compiler_options=((_YNN, xla_flags.YNN_DEFAULT),),
        note="jaxlib's default YNNPACK list (convolutions in YNNPACK: no package option)"),
    "jax-ynn-dot-only": JaxVariant(compiler_options=((_YNN, _DOT),),
                                   note="reductions by XLA's own emitter instead of YNNPACK"),
    "jax-ynn-eltwise": JaxVariant(
        compiler_options=((_YNN, f"{_DOT},{_REDUCE},LIBRARY_FUSION_TYPE_ELTWISE"),),
        note="YNNPACK also for elementwise fusions"),
    "jax-ynn-dot-fusion": JaxVariant(
        compiler_options=((_YNN, f"LIBRARY_FUSION_TYPE_DOT,{_REDUCE}"),),
        note="YNNPACK dot fusions (dots with their elementwise neighbours) instead of single dots"),
    "jax-no-ynn": JaxVariant(compiler_options=((_YNN, ""),),
                             note="no YNNPACK: dots in Eigen, reductions by XLA"),
    "jax-onednn-dot": JaxVariant(
        compiler_options=((_YNN, ""), ("xla_cpu_use_onednn", True),
                          ("xla_cpu_experimental_onednn_fusion_type", "LIBRARY_FUSION_TYPE_DOT")),
        note="no YNNPACK, dots (the 1x1 convs) through XLA's oneDNN fusion"),
    "jax-vec512": JaxVariant(compiler_options=(("xla_cpu_prefer_vector_width", 512),),
                             note="LLVM prefers 512-bit vectors (AVX-512 machines)"),
    "jax-fusion-emitters-off": JaxVariant(
        compiler_options=(("xla_cpu_use_fusion_emitters", False),),
        note="XLA:CPU's older loop/transpose emitters instead of its fusion emitters"),
    "jax-fusion-emitters-on": JaxVariant(
        compiler_options=(("xla_cpu_use_fusion_emitters", True),),
        note="XLA:CPU's fusion emitters forced on"),
    "jax-sched-concurrency": JaxVariant(
        compiler_options=(("xla_cpu_enable_concurrency_optimized_scheduler", True),),
        note="the scheduler that favours concurrent thunks"),
    "jax-sched-memory": JaxVariant(
        compiler_options=(("xla_cpu_enable_concurrency_optimized_scheduler", False),),
        note="the memory-optimising scheduler"),
    "jax-tiling-propagation": JaxVariant(
        compiler_options=(("xla_cpu_experimental_enable_tiling_propagation", True),),
        note="experimental tiling propagation"),
    "jax-1t": JaxVariant(compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                         note="Eigen single-threaded (per-compile option)"),
    "jax-dp2": JaxVariant(devices=2, compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                          note="batch split over 2 host devices, Eigen single-threaded"),
    "jax-dp2-mt": JaxVariant(devices=2, note="batch split over 2 host devices, Eigen threads"),
    "jax-plain-dp2": JaxVariant(tricks=frozenset(), devices=2,
                                compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                                note="plain formulations, 2 devices, Eigen single-threaded"),
}
TORCH_VARIANTS = ("torch", "torch-compile", "torch-cl", "torch-compile-cl", "torch-amp")


def compiler_options(v: JaxVariant) -> dict[str, Any] | None:
  """The package's XLA:CPU option, updated by the variant's."""
  options = dict(xla_flags.compiler_options("cpu") or {})
  options.update(dict(v.compiler_options))
  return options or None


def fingerprint(compiled) -> str:
  """A short hash of the compiled program (metadata left out): equal hashes, same program."""
  text = re.sub(r"metadata=\{[^}]*\}|stack_frame_id=\d+", "", compiled.as_text())
  return hashlib.md5(text.encode()).hexdigest()[:10]


def build_jax(v: JaxVariant, mode: str, batch: dict[str, np.ndarray], bands: int
              ) -> tuple[Callable[[], Any], str]:
  """(a zero-argument callable running one compiled step of variant `v`, the program's hash)."""
  model = dcfnet.DCFNet(bands, rngs=nnx.Rngs(0), fast=v.tricks,
                        dtype=jnp.bfloat16 if v.bf16 else jnp.float32)
  devices = jax.devices()[:v.devices]
  if len(devices) < v.devices:
    raise RuntimeError(f"{v.devices} devices needed, {len(devices)} present")
  mesh = sharding.make_mesh(devices)
  rep, split = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  dbatch = sharding.to_global_batch(batch, mesh)
  opts = compiler_options(v)
  model.train()
  train_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  params, model_state = jax.device_put(split_model(model), rep)
  if mode == "train":
    spec = ModelSpec("dcfnet", train_graphdef, eval_graphdef, True, "mse", 0)
    tx = optax.adam(1e-4)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                       model_state=model_state, opt_state=jax.device_put(tx.init(params), rep))
    jitted = jax.jit(functools.partial(steps.train_step, spec=spec, tx=tx,
                                       schedule=optax.constant_schedule(1e-4)),
                     in_shardings=(rep, split), out_shardings=(rep, rep), donate_argnums=(0,),
                     compiler_options=opts)
    compiled = jitted.lower(state, dbatch).compile()
    carry = [state]

    def call():
      carry[0], metrics = compiled(carry[0], dbatch)
      return metrics["loss"]
    return call, fingerprint(compiled)
  args = (params, model_state, dbatch["pan"], dbatch["lms"], dbatch["ms"])
  if v.fast_infer:  # the raw eval-mode model with its CPU formulations
    def infer(params, model_state, pan, lms, ms):
      net = nnx.merge(eval_graphdef, params, model_state)
      return net(pan, lms, dcfnet.make_mms(ms, fast=v.tricks), ms).astype(jnp.float32) + lms
  else:  # what the predictor runs
    infer = functools.partial(inference.predict_dn, graphdef=eval_graphdef, residual=True,
                              clip=False, img_range=1.0, fold=v.fold_bn)
  jitted = jax.jit(infer, in_shardings=(rep, rep, split, split, split), out_shardings=split,
                   compiler_options=opts)
  compiled = jitted.lower(*args).compile()
  return (lambda: compiled(*args)), fingerprint(compiled)


def build_torch(name: str, mode: str, batch: dict[str, np.ndarray], bands: int
                ) -> Callable[[], Any]:
  torch, torch_ref = frameworks.import_torch()
  torch.manual_seed(0)
  model = torch_ref.DCFNetTorch(bands)
  fmt = torch.channels_last if name.endswith("-cl") else torch.contiguous_format
  model = model.to(memory_format=fmt)
  tb = {k: x.contiguous(memory_format=fmt)
        for k, x in frameworks.to_torch_batch(batch, "cpu").items()}
  net = torch.compile(model) if "compile" in name else model
  amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if name.endswith("-amp") else (
      contextlib.nullcontext)
  if mode == "train":
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
      opt.zero_grad(set_to_none=True)
      ms = tb["ms"]
      with amp():
        out = net(tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms)
      loss = torch.mean(torch.square(out.float() + tb["lms"] - tb["gt"]))
      loss.backward()
      opt.step()
      return loss
    return step
  model.eval()

  def infer():
    with torch.inference_mode(), amp():
      ms = tb["ms"]
      return net(tb["pan"], tb["lms"], torch_ref.make_mms_torch(ms), ms).float() + tb["lms"]
  return infer


def _sync(out):
  if isinstance(out, jax.Array):
    out.block_until_ready()


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--mode", choices=("train", "infer"), default="infer")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--bands", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--variants", default="jax,torch")
  p.add_argument("--reference", default="", help="variant the ratios divide by (default: first)")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  p.add_argument("--one-core", action="store_true",
                 help="pin the process to one core (env BENCH_CORE, default the last), torch 1 "
                 "thread, Eigen single-threaded: CPU time then measures the work of a step, "
                 "comparable under load")
  p.add_argument("--json", default="")
  p.add_argument("--list", action="store_true")
  a = p.parse_args(argv)
  if a.list:
    for k, v in JAX_VARIANTS.items():
      print(f"{k:28s} {v.note}")
    print("torch variants:", ", ".join(TORCH_VARIANTS))
    return {}
  names = [n for n in a.variants.split(",") if n]
  ref = a.reference or names[0]
  batch = measure.make_batch(measure.BenchSettings(batch_size=a.batch, size=a.size,
                                                   bands=a.bands))
  if any(n.startswith("torch") for n in names):
    torch, _ = frameworks.import_torch()
    torch.set_num_threads(1 if a.one_core else (a.threads or os.cpu_count()))
  calls, build_s, programs = {}, {}, {}
  for n in names:
    t0, c0 = time.perf_counter(), time.process_time()
    if n in JAX_VARIANTS:
      calls[n], programs[n] = build_jax(JAX_VARIANTS[n], a.mode, batch, a.bands)
    elif n in TORCH_VARIANTS:
      calls[n] = build_torch(n, a.mode, batch, a.bands)
    else:
      raise SystemExit(f"unknown variant {n!r}; --list shows them")
    for _ in range(a.warmup):
      _sync(calls[n]())
    build_s[n] = (time.perf_counter() - t0, time.process_time() - c0)
    print(f"# built {n}: {build_s[n][0]:.1f} s wall, {build_s[n][1]:.1f} s CPU"
          f"{', program ' + programs[n] if n in programs else ''}", file=sys.stderr, flush=True)
  wall = {n: [] for n in names}
  cpu = {n: [] for n in names}
  load = []
  for r in range(a.rounds):
    load.append(os.getloadavg()[0])
    for n in names:
      t0, c0 = time.perf_counter(), time.process_time()
      _sync(calls[n]())
      wall[n].append(time.perf_counter() - t0)
      cpu[n].append(time.process_time() - c0)
    print(f"# round {r + 1}/{a.rounds}: " + " ".join(f"{n}={wall[n][-1]:.2f}s" for n in names)
          + f" load {load[-1]:.1f}", file=sys.stderr, flush=True)
  med = statistics.median
  print(f"mode {a.mode}, batch {a.batch}, {a.size}x{a.size}, {a.bands} bands; {a.rounds} rounds; "
        f"load average {min(load):.1f}-{max(load):.1f}; {os.cpu_count()} CPUs"
        f"{' (one core, one thread)' if a.one_core else ''}; "
        f"jax {jax.__version__}")
  print("| variant | wall s (median) | CPU s (median) | wall / ref (paired median) | "
        "CPU / ref (paired median) | program |")
  print("|---|---|---|---|---|---|")
  rows = {}
  for n in names:
    rw = med([w / x for w, x in zip(wall[n], wall[ref])])
    rc = med([c / x for c, x in zip(cpu[n], cpu[ref])])
    rows[n] = dict(wall=wall[n], cpu=cpu[n], wall_ratio=rw, cpu_ratio=rc, build=build_s[n],
                   program=programs.get(n))
    print(f"| {n} | {med(wall[n]):.3f} | {med(cpu[n]):.3f} | {rw:.3f} | {rc:.3f} | "
          f"{programs.get(n, '')} |")
  report = dict(args=vars(a), load=load, results=rows)
  if a.json:
    files.write_json(a.json, report, indent=1)
  return report


if __name__ == "__main__":
  main()
