"""The train state and the static facts about a model: creating, shaping and restoring them.

`TrainState` is everything that changes during training (a pytree of arrays, replicated on the
device mesh): step, `params` (the nnx.Param arrays), `model_state` (every other variable: the
BatchNorm statistics) and `opt_state`. `ModelSpec` holds what does not change: the graph
definitions in train and eval mode and the loss recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from dcfnet_jax import checkpoint as ckpt_lib
from dcfnet_jax import models, sharding
from dcfnet_jax.errors import InputError


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree of arrays (replicated on the mesh)."""

  step: jax.Array  # int32 scalar: number of optimiser steps taken
  params: Any  # nnx.State of the nnx.Param arrays
  model_state: Any  # nnx.State of all other variables (BatchNorm statistics)
  opt_state: Any

  def to_dict(self) -> dict[str, Any]:
    return dict(step=self.step, params=self.params, model_state=self.model_state,
                opt_state=self.opt_state)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> TrainState:
    return cls(step=d["step"], params=d["params"], model_state=d["model_state"],
               opt_state=d["opt_state"])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static facts about the model: graph definitions (train/eval mode) and the loss recipe."""

  name: str
  train_graphdef: Any
  eval_graphdef: Any
  residual: bool
  loss: str  # "mse" or "l1"
  loss_border: int  # pixels per side left out of the loss (PNN: 8)


def abstract_model(config: ml_collections.ConfigDict) -> nnx.Module:
  """The model of `config` as shapes only (`nnx.eval_shape`: no initialisation runs)."""
  return nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))


def model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
  """Graph definitions and loss settings from an abstract (shape-only) model."""
  model = abstract_model(config)
  residual = bool(models.resolve_residual(config, model))
  model.train()
  train_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  loss = getattr(model, "loss", "mse")
  if loss not in ("mse", "l1"):
    raise InputError(f"model {config.model.name!r} asks for loss {loss!r}; supported: mse, l1")
  return ModelSpec(config.model.name, train_graphdef, eval_graphdef, residual, loss,
                   int(getattr(model, "loss_border", 0)))


def split_model(model: nnx.Module) -> tuple[Any, Any]:
  """(params, model_state) of a concrete model as pure States of arrays."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return nnx.as_pure(params), nnx.as_pure(rest)


def merge_model(spec: ModelSpec, params: Any, model_state: Any, train: bool = False
                ) -> nnx.Module:
  """A concrete model (eval mode unless `train`) from pure States."""
  graphdef = spec.train_graphdef if train else spec.eval_graphdef
  return nnx.merge(graphdef, params, model_state)


# ---------------------------------------------------------------------------------------------
# Creating and restoring


def _model_key(config: ml_collections.ConfigDict) -> tuple[str, int, bool]:
  """What the initial weights depend on, as hashable values (a static argument of the jit)."""
  return (config.model.to_json_best_effort(sort_keys=True), int(config.data.num_bands),
          bool(config.get("half_precision", False)))


def _config_of(key: tuple[str, int, bool]) -> ml_collections.ConfigDict:
  model_json, num_bands, half_precision = key
  return ml_collections.ConfigDict(dict(model=json.loads(model_json),
                                        data=dict(num_bands=num_bands),
                                        half_precision=half_precision))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_weights(key: tuple[str, int, bool], mesh: jax.sharding.Mesh, seed: jax.Array
                     ) -> tuple[Any, Any]:
  """(params, model_state) of a fresh model, replicated on `mesh`; compiled once per model."""
  model = models.create_model(_config_of(key), nnx.Rngs(jax.random.key(seed)))
  weights = split_model(model)
  return jax.lax.with_sharding_constraint(weights, sharding.replicated_sharding(mesh))


def initial_weights(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                    ) -> tuple[Any, Any]:
  """(params, model_state) of a fresh model (seed config.seed), replicated on `mesh`.

  The initialiser is jitted with the model's config values as a static argument, so several
  models of one architecture (tests, notebooks, benchmarks) compile it once.
  """
  return _initial_weights(_model_key(config), mesh, jnp.asarray(config.seed, jnp.int32))


def create_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """A freshly initialised state (seed config.seed), materialised replicated on `mesh`."""
  replicated = sharding.replicated_sharding(mesh)
  params, model_state = initial_weights(config, mesh)
  opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
  return TrainState(step=step, params=params, model_state=model_state, opt_state=opt_state)


def abstract_weights(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """ShapeDtypeStructs of (params, model_state) of `config`'s model."""
  return split_model(abstract_model(config))


def abstract_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh) -> TrainState:
  """ShapeDtypeStructs of the state with replicated shardings on `mesh` (a restore target)."""
  params, model_state = abstract_weights(config)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        model_state=model_state, opt_state=jax.eval_shape(tx.init, params))
  return ckpt_lib.abstract_like(abstract, sharding.replicated_sharding(mesh))


def restore_train_state(checkpoints: ckpt_lib.Checkpoints, step: int,
                        abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
  """(state, data position) of checkpoint `step`, placed as `abstract_state` says."""
  restored, data_state, _ = checkpoints.restore(step, abstract_state.to_dict())
  return TrainState.from_dict(restored), data_state
