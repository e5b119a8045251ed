"""CPU training-step speed of DCFNet: plain JAX vs the CPU-fast formulation vs PyTorch eager.

Times one optimiser step (forward, MSE loss on output + lms, backward, Adam) on random 64x64
patches with 8 bands, at batch 4 and 32. JAX steps are jitted (compile time reported apart)
and timed in steady state (median, ending in `jax.block_until_ready`); the torch step is eager.
Each variant runs in its own process, because the XLA flag is process-wide:

  plain-noflag  plain formulation, XLA_FLAGS without the YNNPACK opt-out (a naive port)
  plain         plain formulation + the opt-out flag (what `dcfnet_jax.configure_xla_cpu()` sets)
  fast          CPU-fast formulation (fast=True) + the flag
  torch         PyTorch eager, same architecture, fp32, default thread count

Usage:
  python benchmarks/bench_cpu_train_step.py                      # everything
  python benchmarks/bench_cpu_train_step.py --batch_sizes=4 --variants=plain,fast --steps=5
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

VARIANTS = ("plain-noflag", "plain", "fast", "torch")


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_sizes", default="4,32")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--steps", type=int, default=5, help="timed steps per (variant, batch)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--num_bands", type=int, default=8)
  parser.add_argument("--size", type=int, default=64, help="patch height and width")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
  parser.add_argument("--tricks", default="",
                      help="'+'-joined CPU formulations for the fast variant (default: the "
                      "package default; see dcfnet_jax.models.ops.ALL_FAST_TRICKS)")
  parser.add_argument("--one_core", action="store_true",
                      help="pin each worker to one core with one compute thread (taskset, "
                      "--xla_cpu_multi_thread_eigen=false, torch.set_num_threads(1)): the CPU "
                      "work of a step, comparable across variants even on a busy machine")
  parser.add_argument("--json_out", default="", help="also write the results as JSON here")
  return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Workers (run in a subprocess each).

def _random_batch(batch: int, size: int, bands: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  f32 = np.float32
  return dict(pan=rng.random((batch, size, size, 1), f32),
              lms=rng.random((batch, size, size, bands), f32),
              ms=rng.random((batch, size // 4, size // 4, bands), f32),
              gt=rng.random((batch, size, size, bands), f32))


def _jax_worker(args) -> dict:
  if args.worker == "plain-noflag":
    os.environ["DCFNET_JAX_NO_XLA_FLAGS"] = "1"
  import dcfnet_jax  # pylint: disable=g-import-not-at-top
  flag_status = dcfnet_jax.configure_xla_cpu()  # before JAX starts (opted out: plain-noflag)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from dcfnet_jax.models import ops  # pylint: disable=g-import-not-at-top
  from dcfnet_jax.models.dcfnet import DCFNet, make_mms  # pylint: disable=g-import-not-at-top

  fast = args.worker == "fast"
  if fast and args.tricks:
    unknown = set(args.tricks.split("+")) - ops.ALL_FAST_TRICKS
    if unknown:
      raise SystemExit(f"unknown --tricks {sorted(unknown)}")
    fast = frozenset(args.tricks.split("+"))
  model = DCFNet(args.num_bands, rngs=nnx.Rngs(0), fast=fast)
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def train_step(params, batch_stats, opt_state, batch):
    mms = make_mms(batch["ms"], fast=fast)

    def loss_fn(p):
      net = nnx.merge(graphdef, p, batch_stats, copy=True)
      out = net(batch["pan"], batch["lms"], mms, batch["ms"])
      loss = jnp.mean(jnp.square(out + batch["lms"] - batch["gt"]))
      return loss, nnx.state(net, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  batch = {k: jnp.asarray(v) for k, v in
           _random_batch(args.batch, args.size, args.num_bands).items()}
  t0, cpu0 = time.perf_counter(), time.process_time()
  compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(
      params, batch_stats, opt_state, batch).compile()
  compile_s = time.perf_counter() - t0
  compile_cpu_s = time.process_time() - cpu0
  state = (params, batch_stats, opt_state)
  times, cpu_times = [], []
  for i in range(args.warmup + args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    *state, loss = compiled(*state, batch)
    jax.block_until_ready((state, loss))
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
  return dict(compile_s=compile_s, compile_cpu_s=compile_cpu_s, step_s=statistics.median(times),
              cpu_s=statistics.median(cpu_times), times=times,
              tricks=sorted(ops.resolve_fast(fast)),
              loss=float(loss), xla_flags=os.environ.get("XLA_FLAGS", ""),
              flag_status=flag_status,
              versions=f"jax {jax.__version__}", threads=None)


def _torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if args.one_core:
    torch.set_num_threads(1)

  net_cls = _torch_model_class()
  torch.manual_seed(0)
  net = net_cls(args.num_bands)
  net.train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  batch = {k: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous()
           for k, v in _random_batch(args.batch, args.size, args.num_bands).items()}
  times, cpu_times = [], []
  for i in range(args.warmup + args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    mms = F.interpolate(batch["ms"], scale_factor=2, mode="bilinear", align_corners=True)
    out = net(batch["pan"], batch["lms"], mms, batch["ms"])
    loss = F.mse_loss(out + batch["lms"], batch["gt"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
  return dict(compile_s=0.0, compile_cpu_s=0.0, step_s=statistics.median(times),
              cpu_s=statistics.median(cpu_times), times=times, loss=float(loss),
              versions=f"torch {torch.__version__}", threads=torch.get_num_threads(),
              model=net_cls.__module__ + "." + net_cls.__name__)


def _torch_model_class():
  """The project's PyTorch reference if present, else the throwaway copy below."""
  try:
    from dcfnet_jax import torch_ref  # pylint: disable=g-import-not-at-top
    for name in ("DCFNetTorch", "DCFNet"):
      if hasattr(torch_ref, name):
        return getattr(torch_ref, name)
  except ImportError:
    pass
  return _throwaway_torch_dcfnet()


def _throwaway_torch_dcfnet():
  """dcfnet_jax.models.dcfnet's architecture (docs/dcfnet_architecture.md), NCHW, for timing."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def up(x, ref):
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=True)

  def norm(w):
    w = F.relu(w)
    return w / (w.sum(0, keepdim=True) + 1e-4)

  def cb(i, o, k=3, s=1, relu=True):
    layers = [nn.Conv2d(i, o, k, s, (k - 1) // 2, bias=False), nn.BatchNorm2d(o, momentum=0.01)]
    return nn.Sequential(*(layers + [nn.ReLU()] if relu else layers))

  class Basic(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.a, self.b = cb(c, c), cb(c, c, relu=False)

    def forward(self, x):
      return F.relu(self.b(self.a(x)) + x)

  class Bottle(nn.Module):
    def __init__(self, i, down):
      super().__init__()
      self.body = nn.Sequential(cb(i, 64, 1), cb(64, 64), cb(64, 256, 1, relu=False))
      self.down = cb(i, 256, 1, relu=False) if down else None

    def forward(self, x):
      return F.relu(self.body(x) + (x if self.down is None else self.down(x)))

  class CFB(nn.Module):
    def __init__(self, c, bands):
      super().__init__()
      self.rs_w = nn.Parameter(torch.ones(2))
      self.conv_up = nn.Conv2d(bands, c, 3, 1, 1, bias=False)
      self.block = Basic(c)

    def forward(self, a, m):
      w = norm(self.rs_w)
      return self.block(F.relu(w[0] * a + w[1] * self.conv_up(m)))

  class HR(nn.Module):
    def __init__(self, chans, bands, grow):
      super().__init__()
      nb = len(chans)
      self.nb = nb
      self.fcc_w = nn.Parameter(torch.ones(nb + 1, nb + 1))
      self.branches = nn.ModuleList(nn.Sequential(*[Basic(c) for _ in range(3)]) for c in chans)
      fuse = []
      for i in range(nb):
        row = []
        for j in range(nb):
          if j > i:
            row.append(cb(chans[j], chans[i], 1, relu=False))
          elif j == i:
            row.append(nn.Identity())
          else:
            steps = [cb(chans[j], chans[j], s=2) for _ in range(i - j - 1)]
            row.append(nn.Sequential(*steps, cb(chans[j], chans[i], s=2, relu=False)))
        fuse.append(nn.ModuleList(row))
      self.fuse = nn.ModuleList(fuse)
      self.grow = grow
      if grow:
        self.rs_w = nn.Parameter(torch.ones(2))
        self.b0_in_down, self.b1_down = cb(32, 64, s=2), cb(64, 128, s=2)
        self.b1_in_down = cb(64, 128, s=2)
        self.b2_conv_out = cb(128, 128, s=2, relu=False)
        self.cfs = CFB(128, bands)

    def forward(self, xs, ms):
      xs = [b(x) for b, x in zip(self.branches, xs)]
      w = norm(self.fcc_w)
      ys = []
      for i in range(self.nb):
        acc = 0
        for j in range(self.nb):
          t = self.fuse[i][j](xs[j])
          if j > i:
            t = up(t, xs[i])
          acc = acc + w[i, j] * t
        ys.append(F.relu(acc))
      if self.grow:
        v = norm(self.rs_w)
        u = self.cfs(self.b1_down(xs[1] + self.b0_in_down(xs[0])), ms)
        ys.append(v[0] * self.b1_in_down(xs[1]) + v[1] * u)
      return ys

  class Net(nn.Module):
    def __init__(self, bands):
      super().__init__()
      self.stem = nn.Sequential(cb(bands + 1, 64), cb(64, 64))
      self.layer1 = nn.Sequential(Bottle(64, True), *[Bottle(256, False) for _ in range(3)])
      self.t0 = cb(256, 32)
      self.t1 = cb(256, 64, s=2)
      self.t1_cfb = CFB(64, bands)
      self.stage2 = HR([32, 64], bands, True)
      self.stage3 = HR([32, 64, 128], bands, False)
      self.head = nn.Sequential(nn.Conv2d(224, 224, 1), nn.BatchNorm2d(224, momentum=0.01),
                                nn.ReLU(), nn.Conv2d(224, bands, 1))

    def forward(self, pan, lms, mms, ms):
      x = self.layer1(self.stem(torch.cat([pan, lms], 1)))
      xs = [self.t0(x), self.t1_cfb(self.t1(x), mms)]
      xs = self.stage3(self.stage2(xs, ms), ms)
      return self.head(torch.cat([xs[0], up(xs[1], xs[0]), up(xs[2], xs[0])], 1))

  return Net


# ---------------------------------------------------------------------------------------------
# Driver.

def _run_worker(variant: str, batch: int, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={variant}", f"--batch={batch}",
         f"--tricks={args.tricks}", f"--steps={args.steps}", f"--warmup={args.warmup}",
         f"--num_bands={args.num_bands}", f"--size={args.size}"]
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  if args.one_core:
    cmd = ["taskset", "-c", "0"] + cmd + ["--one_core"]
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if proc.returncode != 0:
    return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = _parse_args(argv)
  if args.worker:
    result = _torch_worker(args) if args.worker == "torch" else _jax_worker(args)
    print(json.dumps(result))
    return
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise SystemExit(f"unknown --variants {unknown}; expected some of {', '.join(VARIANTS)}")
  batches = [int(b) for b in args.batch_sizes.split(",") if b]
  print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
        f", python {platform.python_version()}", flush=True)
  print(f"# {args.size}x{args.size}, {args.num_bands} bands, {args.steps} timed steps "
        f"(median) after {args.warmup} warm-up step(s)"
        + (", one core / one thread per worker" if args.one_core else ""), flush=True)
  print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
  print("| variant | batch | step wall (s) | step CPU (s) | compile wall (s) | compile CPU (s) "
        "| samples/s | notes |", flush=True)
  print("|---|---|---|---|---|---|---|---|", flush=True)
  results = []
  for batch in batches:
    for variant in variants:
      r = _run_worker(variant, batch, args)
      r.update(variant=variant, batch=batch)
      results.append(r)
      if "error" in r:
        print(f"| {variant} | {batch} | - | - | - | - | - | error: {r['error']} |", flush=True)
        continue
      notes = r.get("versions", "")
      if r.get("threads"):
        notes += f", {r['threads']} threads"
      if r.get("model"):
        notes += f", {r['model']}"
      if r.get("tricks"):
        notes += ", tricks " + "+".join(r["tricks"])
      notes += f", load {os.getloadavg()[0]:.1f}"
      compile_s = f"{r['compile_s']:.1f}" if variant != "torch" else "-"
      compile_cpu = f"{r['compile_cpu_s']:.1f}" if variant != "torch" else "-"
      print(f"| {variant} | {batch} | {r['step_s']:.3f} | {r['cpu_s']:.3f} | {compile_s} | "
            f"{compile_cpu} | {batch / r['step_s']:.1f} | {notes} |", flush=True)
  if args.json_out:
    tmp = args.json_out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=1)
    os.replace(tmp, args.json_out)


if __name__ == "__main__":
  main()
