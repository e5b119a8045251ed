"""The full-resolution training objective: which loss (Z-PNN or lambda-PNN), its weights, and
the authors' settings per sensor.

`FullResolutionObjective` is what a training step calls instead of the supervised pixel loss
when there is no ground truth (`config.loss = "full_resolution"`, and target-adaptive
fine-tuning, `dcfnet_jax.adapt`): `objective(pred, batch) -> (total, {term: value})` on a batch
in model units (`pan` (N, H, W, 1), `lms` (N, H, W, C), `ms` (N, H/4, W/4, C), optionally
`phases` (N, C, 2) int32 from `metrics.coregistration_phases`; without them the phases are
searched per image on the batch itself). The loss functions are those of
`dcfnet_jax.losses.full_resolution`, called, not copied.

Normalisation: the authors divide the data by 2^bits; the package divides by img_range =
2^bits - 1. Every term but Z-PNN's spectral L1 is scale invariant (correlations, ERGAS, Q2n);
the L1 term differs by the factor 2^bits / (2^bits - 1), e.g. 1.0005 for 11-bit data.

`SENSOR_SETTINGS` holds the authors' settings (docs/full_resolution.md §4; FULL_RESOLUTION facts):
Z-PNN Adam lr 1e-5 (WV2/WV3) or 5e-5 (GeoEye1), beta 0.36 or 0.25; lambda-PNN Adam with weight
decay 1e-4, lr 4e-5 / 3.5e-5 / 5e-5 (WV3 / WV2 / GeoEye1), alpha 0.05, beta' 1.25 / 1.0,
gamma 5 / 6. What the facts leave open, and every other sensor, is ours and is documented in
docs/adaptation.md (`OTHER_SENSORS`, measured on a real Landsat 8 scene with a model trained on
Landsat 7: a cross-sensor start needs a larger step than a same-sensor fine-tuning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dcfnet_jax import imaging
from dcfnet_jax.errors import InputError
from dcfnet_jax.losses import full_resolution as fr
from dcfnet_jax.metrics import reprojection

KINDS = ("zpnn", "lambda")
SPATIAL_MEANS = fr.SPATIAL_MEANS
RATIO = 4  # the authors sample the reprojection every 4 pixels: ratio 4 only

# Per sensor and loss: learning rate, weight decay and loss weights of the authors.
# GeoEye1's lambda-PNN weights beta' and gamma are not in our facts: WV2's are assumed.
_ZPNN_WV = dict(learning_rate=1e-5, weight_decay=0.0, beta=0.36)
SENSOR_SETTINGS: dict[str, dict[str, dict[str, float]]] = {
    "wv3": dict(zpnn=_ZPNN_WV, **{"lambda": dict(learning_rate=4e-5, weight_decay=1e-4,
                                                 alpha=0.05, beta_prime=1.25, gamma=5.0)}),
    "wv2": dict(zpnn=_ZPNN_WV, **{"lambda": dict(learning_rate=3.5e-5, weight_decay=1e-4,
                                                 alpha=0.05, beta_prime=1.0, gamma=6.0)}),
    "geoeye1": dict(zpnn=dict(learning_rate=5e-5, weight_decay=0.0, beta=0.25),
                    **{"lambda": dict(learning_rate=5e-5, weight_decay=1e-4, alpha=0.05,
                                      beta_prime=1.0, gamma=6.0)}),
}
# Any other sensor (QuickBird, IKONOS, Pleiades, GF-2, Landsat as "none", ...): ours, measured
# in docs/bench_adapt.md (the Landsat 7 demo model adapted to a real Landsat 8 scene). The
# learning rate is larger because the typical start is a model of another sensor or bit depth
# (or none), which has more to learn than the authors' same-sensor fine-tuning; the spatial
# weights are much smaller than the authors' (with beta 0.25 the spatial term undid the
# spectral fidelity there, R-Q2n 0.83 vs EXP's 0.98; gamma 1 lost R-ERGAS to EXP); lambda, the
# default loss of these sensors, keeps alpha 0.05 and beta' 1.
OTHER_SENSORS: dict[str, dict[str, float]] = dict(
    zpnn=dict(learning_rate=1e-4, weight_decay=0.0, beta=1e-3),
    **{"lambda": dict(learning_rate=1e-4, weight_decay=1e-4, alpha=0.05, beta_prime=1.0,
                      gamma=0.3)})
WEIGHT_NAMES = {"zpnn": ("beta",), "lambda": ("alpha", "beta_prime", "gamma")}
# The loss when none is chosen: Z-PNN's for the authors' sensors, ours for the others.
AUTHORS_KIND = "zpnn"
OTHER_KIND = "lambda"


def sensor_key(sensor: Any) -> str:
  """The sensor table's name of `sensor` ("WV3" -> "wv3"); unknown names stay as given."""
  try:
    return imaging.get_sensor(sensor).name
  except ValueError:
    return str(sensor).lower()


def sensor_settings(sensor: Any, kind: str) -> dict[str, float]:
  """The settings (learning_rate, weight_decay and the loss weights) for `sensor` and `kind`."""
  check_kind(kind)
  table = SENSOR_SETTINGS.get(sensor_key(sensor))
  return dict(table[kind] if table else OTHER_SENSORS[kind])


def has_published_settings(sensor: Any) -> bool:
  """Whether the authors published settings for `sensor` (else ours, `OTHER_SENSORS`)."""
  return sensor_key(sensor) in SENSOR_SETTINGS


def default_kind(sensor: Any) -> str:
  """The loss of `sensor` when none is chosen (`AUTHORS_KIND` / `OTHER_KIND`)."""
  return AUTHORS_KIND if has_published_settings(sensor) else OTHER_KIND


def settings_source(sensor: Any) -> str:
  """Where the defaults for `sensor` come from, for messages and reports."""
  key = sensor_key(sensor)
  return f"the authors' {key.upper()} settings" if has_published_settings(key) else (
      f"our settings for sensors without published ones ({key})")


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise InputError(f"full-resolution loss {kind!r}: expected one of {', '.join(KINDS)}")


@dataclasses.dataclass(frozen=True)
class FullResolutionObjective:
  """The unsupervised loss of a step: Z-PNN (`beta`) or lambda-PNN (`alpha`, `beta_prime`,
  `gamma`), with the sensor's MTF bank for the reprojection. Hashable (a jit static)."""

  kind: str = "zpnn"
  sensor: str = "none"
  beta: float = 0.36
  alpha: float = 0.05
  beta_prime: float = 1.0
  gamma: float = 6.0
  spatial_mean: str = "selected"
  ratio: int = RATIO

  def __post_init__(self):
    check_kind(self.kind)
    if self.spatial_mean not in SPATIAL_MEANS:
      raise InputError(f"spatial mean {self.spatial_mean!r}: expected one of "
                       f"{', '.join(SPATIAL_MEANS)}")
    if self.ratio != RATIO:
      raise InputError(f"the full-resolution losses sample every {RATIO} pixels (the authors' "
                       f"step): ratio {RATIO} only, got {self.ratio}")
    for name in WEIGHT_NAMES[self.kind]:
      if not getattr(self, name) >= 0:
        raise InputError(f"full-resolution loss weight {name} must be >= 0, got "
                         f"{getattr(self, name)}")

  @property
  def terms(self) -> tuple[str, ...]:
    return fr.ZPNN_TERMS if self.kind == "zpnn" else fr.LAMBDA_PNN_TERMS

  def weights(self) -> dict[str, float]:
    return {name: float(getattr(self, name)) for name in WEIGHT_NAMES[self.kind]}

  def describe(self) -> str:
    """e.g. 'zpnn (beta 0.36)'."""
    return f"{self.kind} (" + ", ".join(f"{k} {v:g}" for k, v in self.weights().items()) + ")"

  def phases(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    """(N, C, 2) phases: the batch's own, or searched per image (no gradient)."""
    if "phases" in batch:
      return batch["phases"]
    return jax.lax.stop_gradient(reprojection.coregistration_phases(
        batch["ms"], batch["pan"], sensor=self.sensor, ratio=self.ratio))

  def __call__(self, pred: jax.Array, batch: Mapping[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, terms) of `pred` (N, H, W, C, model units) against the batch's ms, pan, lms."""
    args = (pred, batch["ms"], batch["pan"], batch["lms"], self.phases(batch))
    common = dict(sensor=self.sensor, ratio=self.ratio, spatial_mean=self.spatial_mean)
    if self.kind == "zpnn":
      return fr.zpnn_loss(*args, beta=self.beta, **common)
    return fr.lambda_pnn_loss(*args, alpha=self.alpha, beta_prime=self.beta_prime,
                              gamma=self.gamma, **common)


def make_objective(kind: str, sensor: Any, *, spatial_mean: str = "selected",
                   **weights: float | None) -> FullResolutionObjective:
  """The objective of `kind` for `sensor`: weights given (not None) or the sensor's defaults."""
  defaults = sensor_settings(sensor, kind)
  unknown = sorted(set(weights) - set(WEIGHT_NAMES["zpnn"] + WEIGHT_NAMES["lambda"]))
  if unknown:
    raise ValueError(f"unknown loss weights {unknown}")
  chosen = {name: float(defaults[name] if weights.get(name) is None else weights[name])
            for name in WEIGHT_NAMES[kind]}
  return FullResolutionObjective(kind=kind, sensor=sensor_key(sensor),
                                 spatial_mean=spatial_mean, **chosen)


def objective_from_config(config: Any) -> FullResolutionObjective | None:
  """The objective of `config.loss == "full_resolution"` (None for the supervised loss)."""
  if config.get("loss", "supervised") != "full_resolution":
    return None
  fr_config = config.full_resolution
  return make_objective(fr_config.kind, config.data.sensor, spatial_mean=fr_config.spatial_mean,
                        **{name: fr_config.get(name) for name in ("beta", "alpha", "beta_prime",
                                                                 "gamma")})


def loss_in_model_units(objective: FullResolutionObjective, pred_dn: Any,
                        batch_dn: Mapping[str, Any], img_range: float
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective of DN arrays (validation reports it on predictions made in DN)."""
  scale = jnp.float32(img_range)
  batch = {k: jnp.asarray(v, jnp.float32) / scale for k, v in batch_dn.items()
           if k in ("pan", "lms", "ms")}
  return objective(jnp.asarray(pred_dn, jnp.float32) / scale, batch)
