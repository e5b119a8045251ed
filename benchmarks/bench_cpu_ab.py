"""A/B speed of CPU formulations of DCFNet, interleaved in ONE process (robust on a busy machine).

Every variant (JAX formulations, XLA compiler options, PyTorch eager / torch.compile) is built
and compiled first; then `--rounds` rounds time one step of every variant in turn, so that all
variants see the same machine load. Each step records wall time and process CPU time
(`time.process_time`, all threads). Reported: medians, and the median over rounds of each
variant's time divided by the reference variant's time in the same round (paired ratios).

XLA options are passed per compilation (`jax.jit(..., compiler_options=...)`), so variants with
different XLA:CPU settings share the process. Process-wide settings (the number of fake host
devices, for the data-parallel variants) come from XLA_FLAGS, set below before JAX starts.

  python benchmarks/bench_cpu_ab.py --mode infer --batch 32 --rounds 5 \
      --variants jax,jax-fold,torch,torch-compile --reference torch
  python benchmarks/bench_cpu_ab.py --list        # the variants

CPU time is the fairer measure under load only for single-threaded variants; a 2-thread
variant's CPU time includes spin-waiting of its thread pool, so quote both.
"""

import argparse
import contextlib
import dataclasses
import json
import os
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

import dcfnet_jax  # noqa: E402,F401  (sets the XLA:CPU convolution flag before JAX starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from dcfnet_jax import sharding  # noqa: E402
from dcfnet_jax.models import dcfnet, folding, layers  # noqa: E402

# XLA:CPU library-fusion lists (compiler options take enum names, not XLA_FLAGS' +/- syntax).
# jaxlib 0.10.2's default YNNPACK list is INDIVIDUAL_DOT, REDUCE and INDIVIDUAL_CONVOLUTION; the
# package's XLA_FLAGS removes the convolutions (YNN_NO_CONV).
YNN_NO_CONV = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
_YNN = "xla_cpu_experimental_ynn_fusion_type"
_ONE_THREAD = ("xla_cpu_multi_thread_eigen", False)


@dataclasses.dataclass(frozen=True)
class JaxVariant:
  """One JAX formulation: model options, step options and XLA compiler options."""
  tricks: frozenset | None = layers.DEFAULT_FAST_TRICKS  # None: plain (fast=False)
  compiler_options: tuple = ()
  devices: int = 1
  fold_bn: bool = False
  bf16: bool = False  # bfloat16 compute, float32 parameters (config.half_precision)
  note: str = ""


JAX_VARIANTS: dict[str, JaxVariant] = {
    "jax": JaxVariant(note="the package default (fast formulations, flag via XLA_FLAGS)"),
    "jax-plain": JaxVariant(tricks=None, note="plain formulations"),
    "jax-conv1x1": JaxVariant(tricks=layers.DEFAULT_FAST_TRICKS | {"conv1x1"},
                              note="+ 1x1 convolutions as dot_general (weight gradient a GEMM)"),
    "jax-resize": JaxVariant(tricks=layers.DEFAULT_FAST_TRICKS | {"resize"},
                             note="+ align-corners resize by interpolation matrices"),
    "jax-fold": JaxVariant(fold_bn=True, note="inference: BatchNorm folded into the convs"),
    "jax-bf16": JaxVariant(bf16=True, note="bfloat16 compute (opt-in; not the fp32 numerics)"),
    "jax-plain-fold": JaxVariant(tricks=None, fold_bn=True, note="plain + folded BatchNorm"),
    "jax-ynn-dot-only": JaxVariant(compiler_options=((_YNN, "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),),
                                   note="reductions by XLA's own emitter instead of YNNPACK"),
    "jax-ynn-eltwise": JaxVariant(
        compiler_options=((_YNN, YNN_NO_CONV + ",LIBRARY_FUSION_TYPE_ELTWISE"),),
        note="YNNPACK also for elementwise fusions"),
    "jax-ynn-dot-fusion": JaxVariant(
        compiler_options=((_YNN, "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"),),
        note="YNNPACK dot fusions (dots with their elementwise neighbours) instead of single dots"),
    "jax-no-ynn": JaxVariant(compiler_options=((_YNN, ""),),
                             note="no YNNPACK: dots in Eigen, reductions by XLA"),
    "jax-onednn-dot": JaxVariant(
        compiler_options=((_YNN, ""), ("xla_cpu_use_onednn", True),
                          ("xla_cpu_experimental_onednn_fusion_type", "LIBRARY_FUSION_TYPE_DOT")),
        note="no YNNPACK, dots (the 1x1 convs) through XLA's oneDNN fusion"),
    "jax-1t": JaxVariant(compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                         note="Eigen single-threaded (per-compile option)"),
    "jax-dp2": JaxVariant(devices=2, compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                          note="batch split over 2 host devices, Eigen single-threaded"),
    "jax-dp2-mt": JaxVariant(devices=2, note="batch split over 2 host devices, Eigen threads"),
    "jax-plain-dp2": JaxVariant(tricks=None, devices=2,
                                compiler_options=(("xla_cpu_multi_thread_eigen", False),),
                                note="plain formulations, 2 devices, Eigen single-threaded"),
    "jax-plain-fold-dp2": JaxVariant(
        tricks=None, fold_bn=True, devices=2,
        compiler_options=(("xla_cpu_multi_thread_eigen", False),),
        note="plain, folded BatchNorm, 2 devices, Eigen single-threaded"),
}
TORCH_VARIANTS = ("torch", "torch-compile", "torch-cl", "torch-compile-cl", "torch-amp")


def _random_batch(n: int, size: int, bands: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"pan": rng.random((n, size, size, 1), np.float32),
          "lms": rng.random((n, size, size, bands), np.float32),
          "ms": rng.random((n, size // 4, size // 4, bands), np.float32),
          "gt": rng.random((n, size, size, bands), np.float32)}


def _with_tricks(tricks, fn):
  """Runs fn() with layers.FAST_TRICKS set to `tricks` (trace-time knob), then restores it."""
  saved = set(layers.FAST_TRICKS)
  if tricks is not None:
    layers.FAST_TRICKS.clear()
    layers.FAST_TRICKS.update(tricks)
  try:
    return fn()
  finally:
    layers.FAST_TRICKS.clear()
    layers.FAST_TRICKS.update(saved)


def build_jax(v: JaxVariant, mode: str, batch: dict[str, np.ndarray], bands: int
              ) -> Callable[[], Any]:
  """A zero-argument callable running one compiled step of variant `v` (returns its output)."""
  fast = v.tricks is not None
  model = dcfnet.DCFNet(bands, rngs=nnx.Rngs(0), fast=fast,
                        dtype=jnp.bfloat16 if v.bf16 else jnp.float32)
  devices = jax.devices()[:v.devices]
  if len(devices) < v.devices:
    raise RuntimeError(f"{v.devices} devices needed, {len(devices)} present")
  mesh = sharding.make_mesh(devices)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  dbatch = {k: jax.device_put(x, split) for k, x in batch.items()}
  opts = dict(v.compiler_options)
  if mode == "train":
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-4)

    def step(params, rest, opt_state, b):
      def loss_fn(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        out = m(b["pan"], b["lms"], dcfnet.make_mms(b["ms"], fast=fast), b["ms"])
        out = out.astype(jnp.float32)
        return jnp.mean(jnp.square(out + b["lms"] - b["gt"])), nnx.state(m, nnx.Not(nnx.Param))
      (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_rest, opt_state, loss

    carry = jax.device_put([params, rest, tx.init(params)], rep)
    jitted = jax.jit(step, donate_argnums=(0, 1, 2), in_shardings=(rep, rep, rep, split),
                     out_shardings=(rep, rep, rep, rep), compiler_options=opts or None)
    compiled = _with_tricks(v.tricks, lambda: jitted.lower(*carry, dbatch).compile())

    def call():
      carry[0], carry[1], carry[2], loss = compiled(*carry, dbatch)
      return loss
    return call
  model.eval()
  if v.fold_bn:
    folded = folding.fold_batchnorm(model)
    graphdef, state = nnx.split(folded)
  else:
    graphdef, state = nnx.split(model)
  state = jax.device_put(state, rep)

  def infer(state, b):
    m = nnx.merge(graphdef, state)
    out = m(b["pan"], b["lms"], dcfnet.make_mms(b["ms"], fast=fast), b["ms"])
    return out.astype(jnp.float32) + b["lms"]

  jitted = jax.jit(infer, in_shardings=(rep, split), out_shardings=split,
                   compiler_options=opts or None)
  compiled = _with_tricks(v.tricks, lambda: jitted.lower(state, dbatch).compile())
  return lambda: compiled(state, dbatch)


def build_torch(name: str, mode: str, batch: dict[str, np.ndarray], bands: int
                ) -> Callable[[], Any]:
  import torch  # pylint: disable=g-import-not-at-top
  from dcfnet_jax import torch_ref  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_ref.DCFNetTorch(bands)
  fmt = torch.channels_last if name.endswith("-cl") else torch.contiguous_format
  model = model.to(memory_format=fmt)
  tb = {k: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
      memory_format=fmt) for k, x in batch.items()}
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
  batch = _random_batch(a.batch, a.size, a.bands)
  if any(n.startswith("torch") for n in names):
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1 if a.one_core else (a.threads or os.cpu_count()))
  calls, build_s = {}, {}
  for n in names:
    t0, c0 = time.perf_counter(), time.process_time()
    if n in JAX_VARIANTS:
      calls[n] = build_jax(JAX_VARIANTS[n], a.mode, batch, a.bands)
    elif n in TORCH_VARIANTS:
      calls[n] = build_torch(n, a.mode, batch, a.bands)
    else:
      raise SystemExit(f"unknown variant {n!r}; --list shows them")
    for _ in range(a.warmup):
      _sync(calls[n]())
    build_s[n] = (time.perf_counter() - t0, time.process_time() - c0)
    print(f"# built {n}: {build_s[n][0]:.1f} s wall, {build_s[n][1]:.1f} s CPU", file=sys.stderr,
          flush=True)
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
        "CPU / ref (paired median) |")
  print("|---|---|---|---|---|")
  rows = {}
  for n in names:
    rw = med([w / x for w, x in zip(wall[n], wall[ref])])
    rc = med([c / x for c, x in zip(cpu[n], cpu[ref])])
    rows[n] = dict(wall=wall[n], cpu=cpu[n], wall_ratio=rw, cpu_ratio=rc, build=build_s[n])
    print(f"| {n} | {med(wall[n]):.3f} | {med(cpu[n]):.3f} | {rw:.3f} | {rc:.3f} |")
  report = dict(args=vars(a), load=load, results=rows)
  if a.json:
    with open(a.json, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
