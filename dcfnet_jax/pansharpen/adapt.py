"""Target-adaptive fine-tuning: a model trained elsewhere (or none) adapted to the scene itself.

Z-PNN / lambda-PNN's idea (docs/adaptation.md): before sharpening a scene, fine-tune the network
on that very scene with an unsupervised full-resolution loss (`losses.objective`): its output,
filtered with the sensor's MTF and sampled at the co-registration phases, must match the MS
(spectral), and it must correlate with the PAN locally at least as well as the upsampled MS does
with the low-passed PAN (spatial). No ground truth is involved, so any scene can be adapted to.

`adapt(loaded, scenes, settings, ...)` runs `settings.steps` optimiser steps (Adam, the
sensor's learning rate unless given) on the whole scenes when they are small
(`patches.WholeScenes`) or on random patches of them (`patches.ScenePatches`), with the
package's one jitted, sharded train step (`steps.make_train_step`: weights replicated, the
batch split over the devices), logs every loss term with an ETA, and returns the adapted
model. For a model of another sensor the output layer is first reset (`reset_output_layer`):
the network starts as EXP with its trained features. `export_adapted` writes the result in the
exported .npz format, loadable by every tool.

BatchNorm (`settings.bn`): "eval" keeps the running statistics and uses them in the steps, as
inference does; "train" normalises with the statistics of each batch of patches and updates the
running ones with the model's momentum (what plain fine-tuning would do); "adabn" first
re-estimates the running statistics on the scene (`recalibrate_batch_norm`: the average of the
batch statistics of `BN_BATCHES` batches of patches, torch's cumulative average), then adapts in
eval mode: a model of another sensor or bit depth sees features normalised as in its training,
and the network adapted is the one that sharpens. docs/bench_adapt.md measures the three.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from dcfnet_jax import checkpoint as ckpt_lib
from dcfnet_jax import config_lib, inference, models, optim, sharding, steps
from dcfnet_jax.models import layers
from dcfnet_jax.data import pipeline
from dcfnet_jax.errors import InputError, RunError
from dcfnet_jax.losses import objective as objective_lib
from dcfnet_jax.pansharpen.patches import (SCOPES, ScenePatches, WholeScenes, check_patch,
                                           check_scenes, salient_origins)
from dcfnet_jax.progress import Progress
from dcfnet_jax.scenes import Scene
from dcfnet_jax.train_state import TrainState, create_train_state, merge_model, model_spec

log = logging.getLogger(__name__)

BN_MODES = ("eval", "train", "adabn")
SCHEDULES = ("constant", "cosine")
HEADS = ("keep", "reset")
# BatchNorm mode, learning-rate schedule and output layer when not chosen: the authors' recipe
# for their sensors (a constant rate; their networks have no BatchNorm, "eval" leaves a model's
# as it is), ours for any other sensor (a model of another sensor or bit depth: its output layer
# is reset so that adaptation starts from EXP with the trained features; docs/bench_adapt.md).
AUTHORS_RECIPE = dict(bn="eval", schedule="constant", head="keep")
OTHER_RECIPE = dict(bn="adabn", schedule="cosine", head="reset")
BN_BATCHES = 16  # batches of patches whose statistics "adabn" averages
DEFAULT_PATCH = 128
DEFAULT_BATCH = 2  # patches per step: what docs/bench_adapt.md measured on 2 CPU cores


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
  """How to adapt (the --adapt-* flags). None: the sensor's default (`losses.objective`)."""

  steps: int
  loss: str | None = None  # None: the sensor's (`objective.default_kind`)
  learning_rate: float | None = None
  weight_decay: float | None = None
  beta: float | None = None
  alpha: float | None = None
  beta_prime: float | None = None
  gamma: float | None = None
  spatial_mean: str = "selected"
  patch: int = DEFAULT_PATCH
  batch_size: int = DEFAULT_BATCH
  bn: str | None = None  # None: the sensor's (AUTHORS_RECIPE / OTHER_RECIPE)
  schedule: str | None = None  # "constant" or "cosine" (to 0 at the last step); None: the sensor's
  salient: float = 1.0  # fraction of patch positions kept by salient selection (1: all)
  seed: int = 0
  scope: str = "auto"  # "scene": whole scenes every step; "patches"; "auto": by scene size
  head: str | None = None  # "reset": output layer zeroed first; None: the sensor's (residual only)

  def validate(self) -> None:
    """Raises InputError naming the flag whose value cannot work (cheap, before any I/O)."""
    if self.steps < 0:
      raise InputError(f"--adapt-steps {self.steps} must be >= 0")
    if self.loss is not None:
      objective_lib.check_kind(self.loss)
    if self.bn is not None and self.bn not in BN_MODES:
      raise InputError(f"--adapt-bn {self.bn!r}: expected one of {', '.join(BN_MODES)}")
    if self.schedule is not None and self.schedule not in SCHEDULES:
      raise InputError(f"--adapt-schedule {self.schedule!r}: expected one of "
                       f"{', '.join(SCHEDULES)}")
    for flag, value in (("--adapt-lr", self.learning_rate),
                        ("--adapt-weight-decay", self.weight_decay), ("--adapt-beta", self.beta),
                        ("--adapt-alpha", self.alpha), ("--adapt-beta-prime", self.beta_prime),
                        ("--adapt-gamma", self.gamma)):
      if value is not None and not (math.isfinite(value) and value >= 0):
        raise InputError(f"{flag} {value} must be a finite number >= 0")
    if self.learning_rate is not None and self.learning_rate <= 0:
      raise InputError(f"--adapt-lr {self.learning_rate} must be > 0")
    if self.batch_size < 1:
      raise InputError(f"--adapt-batch {self.batch_size} must be >= 1")
    if not 0.0 < self.salient <= 1.0:
      raise InputError(f"--adapt-salient {self.salient} must be in (0, 1]")
    check_patch(self.patch, [])
    if self.head is not None and self.head not in HEADS:
      raise InputError(f"--adapt-head {self.head!r}: expected one of {', '.join(HEADS)}")
    if self.scope not in SCOPES:
      raise InputError(f"--adapt-scope {self.scope!r}: expected one of {', '.join(SCOPES)}")

  def for_sensor(self, sensor: str, residual: bool = True) -> AdaptSettings:
    """These settings with the loss, BatchNorm mode, schedule and head not chosen set to
    `sensor`'s (the head is kept for a model that is not residual: zeroed it outputs 0)."""
    recipe = (AUTHORS_RECIPE if objective_lib.has_published_settings(sensor) else OTHER_RECIPE)
    return dataclasses.replace(
        self, loss=self.loss or objective_lib.default_kind(sensor),
        bn=self.bn or recipe["bn"], schedule=self.schedule or recipe["schedule"],
        head=self.head or (recipe["head"] if residual else "keep"))

  def resolve(self, sensor: str) -> tuple[objective_lib.FullResolutionObjective, float, float]:
    """(objective, learning rate, weight decay) for `sensor`, defaults filled in."""
    loss = self.loss or objective_lib.default_kind(sensor)
    defaults = objective_lib.sensor_settings(sensor, loss)
    objective = objective_lib.make_objective(
        loss, sensor, spatial_mean=self.spatial_mean, beta=self.beta, alpha=self.alpha,
        beta_prime=self.beta_prime, gamma=self.gamma)
    lr = defaults["learning_rate"] if self.learning_rate is None else self.learning_rate
    wd = defaults["weight_decay"] if self.weight_decay is None else self.weight_decay
    return objective, float(lr), float(wd)


@dataclasses.dataclass
class AdaptResult:
  """The adapted model and what happened (per-step loss terms, timings)."""

  model: inference.LoadedModel
  history: list[dict[str, float]]
  report: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The models adapted: a loaded one, or a fresh one (zero-shot)


def fresh_model(name: str, num_bands: int, *, img_range: float, bits: int, sensor: str,
                seed: int = 0) -> inference.LoadedModel:
  """A freshly initialised `name` network for `num_bands` bands (zero-shot adaptation).

  DCFNet starts with its last convolution at zero (`head_init="zero"`), so that the residual
  network starts as the upsampled MS (EXP) and adaptation only has to add detail.
  """
  if name.lower() not in models.model_names():
    raise InputError(f"--model {name!r}: unknown network; expected one of "
                     f"{', '.join(models.model_names())}")
  config = config_lib.get_config("default")
  with config.unlocked():
    config.model.name = name.lower()
    if name.lower() == "dcfnet":
      config.model.head_init = "zero"
    config.data.update(dict(num_bands=int(num_bands), sensor=sensor, img_range=float(img_range),
                            bits=int(bits)))
    config.seed = int(seed)
  mesh = sharding.make_mesh(jax.local_devices()[:1])
  state = create_train_state(config, optax.identity(), mesh)
  spec = model_spec(config)
  params, model_state = jax.device_get((state.params, state.model_state))
  metadata = ckpt_lib.metadata_from_config(config, spec.residual, step=0,
                                           source=f"fresh {name} (seed {seed})")
  return inference.LoadedModel(spec, params, model_state, config, metadata,
                               f"a fresh {name} (seed {seed})")


def output_layer_path(loaded: inference.LoadedModel) -> tuple[Any, ...]:
  """The params path of `loaded`'s output layer; refuses a model `--adapt-head reset` cannot
  work on (not residual, or a network that names no `output_layer`)."""
  if not loaded.residual:
    raise InputError(f"--adapt-head reset: {loaded.source} is not residual (output = network, "
                     "not network + lms), so a zeroed output layer would output 0; use "
                     "--adapt-head keep")
  network = type(merge_model(loaded.spec, loaded.params, loaded.model_state))
  path = getattr(network, "output_layer", None)
  if path is None:
    raise InputError(f"--adapt-head reset: {network.__name__} names no output_layer; use "
                     "--adapt-head keep")
  return tuple(path)


def reset_output_layer(loaded: inference.LoadedModel) -> inference.LoadedModel:
  """`loaded` with its output layer's weights and bias at zero (`--adapt-head reset`).

  A residual network then outputs lms (EXP) exactly, while every trained feature before the
  last layer is kept: adaptation starts from EXP's spectral fidelity instead of undoing the
  detail a model of another sensor or bit depth would inject (docs/bench_adapt.md), the usual
  transfer-learning step of a new head for a new domain.
  """
  params = jax.tree.map(np.array, jax.device_get(loaded.params))  # a copy
  layer = params
  for key in output_layer_path(loaded):
    layer = layer[key]
  for name in ("kernel", "bias"):
    if name in layer:
      layer[name][...] = 0
  return dataclasses.replace(loaded, params=params)


def run_bits(loaded: inference.LoadedModel, img_range: float) -> int:
  """The data's bits: the checkpoint's, or those of an overriding img_range (--img-range)."""
  if loaded.bits and float(img_range) == loaded.img_range:
    return loaded.bits
  return int(math.ceil(math.log2(float(img_range) + 1)))


def check_model_fits(loaded: inference.LoadedModel, num_bands: int, where: str) -> None:
  """Refuses a model for another band count than the scene's."""
  if num_bands != loaded.num_bands:
    raise InputError(
        f"{where}: the MS has {num_bands} bands but the checkpoint {loaded.source} is a "
        f"{loaded.num_bands}-band model; choose bands with --bands (1-based, e.g. --bands "
        "2,3,4,5)")


# ---------------------------------------------------------------------------------------------
# The adaptation loop


def _optimizer(settings: AdaptSettings, lr: float, weight_decay: float
               ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam (torch style, coupled weight decay as lambda-PNN's), constant or cosine rate."""
  config = ml_collections.ConfigDict(dict(
      learning_rate=lr, lr_schedule=settings.schedule, warmup_steps=0, weight_decay=weight_decay,
      grad_clip_norm=0.0, optimizer="adam", adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
      num_train_steps=max(settings.steps, 1), num_epochs=0))
  return optim.make_optimizer(config, max(settings.steps, 1))


def recalibrate_batch_norm(spec: Any, params: Any, model_state: Any, source: ScenePatches,
                           mesh: jax.sharding.Mesh, rows: slice, num_batches: int = BN_BATCHES,
                           first_step: int = 10**6) -> Any:
  """Running BatchNorm statistics re-estimated on the scene (AdaBN).

  Every BatchNorm's momentum is set to 0 in a copy of the train-mode graph, so one train-mode
  forward pass returns the statistics of its batch (mean, unbiased variance); their average
  over `num_batches` batches of patches (drawn from steps `first_step`, ... so that they differ
  from the training draws) replaces the running statistics. Other state is kept.
  """
  model = merge_model(spec, params, model_state, train=True)
  found = 0
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (layers.BatchNorm, nnx.BatchNorm)):
      module.momentum = 0.0
      found += 1
  if not found:
    return model_state
  graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  replicated = sharding.replicated_sharding(mesh)

  def batch_stats(p, s, batch):
    m = nnx.merge(graphdef, p, s)
    models.predict(m, batch["pan"], batch["lms"], batch["ms"], residual=spec.residual)
    return nnx.as_pure(nnx.state(m, nnx.Not(nnx.Param)))

  fn = jax.jit(batch_stats, in_shardings=(replicated, replicated, sharding.batch_sharding(mesh)),
               out_shardings=replicated)
  total = None
  for k in range(num_batches):
    batch = sharding.to_global_batch({key: v[rows] for key, v in
                                      source.batch(first_step + k).items()}, mesh)
    stats = jax.device_get(fn(params, model_state, batch))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  return jax.tree.map(
      lambda t, old: (t / num_batches).astype(old.dtype)
      if np.issubdtype(np.asarray(old).dtype, np.floating) else old,
      total, jax.device_get(model_state))


def _terms_text(metrics: dict[str, float]) -> str:
  terms = ", ".join(f"{k[5:]} {v:.4g}" for k, v in metrics.items() if k.startswith("loss_"))
  return f"loss {metrics['loss']:.4g} ({terms})"


def make_source(scenes: Sequence[Scene], settings: AdaptSettings, scope: str, batch_size: int,
                img_range: float, sensor: str) -> ScenePatches | WholeScenes:
  """The batches of resolved `settings` (`for_sensor`) and `scope` (checked by
  `patches.check_scenes`): whole scenes, or patches (salient selection when
  `settings.salient` < 1)."""
  if scope == "scene":
    return WholeScenes(scenes, img_range, sensor, settings.loss)
  candidates = None
  if settings.salient < 1.0:
    candidates = [salient_origins(s, settings.patch, settings.salient, seed=settings.seed)
                  for s in scenes]
  return ScenePatches(scenes, settings.patch, batch_size, img_range, sensor,
                      seed=settings.seed, candidates=candidates)


def adapt(loaded: inference.LoadedModel, scenes: Sequence[Scene], settings: AdaptSettings, *,
          img_range: float, sensor: str, devices: Sequence[Any] | None = None,
          progress: bool = True, label: str = "adapting",
          on_step: Callable[[int, Any, Any], None] | None = None) -> AdaptResult:
  """Fine-tunes `loaded` on `scenes` with the full-resolution loss; returns the adapted model.

  The batch of patches is `settings.batch_size` rounded up to a multiple of the device count
  and split over a 1-D mesh of `devices` (default: all local devices). `on_step(step, params,
  model_state)` is called after every step (e.g. to assess the model along the way; the
  arrays are the step's, to be copied before the next one).
  """
  settings.validate()
  settings = settings.for_sensor(sensor, loaded.residual)
  for scene in scenes:
    check_model_fits(loaded, scene.info.ms_shape[-1], scene.info.name)
  start = reset_output_layer(loaded) if settings.head == "reset" else loaded
  devices = list(jax.local_devices() if devices is None else devices)
  scope = check_scenes(settings.scope, settings.patch, scenes, settings.loss)
  if scope == "scene":  # one scene per batch row: as many devices as divide the scenes
    devices = devices[:max(k for k in range(1, len(devices) + 1) if len(scenes) % k == 0)]
    batch_size = len(scenes)
  else:
    batch_size = -(-settings.batch_size // len(devices)) * len(devices)
  mesh = sharding.make_mesh(devices)
  objective, lr, weight_decay = settings.resolve(sensor)
  t_setup = time.perf_counter()
  source = make_source(scenes, settings, scope, batch_size, img_range, sensor)
  setup_seconds = time.perf_counter() - t_setup
  tx, schedule = _optimizer(settings, lr, weight_decay)
  replicated = sharding.replicated_sharding(mesh)
  # Copies: the step donates its state, and the loaded model must stay usable.
  params, model_state = sharding.replicate(
      jax.tree.map(np.array, jax.device_get((start.params, start.model_state))), mesh)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                     model_state=model_state,
                     opt_state=jax.jit(tx.init, out_shardings=replicated)(params))
  rows = pipeline.process_rows(batch_size, jax.process_index(), jax.process_count())
  if settings.bn == "adabn" and settings.steps:
    t_bn = time.perf_counter()
    bn_batches = 1 if source.deterministic else BN_BATCHES
    model_state = sharding.replicate(recalibrate_batch_norm(
        loaded.spec, params, model_state, source, mesh, rows, bn_batches), mesh)
    log.info("BatchNorm statistics re-estimated on %d batch(es) of the scene in %.1f s.",
             bn_batches, time.perf_counter() - t_bn)
    state = dataclasses.replace(state, model_state=model_state)
  step_fn = steps.make_train_step(loaded.spec, tx, schedule, mesh, objective=objective,
                                  bn_train=settings.bn == "train")
  what = (f"the whole scene{'s' if batch_size > 1 else ''}" if scope == "scene" else
          f"{batch_size} patches of {settings.patch}x{settings.patch}")
  log.info("Adapting %s to %s: %d steps of %s on %d device(s), %s, lr %g%s, "
           "BatchNorm %s, output layer %s (%s).", loaded.name, ", ".join(s.info.name for s in scenes),
           settings.steps, what, len(devices),
           objective.describe(), lr, f", weight decay {weight_decay:g}" if weight_decay else "",
           settings.bn, settings.head, objective_lib.settings_source(sensor))
  history: list[dict[str, float]] = []
  compile_seconds = 0.0
  t0 = time.perf_counter()
  if settings.steps:
    batch = sharding.to_global_batch({k: v[rows] for k, v in source.batch(0).items()}, mesh)
    fixed_batch = source.deterministic  # whole scenes: the batch stays on the devices
    t_compile = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - t_compile
    bar = Progress(settings.steps, label, "steps", enabled=progress)
    t0 = time.perf_counter()
    for step in range(settings.steps):
      state, metrics = compiled(state, batch)
      if step + 1 < settings.steps and not fixed_batch:  # next patches while the step runs
        batch = sharding.to_global_batch(
            {k: v[rows] for k, v in source.batch(step + 1).items()}, mesh)
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not (math.isfinite(values["loss"]) and values["state_finite"] == 1.0):
        raise RunError(f"adaptation diverged at step {step + 1} (loss {values['loss']}); "
                       "nothing was written. Lower --adapt-lr.")
      history.append({k: v for k, v in values.items() if k != "state_finite"})
      bar.update(step + 1, _terms_text(values))
      if on_step is not None:
        on_step(step + 1, state.params, state.model_state)
  seconds = time.perf_counter() - t0
  params, model_state = jax.device_get((state.params, state.model_state))
  report = dict(
      source=loaded.source, steps=settings.steps, loss=objective.kind,
      weights=objective.weights(), spatial_mean=objective.spatial_mean, learning_rate=lr,
      weight_decay=weight_decay, schedule=settings.schedule, scope=scope,
      patch=settings.patch if scope == "patches" else None,
      batch_size=batch_size, bn=settings.bn, head=settings.head,
      salient=settings.salient, seed=settings.seed, sensor=objective.sensor,
      defaults=objective_lib.settings_source(sensor), img_range=float(img_range),
      devices=len(devices), scenes=[s.info.name for s in scenes],
      patch_positions=[len(c) for c in source.candidates],
      phases=[p.tolist() for p in source.phases],
      setup_seconds=setup_seconds, compile_seconds=compile_seconds, seconds=seconds,
      seconds_per_step=seconds / settings.steps if settings.steps else 0.0,
      first=history[0] if history else None, last=history[-1] if history else None)
  if history:
    log.info("Adapted in %.1f s (%.2f s/step, compile %.1f s): %s -> %s.", seconds,
             report["seconds_per_step"], compile_seconds, _terms_text(history[0]),
             _terms_text(history[-1]))
  metadata = dict(loaded.metadata)
  metadata.update(img_range=float(img_range), bits=run_bits(loaded, img_range),
                  sensor=objective.sensor, step=settings.steps,
                  source=f"{loaded.source} adapted to {', '.join(report['scenes'])}",
                  adapted=_json_safe(report))
  adapted = dataclasses.replace(loaded, params=params, model_state=model_state,
                                metadata=metadata,
                                source=f"{loaded.source} (adapted, {settings.steps} steps)")
  return AdaptResult(adapted, history, report)


def _json_safe(report: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in report.items() if k not in ("first", "last")} | dict(
      first_loss=report["first"], last_loss=report["last"])


def export_adapted(path: str | pathlib.Path, adapted: inference.LoadedModel) -> pathlib.Path:
  """Writes the adapted weights as an exported .npz (+ .json): `--checkpoint` of every tool."""
  module = merge_model(adapted.spec, adapted.params, adapted.model_state)
  if "model_config" not in adapted.metadata:
    raise RunError(f"{adapted.source}: its metadata has no model_config to export")
  out = ckpt_lib.export_params(path, module, adapted.metadata)
  log.info("Adapted weights written to %s.", out)
  return out


def history_array(history: Sequence[dict[str, float]], key: str = "loss") -> np.ndarray:
  return np.array([h[key] for h in history], np.float64)
