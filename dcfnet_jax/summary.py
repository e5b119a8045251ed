"""Prints the network of a config: layers, parameter counts, BatchNorm statistics and FLOPs.

  python -m dcfnet_jax.summary --config=wv3

The FLOPs are XLA's cost analysis of one eval-mode forward pass of one 64x64 sample (patch size
of the training protocol), so they include elementwise work as well as the convolutions. The
last line is `params: N` (trainable parameters).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dcfnet_jax import cli, models

PATCH_SIZE = 64  # training patch height and width (docs/dcfnet_architecture.md §9)


def _count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _path_str(path) -> str:
  return ".".join(str(getattr(p, "key", p)) for p in path)


def layer_rows(model: nnx.Module) -> list[tuple[str, str, str, int]]:
  """(module path, module type, parameter shapes, parameter count) per module owning params."""
  rows = []
  for path, module in nnx.iter_modules(model):
    own = [(name, value) for name, value in vars(module).items()
           if isinstance(value, nnx.Param)]
    if not own:
      continue
    shapes = ", ".join(f"{name}{tuple(v.get_value().shape)}" for name, v in own)
    count = sum(int(np.prod(v.get_value().shape)) for _, v in own)
    rows.append((_path_str(path) or "(root)", type(module).__name__, shapes, count))
  return rows


def forward_flops(model: nnx.Module, num_bands: int, size: int = PATCH_SIZE) -> float | None:
  """XLA's flop count of one eval-mode forward pass of one sample, or None if unavailable.

  `model` may be abstract (from `nnx.eval_shape`): only shapes are needed.
  """
  model = nnx.clone(model) if not _is_abstract(model) else model
  model.eval()
  graphdef, state = nnx.split(model)

  def forward(state, pan, lms, mms, ms):
    return nnx.merge(graphdef, state)(pan, lms, mms, ms)

  shapes = [(1, size, size, 1), (1, size, size, num_bands), (1, size // 2, size // 2, num_bands),
            (1, size // 4, size // 4, num_bands)]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  cost = jax.jit(forward).lower(abstract_state, *args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def _is_abstract(model: nnx.Module) -> bool:
  return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))


def summarize(config: ml_collections.ConfigDict) -> str:
  """The summary text of `config`'s model (see the module docstring)."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  rows = layer_rows(model)
  width = max(len(r[0]) for r in rows)
  type_width = max(len(r[1]) for r in rows)
  lines = [f"model: {config.model.name}, {config.data.num_bands} bands, compute dtype "
           f"{jnp.dtype(models.compute_dtype(config)).name}",
           f"{'module':<{width}}  {'type':<{type_width}}  {'params':>9}  shapes"]
  for path, kind, shapes, count in rows:
    lines.append(f"{path:<{width}}  {kind:<{type_width}}  {count:>9,}  {shapes}")
  num_params = _count(nnx.state(model, nnx.Param))
  num_stats = _count(nnx.state(model, nnx.BatchStat))
  bn_layers = sum(1 for _, m in nnx.iter_modules(model) if hasattr(m, "mean")
                  and isinstance(getattr(m, "mean"), nnx.BatchStat))
  lines.append(f"trainable parameters: {num_params:,}")
  lines.append(f"BatchNorm statistics (mean + var): {num_stats:,} in {bn_layers} layers")
  flops = forward_flops(model, config.data.num_bands)
  if flops is None:
    lines.append("forward FLOPs per sample: unavailable (no XLA cost analysis on this backend)")
  else:
    lines.append(f"forward FLOPs per {PATCH_SIZE}x{PATCH_SIZE} sample (XLA cost analysis, "
                 f"eval mode): {flops / 1e9:.3f} G")
  lines.append(f"params: {num_params}")
  return "\n".join(lines)


def build_parser() -> cli.Parser:
  parser = cli.make_parser("dcfnet_jax.summary", __doc__)
  cli.add_config_arguments(parser)
  return parser


def run(args: argparse.Namespace) -> None:
  print(summarize(cli.config_from_args(args)))


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
