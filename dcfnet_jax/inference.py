"""Inference: a trained model without its optimiser, and the one predictor.

`load(path)` reads an exported parameters file (.npz, `checkpoint.export_params`) or an Orbax
training checkpoint (a workdir, its checkpoints directory or one step's directory). Only the
parameters and the model state (BatchNorm statistics) are read; no optimiser is built. The
result knows what the run knew: model config, residual, img_range, bits, sensor, step.

`predict_dn` is the one prediction rule of every tool, and `Predictor` its jitted, sharded form:
model units in (DN / img_range), `models.predict` (network + lms when residual), clipped to
[0, 1] when asked (the official test step clips; default on), times img_range: DN out. The
weights are replicated over a 1-D device mesh, the batch is split on its "data" axis, and
matmuls/convolutions run at the given precision. Training's evaluation, `compare`, `bench` and
the sharpening tile runner all call it.

The network runs as `models.folding.inference_model` prepares it, inside the jit: without the
CPU gradient formulations (they only cost time without a backward pass) and, where `fold` is
on, with every BatchNorm folded into the convolution before it (same function up to float
rounding). `fold` defaults to on off the CPU (GPU/TPU compilers can fuse the folded bias into
the convolution) and off on the CPU, where folding measured no gain (docs/bench_cpu_speed.md).
On the CPU the jit carries the XLA option of fast convolutions (`xla_flags`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dcfnet_jax import checkpoint as ckpt_lib
from dcfnet_jax import models, sharding, xla_flags
from dcfnet_jax.errors import InputError
from dcfnet_jax.models import folding
from dcfnet_jax.train_state import ModelSpec, abstract_weights, merge_model, model_spec, split_model

log = logging.getLogger(__name__)

PRECISIONS = ("default", "high", "highest")


@dataclasses.dataclass
class LoadedModel:
  """Eval-mode weights and what the checkpoint says about them."""

  spec: ModelSpec
  params: Any  # pure nnx.State of the parameters
  model_state: Any  # pure nnx.State of the other variables (BatchNorm statistics)
  config: ml_collections.ConfigDict  # the run's config (model and data fields)
  metadata: dict[str, Any]  # export metadata (checkpoint.metadata_from_config)
  source: str

  @property
  def name(self) -> str:
    return str(self.metadata.get("model", self.spec.name))

  @property
  def num_bands(self) -> int:
    return int(self.metadata["num_bands"])

  @property
  def residual(self) -> bool:
    return self.spec.residual

  @property
  def img_range(self) -> float:
    return float(self.metadata.get("img_range", 0) or 0)

  @property
  def bits(self) -> int:
    return int(self.metadata.get("bits", 0) or 0)

  @property
  def sensor(self) -> str:
    return str(self.metadata.get("sensor", "none"))

  @property
  def step(self) -> int:
    return int(self.metadata.get("step", -1))

  @classmethod
  def from_module(cls, module: nnx.Module, *, residual: bool, img_range: float, bits: int = 0,
                  sensor: str = "none", name: str | None = None,
                  source: str = "in-memory model") -> LoadedModel:
    """An in-memory NNX model (any network with the `(pan, lms, mms, ms)` interface)."""
    module.eval()
    graphdef, _, _ = nnx.split(module, nnx.Param, ...)
    name = name or type(module).__name__.lower()
    spec = ModelSpec(name, graphdef, graphdef, bool(residual), "mse", 0)
    params, model_state = split_model(module)
    metadata = dict(model=name, num_bands=int(getattr(module, "num_bands", 0)),
                    img_range=float(img_range), bits=int(bits), sensor=sensor,
                    residual=bool(residual))
    return cls(spec, params, model_state, ml_collections.ConfigDict(), metadata, source)

  def module(self) -> nnx.Module:
    """The eval-mode NNX model (e.g. for `convert.to_torch` or inspection)."""
    return merge_model(self.spec, self.params, self.model_state)

  def predictor(self, mesh: jax.sharding.Mesh, *, clip: bool = True, img_range: float | None = None,
                precision: str | None = None, fold: bool | None = None) -> Predictor:
    """The predictor of this model on `mesh` (img_range: the checkpoint's unless given)."""
    return Predictor(self.spec, img_range=self.img_range if img_range is None else img_range,
                     clip=clip, mesh=mesh, precision=precision, fold=fold)


def load(path: str | os.PathLike[str], *, which: str = "best",
         mesh: jax.sharding.Mesh | None = None) -> LoadedModel:
  """Loads an exported .npz or an Orbax checkpoint (parameters and model state only).

  For a workdir or checkpoints directory `which` picks the step: "best" by the run's own
  validation metric (the latest when no step has metrics) or "latest"; a step directory
  `<...>/checkpoints/<step>` is that step. Orbax weights are restored replicated on `mesh`
  (default: the first local device).
  """
  path = pathlib.Path(path)
  if which not in ("best", "latest"):
    raise InputError(f"which must be 'best' or 'latest', got {which!r}")
  _require_exists(path)
  if path.is_file():
    return _load_exported(path)
  return _load_orbax(path, which, mesh or sharding.make_mesh(jax.local_devices()[:1]))


def check_source(path: str | os.PathLike[str]) -> None:
  """Fails now, without building a model, on a checkpoint path `load` cannot read: a missing
  path, or an exported file that is not a readable parameters .npz (for tools that load their
  models late, after other slow work)."""
  path = pathlib.Path(path)
  _require_exists(path)
  if path.is_file():
    ckpt_lib.read_exported(path)


def _require_exists(path: pathlib.Path) -> None:
  if not path.exists():
    raise InputError(f"checkpoint {path}: no such file or directory (expected an exported .npz "
                     "or a training workdir / checkpoint directory)")


def _load_exported(path: pathlib.Path) -> LoadedModel:
  model, metadata = ckpt_lib.load_exported(path)
  config = ckpt_lib.config_from_metadata(metadata)
  spec = dataclasses.replace(model_spec(config), residual=bool(metadata["residual"]))
  params, model_state = split_model(model)
  return LoadedModel(spec, params, model_state, config, dict(metadata), str(path))


def _load_orbax(path: pathlib.Path, which: str, mesh: jax.sharding.Mesh) -> LoadedModel:
  directory, step = ckpt_lib.find_checkpoint(path)
  try:
    checkpoints = ckpt_lib.Checkpoints.open_run(directory)
  except (FileNotFoundError, InputError) as e:
    raise InputError(f"checkpoint {path}: not an exported .npz nor a training checkpoint "
                     f"directory ({e}); expected an exported .npz, a workdir, its checkpoints "
                     "folder or one step's folder") from e
  except (ValueError, OSError, KeyError) as e:  # Orbax/TensorStore on damaged files
    raise _damaged(path, None, e) from e
  try:
    if step is None:
      step = checkpoints.best_step() if which == "best" else None
      step = checkpoints.latest_step() if step is None else step
    return _restore(checkpoints, path, directory, step, mesh)
  except InputError:
    raise
  except (ValueError, OSError, KeyError) as e:
    raise _damaged(path, step, e) from e
  finally:
    checkpoints.close()


def _damaged(path: pathlib.Path, step: int | None, error: Exception) -> InputError:
  first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
  at = "" if step is None else f" (step {step})"
  return InputError(f"checkpoint {path}{at} cannot be read, it is damaged or incomplete: "
                    f"{type(error).__name__}: {first}")


def _restore(checkpoints: ckpt_lib.Checkpoints, path: pathlib.Path, directory: pathlib.Path,
             step: int, mesh: jax.sharding.Mesh) -> LoadedModel:
  """The weights of `step` of an open run's checkpoints (no optimiser state is read)."""
  config = ml_collections.ConfigDict(checkpoints.restore_config(step))
  log.info("Loading step %d of %s.", step, directory)
  spec = model_spec(config)
  params, model_state = abstract_weights(config)
  target = ckpt_lib.abstract_like(dict(params=params, model_state=model_state),
                                  sharding.replicated_sharding(mesh))
  restored = checkpoints.restore_model(step, target)
  metadata = ckpt_lib.metadata_from_config(config, spec.residual, step=int(step),
                                           source=str(directory))
  return LoadedModel(spec, restored["params"], restored["model_state"], config, metadata,
                     str(path))


# ---------------------------------------------------------------------------------------------
# The predictor


def predict_dn(params: Any, model_state: Any, pan: jax.Array, lms: jax.Array, ms: jax.Array,
               *, graphdef: Any, residual: bool, clip: bool, img_range: float,
               fold: bool = False) -> jax.Array:
  """Eval-mode prediction in DN from inputs in model units (pure; jit it or call inside a jit).

  The network is `folding.inference_model` of the merged model: CPU gradient formulations off,
  BatchNorm folded into the convolutions when `fold`.
  """
  model = folding.inference_model(nnx.merge(graphdef, params, model_state), fold=fold)
  pred = models.predict(model, pan, lms, ms, residual=residual)
  if clip:
    pred = jnp.clip(pred, 0.0, 1.0)
  return pred * jnp.float32(img_range)


def default_fold(mesh: jax.sharding.Mesh) -> bool:
  """BatchNorm folding by default: off on the CPU (measured no gain there), on elsewhere."""
  return mesh.devices.flat[0].platform != "cpu"


class Predictor:
  """`predict_dn` jitted over a mesh: weights replicated, batch split on "data", DN out.

  Call it with (params, model_state, batch) where the batch holds `pan`, `lms`, `ms` in model
  units (numpy or global arrays; the batch size must be a multiple of the mesh size).
  `fold` (BatchNorm folding, see the module docstring): None = on unless the mesh is on the CPU.
  """

  def __init__(self, spec: ModelSpec, *, img_range: float, mesh: jax.sharding.Mesh,
               clip: bool = True, precision: str | None = None, fold: bool | None = None):
    if precision not in (None,) + PRECISIONS:
      raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    self.spec, self.mesh, self.precision = spec, mesh, precision
    self.img_range, self.clip = float(img_range), bool(clip)
    self.fold = default_fold(mesh) if fold is None else bool(fold)
    self.static = dict(graphdef=spec.eval_graphdef, residual=bool(spec.residual), clip=self.clip,
                       img_range=self.img_range, fold=self.fold)
    replicated = sharding.replicated_sharding(mesh)
    batched = sharding.batch_sharding(mesh)
    self._fn = jax.jit(functools.partial(predict_dn, **self.static),
                       in_shardings=(replicated, replicated, batched, batched, batched),
                       out_shardings=batched,
                       compiler_options=xla_flags.mesh_compiler_options(mesh))

  def replicate(self, params: Any, model_state: Any) -> tuple[Any, Any]:
    """The weights placed on every device of the mesh."""
    return sharding.replicate((params, model_state), self.mesh)

  def precision_scope(self):
    """The matmul/convolution precision context of this predictor."""
    if self.precision is None:
      return contextlib.nullcontext()
    return jax.default_matmul_precision(self.precision)

  def __call__(self, params: Any, model_state: Any, batch: Mapping[str, Any]) -> jax.Array:
    with self.precision_scope():
      return self._fn(params, model_state, batch["pan"], batch["lms"], batch["ms"])

  def lower(self, params: Any, model_state: Any, batch: Mapping[str, Any]):
    """The lowered computation (for XLA's cost analysis)."""
    with self.precision_scope():
      return self._fn.lower(params, model_state, batch["pan"], batch["lms"], batch["ms"])
