"""Checkpoints: Orbax training checkpoints and the plain exported-parameters file.

Training checkpoints (`Checkpoints`) live in `<workdir>/checkpoints/<step>/` with three items:
  state/   the train state (params, model_state = BatchNorm statistics, opt_state, step),
           an Orbax PyTree (OCDBT), restorable onto any device count or mesh;
  data/    the input pipeline position (JSON);
  config/  the config the run used (JSON).
Orbax writes each step to a temporary directory and renames it only after every item is
complete (commit marker), so a run killed mid-save leaves no checkpoint that looks good; the
manager ignores (and on the next save removes) such leftovers. We keep the latest checkpoint
and the best `config.checkpoint.keep_best` ones by a validation index (LatestN + BestN).

The exported format (`export_params` / `load_exported`), shared with `convert.py` and the
pansharpen tool, is one `.npz` (no pickle) plus a JSON sidecar:
  <name>.npz   one array per model variable, key = its NNX state path joined by "/"
               (e.g. `stage2/fuse_layers/0/1/bn/mean`), plus `__metadata__`: the metadata
               JSON as a uint8 array so that the .npz alone is complete;
  <name>.json  the same metadata, for people and tools: format, format_version, model,
               num_bands, sensor, img_range, bits, ratio, residual, model_config, extra keys.
Parameters and BatchNorm statistics are both stored (everything but RNG state).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from dcfnet_jax import config_lib, files, models
from dcfnet_jax.errors import InputError, RunError

log = logging.getLogger(__name__)

EXPORT_FORMAT = "dcfnet_jax.params"
EXPORT_FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
REQUIRED_METADATA = ("model", "num_bands", "sensor", "residual")


# ---------------------------------------------------------------------------
# Exported parameters (inference format)
# ---------------------------------------------------------------------------


def _path_key(path: tuple[Any, ...]) -> str:
  return "/".join(str(p) for p in path)


def _exportable_state(model: nnx.Module) -> nnx.State:
  return nnx.state(model, nnx.Not(nnx.RngState))


def model_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
  """Every non-RNG variable of `model` as numpy, keyed by its "/"-joined state path."""
  arrays = {}
  for path, var in nnx.to_flat_state(_exportable_state(model)):
    arrays[_path_key(path)] = np.asarray(jax.device_get(var.get_value()))
  return arrays


def metadata_from_config(config: ml_collections.ConfigDict, residual: bool,
                         **extra: Any) -> dict[str, Any]:
  """The export metadata of a model trained with `config` (`residual` already resolved)."""
  return dict(
      model=config.model.name,
      num_bands=int(config.data.num_bands),
      sensor=config.data.sensor,
      img_range=float(config.data.img_range),
      bits=int(config.data.bits),
      ratio=int(config.data.ratio),
      residual=bool(residual),
      model_config=config.model.to_dict(),
      **extra,
  )




def export_params(path: str | os.PathLike, model: nnx.Module,
                  metadata: Mapping[str, Any]) -> pathlib.Path:
  """Writes `model`'s variables to `<path>.npz` plus the metadata JSON `<path>.json`.

  `metadata` needs at least model, num_bands, sensor and residual (see
  `metadata_from_config`); format and format_version are added. Returns the .npz path.
  """
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path.with_name(path.name + ".npz")
  missing = [k for k in REQUIRED_METADATA if k not in metadata]
  if missing:
    raise ValueError(f"export metadata lacks {missing}; got keys {sorted(metadata)}")
  meta = dict(metadata)
  meta.update(format=EXPORT_FORMAT, format_version=EXPORT_FORMAT_VERSION)
  meta_json = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
  arrays = model_arrays(model)
  for key, value in arrays.items():
    if value.dtype.name == "bfloat16":  # .npz has no bfloat16
      arrays[key] = value = value.astype(np.float32)
    if value.dtype.kind not in "fiub":
      raise ValueError(f"cannot export variable {key!r} of dtype {value.dtype}")
  if METADATA_KEY in arrays:
    raise ValueError(f"a model variable is named {METADATA_KEY!r}, which the format reserves")
  arrays[METADATA_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)
  files.save_npz(path, arrays)
  files.write_text(path.with_suffix(".json"), meta_json + "\n")
  return path


def _json_default(obj):
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_exported(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads an exported .npz: (arrays keyed by state path, metadata). No pickle is allowed.

  A file that is not such an .npz (missing, a folder, empty, truncated, a pickle, object arrays,
  unreadable metadata) is an InputError naming it and what was expected.
  """
  path = pathlib.Path(path)
  expected = (f"expected an exported parameters file (.npz with {METADATA_KEY!r}, written by "
              "checkpoint.export_params, dcfnet_jax.convert or training's export)")
  try:
    arrays = files.load_npz(path)
  except (InputError, KeyError) as e:
    raise InputError(f"{e}; {expected}") from e
  sidecar = path.with_suffix(".json")
  try:
    if METADATA_KEY in arrays:
      metadata = json.loads(arrays.pop(METADATA_KEY).tobytes().decode("utf-8"))
    elif sidecar.is_file():
      metadata = json.loads(sidecar.read_text())
    else:
      raise InputError(f"{path} has no {METADATA_KEY!r} entry and no {sidecar}; {expected}")
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: the metadata ({METADATA_KEY!r} or {sidecar.name}) is not valid "
                     f"JSON ({e}); the file is damaged") from e
  if not isinstance(metadata, dict):
    raise InputError(f"{path}: the metadata is a JSON {type(metadata).__name__}, expected an "
                     "object")
  if metadata.get("format") != EXPORT_FORMAT:
    raise InputError(f"{path}: format is {metadata.get('format')!r}, expected {EXPORT_FORMAT!r}")
  try:
    version = int(metadata.get("format_version", -1))
  except (TypeError, ValueError) as e:
    raise InputError(f"{path}: format_version {metadata.get('format_version')!r} is not a "
                     "number") from e
  if version > EXPORT_FORMAT_VERSION:
    raise InputError(f"{path}: format_version {version} is newer than this dcfnet_jax reads "
                     f"({EXPORT_FORMAT_VERSION})")
  return arrays, metadata


def config_from_metadata(metadata: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A full config whose model and data fields are those recorded in export metadata."""
  config = config_lib.get_config("default")
  model_config = dict(metadata.get("model_config") or {})
  model_config["name"] = metadata["model"]
  unknown = sorted(set(model_config) - set(config.model))
  if unknown:
    raise InputError(f"export metadata has model fields {unknown} that this version's config "
                     f"does not know (known: {sorted(config.model)})")
  with config.unlocked():
    config.model.update(model_config)
    config.data.num_bands = int(metadata["num_bands"])
    config.data.sensor = str(metadata["sensor"])
    for key in ("img_range", "bits", "ratio"):
      if key in metadata:
        config.data[key] = type(config.data[key])(metadata[key])
  return config


def assign_arrays(model: nnx.Module, arrays: Mapping[str, np.ndarray], source: str) -> None:
  """Sets every non-RNG variable of `model` from `arrays`, checking names and shapes first."""
  flat = list(nnx.to_flat_state(_exportable_state(model)))
  expected = {_path_key(p): v for p, v in flat}
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  if missing or unexpected:
    raise InputError(f"{source} does not match the model's variables: missing {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                     f"{' ...' if len(unexpected) > 10 else ''}")
  for key, var in expected.items():
    value = var.get_value()
    if np.asarray(arrays[key]).dtype.kind not in "biuf":
      raise InputError(f"{source}: variable {key!r} has dtype {np.asarray(arrays[key]).dtype}, "
                       "expected numbers")
    if tuple(arrays[key].shape) != tuple(value.shape):
      raise InputError(f"{source}: variable {key!r} has shape {arrays[key].shape}, "
                       f"the model expects {tuple(value.shape)}")
  for key, var in expected.items():
    var.set_value(jax.numpy.asarray(arrays[key], dtype=var.get_value().dtype))


def load_exported(path: str | os.PathLike) -> tuple[nnx.Module, dict[str, Any]]:
  """Builds the model an exported file describes, fills it and returns (model, metadata).

  The model is in eval mode. Whether to add lms to its output is `metadata["residual"]`.
  """
  arrays, metadata = read_exported(path)
  missing = [k for k in REQUIRED_METADATA if k not in metadata]
  if missing:
    raise InputError(f"{path}: metadata lacks {missing}")
  try:
    config = config_from_metadata(metadata)
  except InputError as e:
    raise InputError(f"{path}: {e}") from e
  except (TypeError, ValueError) as e:  # e.g. num_bands "eight"
    raise InputError(f"{path}: the metadata does not describe a model this version knows: "
                     f"{e}") from e
  # Shapes only: initialising weights eagerly just to overwrite them costs seconds to minutes
  # of per-op compilation on a CPU. Every exported variable is assigned below.
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  assign_arrays(model, arrays, str(path))
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model))):
    model = models.create_model(config, nnx.Rngs(0))  # state that is not exported (RNG)
    assign_arrays(model, arrays, str(path))
  model.eval()
  return model, metadata


# ---------------------------------------------------------------------------
# Training checkpoints (Orbax)
# ---------------------------------------------------------------------------


class CheckpointError(RunError):
  """A checkpoint could not be written or read; the message says why and what is kept."""


def _finite_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
  if not metrics:
    return None
  out = {k: float(v) for k, v in metrics.items()}
  return out if all(math.isfinite(v) for v in out.values()) else None


class Checkpoints:
  """Orbax CheckpointManager for train states: latest + best-N, async, resumable."""

  def __init__(self, directory: str | os.PathLike, config: ml_collections.ConfigDict, *,
               read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self.config = config
    ckpt = config.checkpoint
    self.best_metric = ckpt.best_metric
    if ckpt.best_mode not in ("min", "max"):
      raise InputError("config.checkpoint.best_mode must be 'min' or 'max', got "
                       f"{ckpt.best_mode!r}")
    if ckpt.keep_best < 0:
      raise InputError(f"config.checkpoint.keep_best must be >= 0, got {ckpt.keep_best}")
    best_fn = lambda m: float(m[self.best_metric])  # noqa: E731
    policies = [ocp.checkpoint_managers.LatestN(n=1)]
    if ckpt.keep_best > 0:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(ckpt.best_mode == "min"), n=ckpt.keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=not read_only,
        read_only=read_only,
        best_fn=best_fn,
        best_mode=ckpt.best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=bool(ckpt.async_save),
        cleanup_tmp_directories=not read_only,
    )
    if read_only and not self.directory.is_dir():
      raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
    self._incomplete = incomplete_steps(self.directory)
    if self._incomplete and not read_only:
      _quarantine(self.directory, self._incomplete)
      self._incomplete = []
    self.read_only = read_only
    if read_only:  # PyTree handlers allow restoring a part of the state (the model only)
      handlers = dict(state=ocp.PyTreeCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                      config=ocp.JsonCheckpointHandler())
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_handlers=handlers)
    else:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "data", "config"))

  @classmethod
  def open_run(cls, directory: str | os.PathLike) -> Checkpoints:
    """A read-only view of a run's checkpoints that knows the run's own config (best metric)."""
    reader = cls(directory, config_lib.get_config("default"), read_only=True)
    try:
      latest = reader.latest_step()
      if latest is None:
        raise InputError(f"no complete checkpoint in {reader.directory}")
      config = ml_collections.ConfigDict(reader.restore_config(latest))
    finally:
      reader.close()
    return cls(directory, config, read_only=True)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, or None."""
    steps = self.all_steps()
    return max(steps) if steps else None

  def best_step(self) -> int | None:
    """The best complete step by `config.checkpoint.best_metric` (latest if none has metrics)."""
    best = self._manager.best_step()
    if best is not None and best in self._incomplete:
      scored = [(step, self._manager.metrics(step)) for step in self.all_steps()]
      scored = [(step, m) for step, m in scored if m is not None]
      if not scored:
        return self.latest_step()
      pick = min if self.config.checkpoint.best_mode == "min" else max
      best = pick(scored, key=lambda sm: float(sm[1][self.best_metric]))[0]
    return best

  def all_steps(self) -> list[int]:
    """Steps with a complete (committed) checkpoint, ascending."""
    return sorted(s for s in self._manager.all_steps() if s not in self._incomplete)

  def save(self, step: int, state: Any, data_state: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None) -> None:
    """Saves `state` (a pytree of jax arrays) at `step`; asynchronous if configured."""
    metrics = _finite_metrics(metrics)
    if metrics is not None and self.best_metric not in metrics:
      raise ValueError(f"config.checkpoint.best_metric {self.best_metric!r} is not among the "
                       f"validation indices {sorted(metrics)}")
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(dict(data_state)),
        config=ocp.args.JsonSave(json.loads(self.config.to_json_best_effort())))
    try:
      self._manager.save(step, args=args, metrics=metrics, force=True)
    except OSError as e:
      raise self._save_error(step, e) from e

  def _save_error(self, step: int, e: OSError) -> CheckpointError:
    what = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
    return CheckpointError(
        f"saving the checkpoint of step {step} to {self.directory} failed ({what}). Earlier "
        f"checkpoints are untouched (latest complete: {self.latest_step()}); free space or "
        "choose another --workdir and rerun the same command to resume.")

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise self._save_error(-1, e) from e

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Restores (state, data_state, config dict) of `step` onto `abstract_state`'s shardings.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with the target shardings, so a
    checkpoint written on N devices restores onto any other device count.
    """
    self._check_step(step)
    state_args = (self._partial_restore(abstract_state, partial=False) if self.read_only
                  else ocp.args.StandardRestore(abstract_state))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=state_args, data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return restored.state, dict(restored.data or {}), dict(restored.config or {})

  def restore_model(self, step: int, abstract_weights: Mapping[str, Any]) -> dict[str, Any]:
    """Only `params` and `model_state` of `step` (no optimiser state is read or needed).

    `abstract_weights` = {"params": ..., "model_state": ...} of ShapeDtypeStructs with their
    target shardings. Needs a read-only view (`open_run`).
    """
    if not self.read_only:
      raise RunError("restore_model needs a read-only Checkpoints (Checkpoints.open_run)")
    self._check_step(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=self._partial_restore(dict(abstract_weights), partial=True)))
    return dict(restored.state)

  @staticmethod
  def _partial_restore(abstract: Any, partial: bool) -> ocp.args.PyTreeRestore:
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype),
                                abstract)
    return ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=partial)

  def _check_step(self, step: int) -> None:
    if step not in self.all_steps():
      raise CheckpointError(f"no complete checkpoint for step {step} in {self.directory} "
                            f"(available: {self.all_steps()})")

  def restore_config(self, step: int) -> dict[str, Any]:
    """The config (as a dict) that the run of checkpoint `step` saved."""
    self._check_step(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(restored.config)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


COMMIT_MARKERS = ("commit_success.txt", "_CHECKPOINT_METADATA")


def incomplete_steps(directory: str | os.PathLike) -> list[int]:
  """Step directories without Orbax's commit markers (e.g. copied or cut short by hand).

  Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it only after writing
  `commit_success.txt`, so a complete step always has both markers; temporary directories are
  not steps at all (the manager ignores and cleans them).
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.is_dir() and p.name.isdigit()
                and not all((p / m).exists() for m in COMMIT_MARKERS))


def _quarantine(directory: pathlib.Path, steps: list[int]) -> None:
  """Renames incomplete step directories to `<step>.incomplete` so that no one restores them."""
  if jax.process_index() == 0:
    for step in steps:
      src = directory / str(step)
      dst = directory / f"{step}.incomplete"
      k = 1
      while dst.exists():
        dst = directory / f"{step}.incomplete{k}"
        k += 1
      log.warning("Checkpoint directory %s has no commit marker (%s): it is incomplete and "
                      "is moved to %s, not restored.", src, " / ".join(COMMIT_MARKERS), dst.name)
      src.rename(dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dcfnet_jax_checkpoint_quarantine")


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays, each with `sharding` (a restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def find_checkpoint(path: str | os.PathLike) -> tuple[pathlib.Path, int | None]:
  """Resolves a user-given checkpoint path to (checkpoints directory, step or None=latest).

  Accepts a workdir (uses `<workdir>/checkpoints`), a checkpoints directory, or one step's
  directory `<...>/checkpoints/<step>`.
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if (path / "checkpoints").is_dir():
    return path / "checkpoints", None
  if path.name.isdigit() and (path / "state").is_dir():
    return path.parent, int(path.name)
  return path, None
