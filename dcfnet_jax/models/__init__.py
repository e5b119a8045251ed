"""Model registry and the one prediction rule.

`create_model(config, rngs)` builds the network named by `config.model.name`. To add a network,
write a constructor `(config, rngs, dtype) -> nnx.Module` and register it with
`register_model("name", constructor)` (or add it to `_REGISTRY` below). Every network takes
`(pan, lms, mms, ms)` in NHWC and returns its raw output; a class attribute `default_residual`
says whether `lms` is added when `config.model.residual` is None, and `output_layer` (a path
into the parameters) names the last layer, which adaptation may reset (`--adapt-head reset`).

`predict(model, pan, lms, ms, residual=...)` is what training, evaluation and sharpening all
compute from a network: `mms = make_mms(ms)`, the raw output in float32, plus `lms` when
residual. Scaling, clipping and sharding are the inference layer's (`dcfnet_jax.inference`).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dcfnet_jax.errors import InputError
from dcfnet_jax.models.baselines import CONSTRUCTORS as _BASELINE_CONSTRUCTORS
from dcfnet_jax.models.dcfnet import DCFNet, make_mms

ModelConstructor = Callable[[ml_collections.ConfigDict, nnx.Rngs, Any], nnx.Module]


def _dcfnet(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype: Any) -> nnx.Module:
  # Configs saved before these fields existed lack them: DCFNet's (official) defaults apply.
  options = {k: config.model[k] for k in ("head_init", "bn_momentum_torch") if k in config.model}
  return DCFNet(config.data.num_bands, rngs=rngs, dtype=dtype, **options)


_REGISTRY: dict[str, ModelConstructor] = {
    "dcfnet": _dcfnet,
    **_BASELINE_CONSTRUCTORS,  # pnn, dicnn1, pannet, dmdnet, fusionnet (models/baselines.py)
}


def register_model(name: str, constructor: ModelConstructor) -> None:
  """Registers `constructor(config, rngs, dtype) -> nnx.Module` under `name` (lower case)."""
  key = name.lower()
  if key in _REGISTRY and _REGISTRY[key] is not constructor:
    raise ValueError(f"a model named {name!r} is already registered")
  _REGISTRY[key] = constructor


def model_names() -> list[str]:
  """The names `config.model.name` accepts."""
  return sorted(_REGISTRY)


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """bfloat16 when `config.half_precision`, else float32 (parameters are always float32)."""
  return jnp.bfloat16 if config.get("half_precision", False) else jnp.float32


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
  """Builds `config.model.name` for `config.data.num_bands` bands, in train mode."""
  name = str(config.model.name).lower()
  if name not in _REGISTRY:
    raise InputError(f"unknown config.model.name {config.model.name!r}; known models: "
                     f"{', '.join(model_names())}")
  return _REGISTRY[name](config, rngs, compute_dtype(config))


def resolve_residual(config: ml_collections.ConfigDict, model: nnx.Module) -> bool:
  """Whether the steps add lms to the output: config.model.residual, else the model's default."""
  residual = config.model.get("residual", None)
  if residual is None:
    residual = getattr(type(model), "default_residual", None)
    if residual is None:
      raise InputError(f"config.model.residual is None and {type(model).__name__} has no "
                       "default_residual class attribute; set --config.model.residual")
  return bool(residual)


def predict(model: nnx.Module, pan: jax.Array, lms: jax.Array, ms: jax.Array, *,
            residual: bool) -> jax.Array:
  """The model's prediction in model units, float32: network(pan, lms, mms, ms) [+ lms].

  `mms` is derived from `ms` as the official train step does (`make_mms`). Mixed precision is
  the model's business (a bfloat16 compute dtype); the output and the residual sum are float32.
  """
  out = model(pan, lms, make_mms(ms), ms).astype(jnp.float32)
  return out + lms.astype(jnp.float32) if residual else out
