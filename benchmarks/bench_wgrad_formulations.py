"""Kernel gradient of a 3x3 convolution on XLA:CPU: XLA's own formulation against alternatives.

XLA computes a convolution's kernel gradient as another convolution whose operands it first
transposes (input and output gradient, NHWC -> channel-major): those transposing copies are
~17 % of DCFNet's CPU training step. Alternatives timed here, one process, CPU time, variants
interleaved round by round (in a rotating order), each checked against XLA's result:

  xla        jax.vjp of the convolution (what autodiff gives)
  swapped    the output-channel-major convolution of models.ops (the `conv_wgrad` CPU
             formulation, used by the package only when in > out channels)
  taps       nine dot_generals over (n, h, w) of shifted views of x and dy (no transpose asked)
  taps_flat  nine dots over a W-padded, (h, w)-flattened x: each tap a contiguous window
  im2col     one dot of the nine shifted copies of x side by side with dy

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 \\
      python benchmarks/bench_wgrad_formulations.py --shapes 32x64x64x32x32,32x16x16x8x128 \\
      --variants xla,swapped,taps --rounds 7
  (a shape is NxHxWxCINxCOUT[xSTRIDE]; taps variants: stride 1 only)
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import xla_flags
from dcfnet_jax.models import ops

_DN = ("NHWC", "HWIO", "NHWC")


def formulations(stride: int, h: int, w: int):
  """{name: fn(x, dy) -> kernel gradient (3, 3, in, out)} for a 3x3, pad-1 convolution."""

  def xla(x, dy):
    kernel = jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype)
    _, vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(
        x, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_DN), kernel)
    return vjp(dy)[0]

  def swapped(x, dy):  # pylint: disable=protected-access  (the package's private formulation)
    if stride == 2:
      return ops._stride2_kernel_grad(x, dy, None)
    return ops._kernel_grad_by_output_channel(x, dy, (3, 3), (1, 1), None)

  def taps(x, dy):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.stack([jnp.stack([
        jax.lax.dot_general(xp[:, u:u + h, v:v + w, :], dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
        for v in range(3)]) for u in range(3)])

  def taps_flat(x, dy):
    n, wp = x.shape[0], w + 2
    xp = jnp.pad(x, ((0, 0), (1, 2), (1, 1), (0, 0))).reshape(n, (h + 3) * wp, x.shape[-1])
    dyp = jnp.pad(dy, ((0, 0), (0, 0), (0, 2), (0, 0))).reshape(n, h * wp, dy.shape[-1])
    out = [jax.lax.dot_general(xp[:, u * wp + v:u * wp + v + h * wp], dyp,
                               (((0, 1), (0, 1)), ((), ()))) for u in range(3) for v in range(3)]
    return jnp.stack(out).reshape(3, 3, x.shape[-1], dy.shape[-1])

  def im2col(x, dy):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, u:u + h, v:v + w, :] for u in range(3) for v in range(3)], -1)
    out = jax.lax.dot_general(cols, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
    return out.reshape(3, 3, x.shape[-1], dy.shape[-1])

  found = dict(xla=xla, swapped=swapped)
  if stride == 1:
    found.update(taps=taps, taps_flat=taps_flat, im2col=im2col)
  return found


def run_shape(shape: tuple[int, ...], variants: list[str], rounds: int) -> str:
  n, h, w, cin, cout = shape[:5]
  stride = shape[5] if len(shape) > 5 else 1
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32))
  dy = jnp.asarray(rng.standard_normal((n, h // stride, w // stride, cout), np.float32))
  fns = {k: f for k, f in formulations(stride, h, w).items() if k in variants}
  options = xla_flags.compiler_options("cpu")
  compiled = {k: jax.jit(f, compiler_options=options).lower(x, dy).compile()
              for k, f in fns.items()}
  ref = np.asarray(compiled["xla"](x, dy), np.float64)
  for k, c in compiled.items():
    err = np.abs(np.asarray(c(x, dy), np.float64) - ref).max() / np.abs(ref).max()
    assert err < 1e-4, (k, err)
  times = {k: [] for k in compiled}
  order = list(compiled)
  for r in range(rounds):  # the order rotates, so that no variant always runs first
    for k in order[r % len(order):] + order[:r % len(order)]:
      t0 = time.process_time()
      compiled[k](x, dy).block_until_ready()
      times[k].append(time.process_time() - t0)
  parts = []
  for k, t in times.items():
    ratio = statistics.median(a / b for a, b in zip(t, times["xla"]))
    parts.append(f"{k} {1e3 * statistics.median(t):.0f} ms ({ratio:.2f}x)")
  return (f"{cin}->{cout} stride {stride} at {h}x{w}, batch {n} (load "
          f"{os.getloadavg()[0]:.1f}): " + ", ".join(parts))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", default="32x64x64x32x32,32x64x64x64x64,32x64x64x256x64x2")
  p.add_argument("--variants", default="xla,swapped,taps,taps_flat,im2col")
  p.add_argument("--rounds", type=int, default=7)
  a = p.parse_args(argv)
  variants = ["xla"] + [v for v in a.variants.split(",") if v and v != "xla"]
  for text in a.shapes.split(","):
    print(run_shape(tuple(int(v) for v in text.split("x")), variants, a.rounds), flush=True)


if __name__ == "__main__":
  main()
