"""DCFNet's inference convolutions one by one: XLA:CPU vs PyTorch (oneDNN), same shapes.

Collects every `conv_general_dilated` of the eval-mode forward (batch 32, 64x64, 8 bands) from
its jaxpr, then times each distinct shape alone, jitted in JAX (NHWC) and in torch with
channels-last and with NCHW tensors (median of 3 after one warm-up), and prints the largest
ones and the totals weighted by how often each shape occurs. It says how much of the gap
between the JAX and the PyTorch forward passes is in the convolution kernels themselves.

Usage: python benchmarks/bench_conv_kernels.py [--batch 32] [--bands 8]
"""

import argparse
import collections
import statistics
import time

import dcfnet_jax

dcfnet_jax.configure_xla_cpu()  # before JAX computes anything

import jax  # noqa: E402
import jax.numpy as jnp
import torch
from flax import nnx

from dcfnet_jax.models.dcfnet import DCFNet, make_mms


def conv_shapes(model, inputs) -> collections.Counter:
  """(input shape, kernel shape, stride) -> count, over the whole jaxpr (nested included)."""
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(*inputs))(state)
  found = collections.Counter()

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        found[(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
               eqn.params["window_strides"][0])] += 1
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else [value]:
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            walk(getattr(inner, "jaxpr", inner))

  walk(jaxpr.jaxpr)
  return found


def median_time(fn, reps: int = 3) -> float:
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--bands", type=int, default=8)
  args = parser.parse_args()
  torch.set_num_threads(torch.get_num_threads())
  n, c = args.batch, args.bands
  keys = jax.random.split(jax.random.key(0), 3)
  ms = jax.random.uniform(keys[2], (n, 16, 16, c))
  inputs = (jax.random.uniform(keys[0], (n, 64, 64, 1)), jax.random.uniform(keys[1], (n, 64, 64, c)),
            make_mms(ms), ms)
  model = DCFNet(c, rngs=nnx.Rngs(0))
  model.eval()
  shapes = conv_shapes(model, inputs)
  rows, totals = [], [0.0, 0.0, 0.0]
  for (lhs, rhs, stride), count in shapes.items():
    kh, _, cin, cout = rhs
    pad = kh // 2
    x, w = jnp.ones(lhs, jnp.float32), jnp.full(rhs, 0.01, jnp.float32)
    conv = jax.jit(lambda x, w, s=stride, p=pad: jax.lax.conv_general_dilated(
        x, w, (s, s), [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC")))
    t_xla = median_time(lambda: conv(x, w).block_until_ready())
    layer = torch.nn.Conv2d(cin, cout, kh, stride=stride, padding=pad, bias=False)
    x_nchw = torch.ones(lhs[0], lhs[3], lhs[1], lhs[2])
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    layer_cl = torch.nn.Conv2d(cin, cout, kh, stride=stride, padding=pad, bias=False).to(
        memory_format=torch.channels_last)
    with torch.no_grad():
      t_cl = median_time(lambda: layer_cl(x_cl))
      t_nchw = median_time(lambda: layer(x_nchw))
    times = (t_xla * count, t_cl * count, t_nchw * count)
    totals = [a + b for a, b in zip(totals, times)]
    rows.append((times, lhs, rhs, stride, count))
  rows.sort(key=lambda r: -r[0][0])
  print(f"batch {n}, 64x64, {c} bands: {sum(shapes.values())} convolutions, {len(shapes)} shapes; "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
  print("| input NHWC | kernel HWIO | stride | count | XLA ms | torch channels-last ms | torch NCHW ms |")
  print("|---|---|---|---|---|---|---|")
  for (t_xla, t_cl, t_nchw), lhs, rhs, stride, count in rows[:12]:
    print(f"| {lhs} | {rhs} | {stride} | {count} | {t_xla * 1e3:.0f} | {t_cl * 1e3:.0f} | "
          f"{t_nchw * 1e3:.0f} |")
  print(f"| **all** | | | {sum(shapes.values())} | **{totals[0] * 1e3:.0f}** | "
        f"**{totals[1] * 1e3:.0f}** | **{totals[2] * 1e3:.0f}** |")


if __name__ == "__main__":
  main()
