"""Converts DCFNet weights between the official PyTorch state_dict and this project's Flax model.

  # official checkpoint -> exported parameters file (for evaluation, fine-tuning, pansharpen);
  # the folder of --out must exist
  python -m dcfnet_jax.convert --from-torch dcfnet_wv3.pth --out converted/dcfnet_wv3 --sensor wv3
  # exported parameters file -> state_dict for the official model (or dcfnet_jax.torch_ref)
  python -m dcfnet_jax.convert --to-torch converted/dcfnet_wv3.npz --out dcfnet_wv3_back.pth

The name map is explicit (docs/dcfnet_architecture.md §8; docs/pytorch.md): the state_dict key
split at '.', with integer parts as list indices, is the NNX state path, except for the leaf:

  torch                      Flax (NNX)   array
  conv `weight` (O,I,kh,kw)  `kernel`     transposed to (kh,kw,I,O) (HWIO)
  conv `bias`                `bias`       unchanged (only the two head convs have one)
  BN `weight`                `scale`
  BN `bias`                  `bias`
  BN `running_mean`          `mean`
  BN `running_var`           `var`
  `rs_w`, `fcc_w`            same name    unchanged (fcc_w is not transposed)
  BN `num_batches_tracked`   (none)       dropped; momentum is fixed, so it never matters

Before anything is assigned, the converted tree is checked against the model's abstract state
(`nnx.eval_shape`): every key present, none extra, every shape right; all problems are listed in
one error. Checkpoints are read with `torch.load(..., weights_only=True)` only (no pickle code).

This module is the one home of the torch key naming (`torch_key_to_flax_path`,
`flax_path_to_torch_key`, `expected_torch_keys`). torch is optional: it is imported (with the
torch reference model, `torch_ref`) by `_torch()` only when a .pth file is read or written.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import logging
import io
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from dcfnet_jax import checkpoint, cli, config_lib, files
from dcfnet_jax.errors import InputError
from dcfnet_jax.models import dcfnet

log = logging.getLogger(__name__)

# Keys under which training frameworks nest the state_dict in a checkpoint dict.
NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "params")
STRIP_PREFIXES = ("module.",)  # nn.DataParallel / DistributedDataParallel
NUM_BATCHES_TRACKED = "num_batches_tracked"
_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_FLAX_TO_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
                       "mean": "running_mean", "var": "running_var"}
# NHWC/HWIO <-> NCHW/OIHW
_OIHW_TO_HWIO = (2, 3, 1, 0)
_HWIO_TO_OIHW = (3, 2, 0, 1)

Path = tuple[str | int, ...]


class ConversionError(InputError):
  """A state_dict or parameters file does not fit the DCFNet model; the message lists why."""


# ---------------------------------------------------------------------------------------------
# Names


def _path_str(path: Path) -> str:
  return "/".join(str(p) for p in path)


def torch_key_to_flax_path(key: str, ndim: int) -> Path:
  """The NNX state path of the torch state_dict entry `key` whose array has `ndim` dims.

  `weight` is a conv kernel when 4-D and a BatchNorm scale when 1-D; '.'-separated integers
  become list indices.
  """
  parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
  leaf = parts[-1]
  if leaf == "weight":
    parts[-1] = "kernel" if ndim == 4 else "scale"
  elif leaf in _BN_LEAVES:
    parts[-1] = _BN_LEAVES[leaf]
  return tuple(parts)


def flax_path_to_torch_key(path: Path) -> str:
  """The torch state_dict key of the NNX state path `path` (inverse of `torch_key_to_flax_path`)."""
  parts = [str(p) for p in path]
  parts[-1] = _FLAX_TO_TORCH_LEAF.get(parts[-1], parts[-1])
  return ".".join(parts)


def _to_flax_array(path: Path, value: np.ndarray) -> np.ndarray:
  return np.transpose(value, _OIHW_TO_HWIO) if path[-1] == "kernel" else value


def _to_torch_array(path: Path, value: np.ndarray) -> np.ndarray:
  return np.transpose(value, _HWIO_TO_OIHW) if path[-1] == "kernel" else value


def _model_variables(model_or_abstract: nnx.Module) -> dict[Path, nnx.Variable]:
  """Every variable (parameters and BatchNorm statistics; no RNG state) by state path."""
  state = nnx.state(model_or_abstract, nnx.Not(nnx.RngState))
  return {tuple(getattr(p, "key", p) for p in path): var
          for path, var in nnx.to_flat_state(state)}


def expected_torch_keys(model_or_abstract: nnx.Module) -> dict[str, tuple[int, ...]]:
  """{torch key: torch-layout shape} the model needs, incl. one num_batches_tracked per BN."""
  out = {}
  for path, var in _model_variables(model_or_abstract).items():
    shape = tuple(var.get_value().shape)
    if path[-1] == "kernel":
      shape = tuple(shape[i] for i in _HWIO_TO_OIHW)
    out[flax_path_to_torch_key(path)] = shape
    if path[-1] == "mean":
      out[".".join(str(p) for p in path[:-1]) + "." + NUM_BATCHES_TRACKED] = ()
  return out


# ---------------------------------------------------------------------------------------------
# Reading torch checkpoints


def _torch() -> tuple[Any, Any]:
  """(torch, dcfnet_jax.torch_ref), imported on first use: torch is an optional extra."""
  try:
    return importlib.import_module("torch"), importlib.import_module("dcfnet_jax.torch_ref")
  except ImportError as e:
    raise InputError("reading or writing PyTorch checkpoints needs torch: "
                     "pip install 'dcfnet_jax[torch]'") from e


def _is_array_like(v: Any) -> bool:
  return hasattr(v, "shape") and hasattr(v, "dtype")


def unwrap_state_dict(obj: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
  """The bare state_dict inside `obj`: nested under e.g. 'state_dict'/'model', 'module.' removed."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{source}: expected a state_dict (a mapping of names to tensors), "
                          f"got {type(obj).__name__}")
  sd = obj
  nested_under = []
  while sd and not all(_is_array_like(v) for v in sd.values()):
    key = next((k for k in NESTING_KEYS if isinstance(sd.get(k), Mapping)), None)
    if key is None:
      top = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(sd.items())[:12])
      raise ConversionError(
          f"{source}: not a state_dict and no nested one under any of {list(NESTING_KEYS)}; "
          f"top-level entries: {top}")
    nested_under.append(key)
    sd = sd[key]
  if not sd:
    where = f" (under {'/'.join(nested_under)})" if nested_under else ""
    raise ConversionError(f"{source}: the state_dict{where} is empty")
  sd = dict(sd)
  for prefix in STRIP_PREFIXES:
    while sd and all(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items()}
  return sd


def _tensor_to_numpy(v: Any) -> np.ndarray:
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, "detach"):  # torch.Tensor
    v = v.detach().cpu()
    if str(v.dtype) == "torch.bfloat16":
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .pth/.pt file with `weights_only=True` and returns its bare state_dict as numpy."""
  torch, _ = _torch()
  path = files.check_input_file(path, "PyTorch checkpoint")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds)
    reason = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    raise ConversionError(
        f"{path} could not be read with torch.load(weights_only=True): "
        f"{reason[0] if reason else type(e).__name__} If it is a whole pickled nn.Module, load it "
        "in the official code and save model.state_dict() instead (never unpickled here)."
        ) from e
  return {k: _tensor_to_numpy(v) for k, v in unwrap_state_dict(obj, str(path)).items()}


def _as_numpy_state_dict(src: str | os.PathLike | Mapping[str, Any]) -> tuple[
    dict[str, np.ndarray], str]:
  if isinstance(src, (str, os.PathLike)):
    return load_torch_state_dict(src), str(src)
  sd = unwrap_state_dict(src, "state_dict")
  return {k: _tensor_to_numpy(v) for k, v in sd.items()}, "state_dict"


def num_batches_tracked(state_dict: Mapping[str, Any]) -> dict[str, int]:
  """The BatchNorm call counters of a torch state_dict (kept to write them back unchanged)."""
  sd = unwrap_state_dict(state_dict)
  return {k: int(np.asarray(_tensor_to_numpy(v))) for k, v in sd.items()
          if k.endswith("." + NUM_BATCHES_TRACKED)}


def infer_num_bands(state_dict: Mapping[str, Any]) -> int:
  """C from the head's last conv (`last_layer.3.weight`, shape (C, 224, 1, 1))."""
  key = "last_layer.3.weight"
  if key not in state_dict:
    raise ConversionError(f"cannot infer the number of bands: {key!r} is missing; pass bands=")
  return int(state_dict[key].shape[0])


# ---------------------------------------------------------------------------------------------
# torch -> Flax


def _check_and_convert(sd: Mapping[str, np.ndarray], abstract: nnx.Module,
                       source: str) -> dict[Path, np.ndarray]:
  """Maps `sd` onto the abstract model's variables, raising one error that lists every problem."""
  variables = _model_variables(abstract)
  expected = expected_torch_keys(abstract)
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd if k not in expected]
  wrong = [f"{k}: got {tuple(sd[k].shape)}, expected {shape}"
           for k, shape in expected.items() if k in sd and tuple(sd[k].shape) != shape]
  skip = set(unexpected) | {w.split(":")[0] for w in wrong}
  converted: dict[Path, np.ndarray] = {}
  for key, value in sd.items():
    if key in skip or key.endswith("." + NUM_BATCHES_TRACKED):
      continue
    path = torch_key_to_flax_path(key, value.ndim)
    if path not in variables:  # cannot happen for keys of the right shape; checked anyway
      wrong.append(f"{key}: maps to {_path_str(path)}, which the model does not have")
      continue
    converted[path] = _to_flax_array(path, value)
  # The converted tree must match the abstract state exactly (structure and every shape).
  if not (missing or unexpected or wrong):
    absent = [p for p in variables if p not in converted]
    bad = [f"{_path_str(p)}: {converted[p].shape} vs {variables[p].get_value().shape}"
           for p in variables if p in converted
           and tuple(converted[p].shape) != tuple(variables[p].get_value().shape)]
    if absent or bad or len(converted) != len(variables):
      raise ConversionError(f"{source}: internal name-map error; unmapped model variables "
                            f"{[_path_str(p) for p in absent]}, shape mismatches {bad}")
  if missing or unexpected or wrong:
    lines = [f"{source} does not fit DCFNet({_num_bands(abstract)} bands):"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("wrong shapes", wrong)):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines += [f"    {item}" for item in items]
    raise ConversionError("\n".join(lines))
  return converted


def _num_bands(model: nnx.Module) -> Any:
  return getattr(model, "num_bands", "?")


def from_torch(src: str | os.PathLike | Mapping[str, Any], bands: int | None = None,
               **model_kwargs) -> dcfnet.DCFNet:
  """The Flax DCFNet (eval mode) carrying the weights of an official checkpoint or state_dict.

  Args:
    src: a .pth path (read with weights_only=True) or a state_dict (torch tensors or numpy),
      bare or nested under e.g. 'state_dict'/'model', with or without a 'module.' prefix.
    bands: C; None takes it from the checkpoint's head.
    **model_kwargs: passed to `DCFNet` (e.g. `param_dtype=jnp.float64`, `fast=False`).

  Returns:
    `model(pan, lms, mms, ms)` on NHWC arrays gives the official `forward` (raw output).
  """
  sd, source = _as_numpy_state_dict(src)
  bands = infer_num_bands(sd) if bands is None else bands
  # The abstract model is checked, then filled: no random initialisation is ever run.
  model = nnx.eval_shape(lambda: dcfnet.DCFNet(bands, rngs=nnx.Rngs(0), **model_kwargs))
  arrays = _check_and_convert(sd, model, source)
  checkpoint.assign_arrays(model, {_path_str(p): v for p, v in arrays.items()}, source)
  model.eval()
  return model


# ---------------------------------------------------------------------------------------------
# Flax -> torch


def to_numpy_state_dict(model: nnx.Module,
                        batches_tracked: Mapping[str, int] | None = None
                        ) -> dict[str, np.ndarray]:
  """The model's variables as a torch-layout state_dict of numpy arrays (no torch needed).

  `num_batches_tracked` entries are int64 scalars: the values in `batches_tracked` where given
  (e.g. those of the checkpoint converted from), else 0.
  """
  batches_tracked = dict(batches_tracked or {})
  out: dict[str, np.ndarray] = {}
  for path, var in _model_variables(model).items():
    value = np.asarray(jax.device_get(var.get_value()))
    out[flax_path_to_torch_key(path)] = np.ascontiguousarray(_to_torch_array(path, value))
    if path[-1] == "var":
      key = ".".join(str(p) for p in path[:-1]) + "." + NUM_BATCHES_TRACKED
      out[key] = np.asarray(batches_tracked.pop(key, 0), dtype=np.int64)
  if batches_tracked:
    raise ConversionError(f"num_batches_tracked given for unknown BatchNorms: "
                          f"{sorted(batches_tracked)}")
  return out


def to_torch(model: nnx.Module, batches_tracked: Mapping[str, int] | None = None
             ) -> collections.OrderedDict:
  """The model's weights as an official-layout torch state_dict (official key order).

  Loads with `strict=True` into the official DCFNet and into `torch_ref.DCFNetTorch`.
  """
  torch, torch_ref = _torch()
  arrays = to_numpy_state_dict(model, batches_tracked)
  reference = torch_ref.DCFNetTorch(_num_bands(model)).state_dict()
  missing = [k for k in reference if k not in arrays]
  unexpected = [k for k in arrays if k not in reference]
  wrong = [f"{k}: got {arrays[k].shape}, expected {tuple(v.shape)}" for k, v in reference.items()
           if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)]
  if missing or unexpected or wrong:
    raise ConversionError(f"the model does not map onto the official state_dict: missing "
                          f"{missing}, unexpected {unexpected}, wrong shapes {wrong}")
  return collections.OrderedDict(
      (k, torch.from_numpy(np.array(arrays[k])).to(v.dtype)) for k, v in reference.items())


# ---------------------------------------------------------------------------------------------
# Files and the command line


def convert_torch_file(src: str | os.PathLike, out: str | os.PathLike, sensor: str,
                       residual: bool = False) -> pathlib.Path:
  """Official .pth -> exported parameters file (`checkpoint.export_params` format).

  The metadata records `sensor` (its config gives img_range etc.), `residual` (whether lms is to
  be added to the network output; see docs/pytorch.md) and the checkpoint's BatchNorm
  `num_batches_tracked`, so that `--to-torch` writes them back unchanged.
  """
  sd = load_torch_state_dict(src)
  config = config_lib.get_config(sensor)
  bands = infer_num_bands(sd)
  if bands != config.data.num_bands:
    raise ConversionError(f"{src} has {bands} bands (last_layer.3.weight), but sensor "
                          f"{sensor!r} has {config.data.num_bands}")
  model = from_torch(sd, bands=bands)
  with config.unlocked():
    config.model.residual = bool(residual)
  metadata = checkpoint.metadata_from_config(
      config, residual=bool(residual), converted_from=str(src),
      torch_num_batches_tracked=num_batches_tracked(sd))
  return checkpoint.export_params(out, model, metadata)


def convert_params_file(src: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
  """Exported parameters file -> official-layout .pth state_dict (written atomically)."""
  torch, _ = _torch()
  arrays, metadata = checkpoint.read_exported(src)
  if metadata.get("model") != "dcfnet":
    raise ConversionError(f"{src} holds a {metadata.get('model')!r} model; only dcfnet "
                          "has an official PyTorch layout")
  bands = int(metadata["num_bands"])
  model = nnx.eval_shape(lambda: dcfnet.DCFNet(bands, rngs=nnx.Rngs(0)))
  checkpoint.assign_arrays(model, arrays, str(src))  # checks names and shapes first
  sd = to_torch(model, metadata.get("torch_num_batches_tracked"))
  buffer = io.BytesIO()
  torch.save(sd, buffer)
  return files.write_bytes(out, buffer.getvalue())


def _parse_bool(text: str) -> bool:
  if text.lower() in ("true", "1", "yes"):
    return True
  if text.lower() in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.convert", __doc__)
  group = p.add_mutually_exclusive_group(required=True)
  group.add_argument("--from-torch", metavar="PTH", help="official state_dict (.pth) to convert")
  group.add_argument("--to-torch", metavar="NPZ", help="exported parameters file to convert")
  p.add_argument("--out", required=True,
                 help="output: parameters file path (.npz added) or .pth path")
  p.add_argument("--sensor", choices=sorted(config_lib.SENSORS),
                 help="--from-torch: the sensor the checkpoint was trained for")
  p.add_argument("--residual", type=_parse_bool, default=False, metavar="true|false",
                 help="--from-torch: record that lms is added to the network output (default "
                      "false: the raw forward, as the official train step trains it)")
  return p


def check_outputs(args: argparse.Namespace) -> None:
  """Refuses, before any work, an --out that is a folder or an input, or in a missing or
  read-only folder (--from-torch writes OUT.npz and OUT.json)."""
  source = args.from_torch or args.to_torch
  inputs = [source, pathlib.Path(source).with_suffix(".json")]
  if args.from_torch:
    out = pathlib.Path(args.out)
    out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
    for path in (out, out.with_suffix(".json")):
      files.check_output_file(path, flag="--out", inputs=inputs)
  else:
    files.check_output_file(args.out, flag="--out", inputs=inputs)


def run(args: argparse.Namespace) -> None:
  check_outputs(args)
  if args.from_torch:
    if not args.sensor:
      raise InputError("--from-torch needs --sensor (one of "
                       + ", ".join(sorted(config_lib.SENSORS)) + ")")
    out = convert_torch_file(args.from_torch, args.out, args.sensor, args.residual)
    log.info("wrote %s and %s (sensor %s, residual %s)", out, out.with_suffix(".json"),
             args.sensor, args.residual)
  else:
    out = convert_params_file(args.to_torch, args.out)
    log.info("wrote %s", out)


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
