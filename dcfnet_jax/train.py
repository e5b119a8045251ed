"""Training and evaluation: train state, the jitted data-parallel steps and the loop.

One jitted `train_step(state, batch) -> (state, metrics)` runs over the whole device mesh: the
state is replicated (`P()`), the global batch is split along the mesh's "data" axis
(`P("data")`), and XLA inserts the gradient all-reduce. Train-mode BatchNorm statistics are
means over the *global* batch (a `jnp.mean` under jit over a sharded axis is global), i.e.
SyncBN semantics, not the per-device statistics of plain PyTorch DDP.

Loss: mean squared error over all elements between `pred` and `gt`, with
`pred = out + lms` when residual learning is on (`models.resolve_residual`) else `out`. The
paper's per-sample mean squared Frobenius norm ‖pred − gt‖²_F / N equals H·W·C × this MSE,
a constant factor (64·64·8 = 32768 for WV3 patches) that Adam's scale invariance absorbs up to
its epsilon; the official code uses the mean (`nn.MSELoss`), as we do.

Optimiser: torch-style Adam (coupled L2 `weight_decay`, 0 officially) or momentum SGD, optional
global-norm clipping before it, learning-rate schedule "constant", "cosine" or "step" (StepLR),
each after an optional linear warmup.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from dcfnet_jax import checkpoint as ckpt_lib
from dcfnet_jax import imaging, io_utils, metrics, models, previews, reports, sharding, tb_writer
from dcfnet_jax.data import pancollection, pipeline
from dcfnet_jax.models import dcfnet, folding

MODEL_INPUTS = ("pan", "lms", "ms")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; nothing was saved after the last good step."""


# ---------------------------------------------------------------------------------------------
# State and model bookkeeping


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


def create_model(config: ml_collections.ConfigDict, seed: int | None = None) -> nnx.Module:
  return models.create_model(config, nnx.Rngs(config.seed if seed is None else seed))


def model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
  """Graph definitions and loss settings from an abstract (shape-only) model."""
  model = nnx.eval_shape(lambda: create_model(config))
  residual = bool(models.resolve_residual(config, model))
  model.train()
  train_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  loss = getattr(model, "loss", "mse")
  if loss not in ("mse", "l1"):
    raise ValueError(f"model {config.model.name!r} asks for loss {loss!r}; supported: mse, l1")
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
# Optimiser and schedule


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """config.num_train_steps when > 0, else num_epochs × steps per epoch."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  if config.num_epochs <= 0:
    raise ValueError("set config.num_train_steps > 0 or config.num_epochs > 0 "
                     f"(got {config.num_train_steps} and {config.num_epochs})")
  return int(config.num_epochs) * int(steps_per_epoch)


def _step_decay_interval(config: ml_collections.ConfigDict, steps_per_epoch: int | None) -> int:
  """Steps between two decays of the "step" schedule (from steps or from epochs)."""
  every_steps, every_epochs = int(config.lr_decay_every_steps), int(config.lr_decay_every_epochs)
  if every_steps > 0 and every_epochs > 0:
    raise ValueError("set only one of config.lr_decay_every_steps and "
                     f"config.lr_decay_every_epochs (got {every_steps} and {every_epochs})")
  if every_epochs > 0:
    if not steps_per_epoch:
      raise ValueError("config.lr_decay_every_epochs needs the number of steps per epoch; "
                       "use config.lr_decay_every_steps here")
    return every_epochs * int(steps_per_epoch)
  if every_steps > 0:
    return every_steps
  raise ValueError('config.lr_schedule="step" needs config.lr_decay_every_steps > 0 or '
                   f"config.lr_decay_every_epochs > 0 (got {every_steps} and {every_epochs})")


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int | None = None) -> optax.Schedule:
  """config.lr_schedule after a linear warmup of config.warmup_steps.

  "constant"; "cosine" to 0 at the end; "step": lr × lr_decay_factor^floor(step / interval),
  the torch `StepLR` of the reference DiCNN1 recipe (interval counted after the warmup).
  """
  lr, warmup = float(config.learning_rate), int(config.warmup_steps)
  if warmup < 0:
    raise ValueError(f"config.warmup_steps must be >= 0, got {warmup}")
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.lr_schedule == "step":
    factor = float(config.lr_decay_factor)
    if not 0.0 < factor <= 1.0:
      raise ValueError(f"config.lr_decay_factor must be in (0, 1], got {factor}")
    main = optax.exponential_decay(lr, _step_decay_interval(config, steps_per_epoch), factor,
                                   staircase=True)
  else:
    raise ValueError("config.lr_schedule must be 'constant', 'cosine' or 'step', got "
                     f"{config.lr_schedule!r}")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Torch-style optimiser: clip (optional) → + weight_decay·w (coupled L2) → Adam or SGD → −lr.

  config.optimizer "adam" is torch.optim.Adam; "sgd" is torch.optim.SGD with momentum
  config.sgd_momentum (buf = μ·buf + g; w -= lr·buf), the reference PNN recipe.
  """
  schedule = make_schedule(config, total_steps, steps_per_epoch)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(float(config.weight_decay)))
  optimizer = config.get("optimizer", "adam")  # configs saved before the field existed
  if optimizer == "adam":
    parts.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
  elif optimizer == "sgd":
    momentum = float(config.get("sgd_momentum", 0.9))
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"config.sgd_momentum must be in [0, 1), got {momentum}")
    if momentum > 0:
      parts.append(optax.trace(decay=momentum, nesterov=False))
  else:
    raise ValueError(f"config.optimizer must be 'adam' or 'sgd', got {optimizer!r}")
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule


# ---------------------------------------------------------------------------------------------
# Pure steps


def forward(spec: ModelSpec, params: Any, model_state: Any, batch: Mapping[str, jax.Array], *,
            train: bool) -> tuple[jax.Array, Any]:
  """(pred in model units, float32; new model_state). pred = out + lms when residual.

  Mixed precision (config.half_precision) is the model's business: `models.create_model`
  builds it with a bfloat16 compute dtype and float32 parameters; the output, the residual sum
  and the loss are float32 here.
  """
  model = merge_model(spec, params, model_state, train=train)
  if not train:  # no backward pass: the CPU gradient formulations only cost time (~2 %)
    model = folding.inference_model(model, fold=False)
  mms = dcfnet.make_mms(batch["ms"])
  out = model(batch["pan"], batch["lms"], mms, batch["ms"]).astype(jnp.float32)
  pred = out + batch["lms"].astype(jnp.float32) if spec.residual else out
  new_model_state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
  # Keep every statistic in its stored dtype (a bfloat16 model must not change the state tree).
  new_model_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_model_state,
                                 model_state)
  return pred, new_model_state


def pixel_loss(pred: jax.Array, gt: jax.Array, kind: str = "mse", border: int = 0) -> jax.Array:
  """Mean over all elements of (pred − gt)² ("mse") or |pred − gt| ("l1"), border pixels cut."""
  if border:
    pred = pred[:, border:-border, border:-border]
    gt = gt[:, border:-border, border:-border]
  diff = pred.astype(jnp.float32) - gt.astype(jnp.float32)
  return jnp.mean(jnp.square(diff)) if kind == "mse" else jnp.mean(jnp.abs(diff))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               tx: optax.GradientTransformation, schedule: optax.Schedule
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch; pure, jit it with `make_train_step`."""

  def loss_fn(params):
    pred, new_model_state = forward(spec, params, state.model_state, batch, train=True)
    return pixel_loss(pred, batch["gt"], spec.loss, spec.loss_border), new_model_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params, model_state=new_model_state,
                         opt_state=opt_state)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      (params, new_model_state)) if jnp.issubdtype(x.dtype, jnp.inexact)]))
  metrics = dict(loss=loss, grad_norm=grad_norm,
                 learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
                 state_finite=finite.astype(jnp.float32))
  return new_state, metrics


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: jax.sharding.Mesh) -> Callable:
  """`train_step` jitted over `mesh`: state replicated and donated, batch split on "data"."""
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(
      functools.partial(train_step, spec=spec, tx=tx, schedule=schedule),
      in_shardings=(replicated, sharding.batch_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,))


def predict_step(params: Any, model_state: Any, batch: Mapping[str, jax.Array], *,
                 spec: ModelSpec, img_range: float, clip: bool) -> jax.Array:
  """Eval-mode prediction in DN (× img_range), optionally clipped to [0, 1] first."""
  pred, _ = forward(spec, params, model_state, batch, train=False)
  if clip:
    pred = jnp.clip(pred, 0.0, 1.0)
  return pred * jnp.float32(img_range)


def make_predict_step(spec: ModelSpec, config: ml_collections.ConfigDict,
                      mesh: jax.sharding.Mesh) -> Callable:
  replicated = sharding.replicated_sharding(mesh)
  batched = sharding.batch_sharding(mesh)
  return jax.jit(
      functools.partial(predict_step, spec=spec, img_range=float(config.data.img_range),
                        clip=bool(config.eval.clip_output)),
      in_shardings=(replicated, replicated, batched), out_shardings=batched)


# ---------------------------------------------------------------------------------------------
# Creating and restoring the state


def _init_fn(config: ml_collections.ConfigDict, tx: optax.GradientTransformation
             ) -> Callable[[jax.Array], TrainState]:
  """seed -> a fresh TrainState (a pure function: the seed may be traced)."""

  def init(seed: jax.Array) -> TrainState:
    model = models.create_model(config, nnx.Rngs(jax.random.key(seed)))
    params, model_state = split_model(model)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params))

  return init


# Compiled initialisers, so that several states (tests, notebooks) compile DCFNet's init once.
_INIT_CACHE: dict[tuple[Any, ...], tuple[Callable, optax.GradientTransformation]] = {}


def create_train_state(config: ml_collections.ConfigDict, spec: ModelSpec,
                       tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
                       ) -> TrainState:
  """A freshly initialised state (seed config.seed), materialised replicated on `mesh`."""
  del spec  # the graph comes from the config; kept for a uniform signature
  key = (config.model.to_json_best_effort(), int(config.data.num_bands),
         bool(config.half_precision), id(tx), mesh)
  if key not in _INIT_CACHE:
    if len(_INIT_CACHE) > 8:
      _INIT_CACHE.clear()
    _INIT_CACHE[key] = (jax.jit(_init_fn(config, tx),
                                out_shardings=sharding.replicated_sharding(mesh)), tx)
  return _INIT_CACHE[key][0](jnp.asarray(config.seed, jnp.int32))


def abstract_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh) -> TrainState:
  """ShapeDtypeStructs of the state with replicated shardings on `mesh` (a restore target)."""
  abstract = jax.eval_shape(_init_fn(config, tx), jax.ShapeDtypeStruct((), jnp.int32))
  return ckpt_lib.abstract_like(abstract, sharding.replicated_sharding(mesh))


def restore_train_state(checkpoints: ckpt_lib.Checkpoints, step: int,
                        abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
  """(state, data position) of checkpoint `step`, placed as `abstract_state` says."""
  restored, data_state, _ = checkpoints.restore(step, abstract_state.to_dict())
  return TrainState.from_dict(restored), data_state


def state_is_finite(state: TrainState) -> bool:
  leaves = [x for x in jax.tree.leaves((state.params, state.model_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


# ---------------------------------------------------------------------------------------------
# Quality indices (float64 on the host CPU, as the MATLAB toolbox computes them)


def _cpu_device() -> jax.Device:
  return jax.local_devices(backend="cpu")[0]


def reduced_resolution_indexes(fused_dn: np.ndarray, gt_dn: np.ndarray,
                               config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Per-image RR indices (Q2n, Q, SAM, ERGAS, SCC) of NHWC DN arrays, config.eval settings.

  When the images are too small for the toolbox crop plus one Q block (e.g. 64x64 training
  patches: 64 − 2·21 + 1 < 32), the crop is skipped (logged once): the toolbox assumes whole
  256x256 test images.
  """
  ev = config.eval
  cut, block = bool(ev.flag_cut_bounds), int(ev.block_size)
  size = min(fused_dn.shape[1:3])
  if cut and metrics.cut_size(size, int(ev.dim_cut)) < block:
    _log_once(f"images of {fused_dn.shape[1]}x{fused_dn.shape[2]} are too small for the toolbox "
              f"crop (dim_cut {ev.dim_cut}) plus a {block}-pixel Q block: indices on these "
              "images are computed without the crop.")
    cut = False
  if size < block:
    small = 2 ** int(math.log2(size))
    _log_once(f"images of {fused_dn.shape[1]}x{fused_dn.shape[2]} are smaller than the "
              f"{block}-pixel Q window: Q and Q2n use {small}-pixel blocks on them.")
    block = small
  with jax.enable_x64(True), jax.default_device(_cpu_device()):
    out = metrics.reduced_resolution_indexes(
        jnp.asarray(fused_dn, jnp.float64), jnp.asarray(gt_dn, jnp.float64),
        ratio=int(config.data.ratio), bits=int(config.data.bits), block_size=block,
        flag_cut_bounds=cut, dim_cut=int(ev.dim_cut), thvalues=bool(ev.thvalues))
    return _ordered(out, metrics.RR_KEYS)


def full_resolution_indexes(fused_dn: np.ndarray, ms_dn: np.ndarray, pan_dn: np.ndarray,
                            lms_dn: np.ndarray, config: ml_collections.ConfigDict
                            ) -> dict[str, np.ndarray]:
  """Per-image FR indices (D_lambda, D_s, QNR/HQNR) of NHWC DN arrays."""
  with jax.enable_x64(True), jax.default_device(_cpu_device()):
    f64 = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    out = metrics.full_resolution_indexes(
        f64(fused_dn), f64(ms_dn), f64(pan_dn), sensor=config.data.sensor,
        ratio=int(config.data.ratio), bits=int(config.data.bits),
        thvalues=bool(config.eval.thvalues), lms=f64(lms_dn))
    return _ordered(out, metrics.FR_KEYS)


def _ordered(values: Mapping[str, Any], order: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Per-image float64 arrays, keys in the toolbox's order (jit returns them sorted)."""
  keys = [k for k in order if k in values] + [k for k in values if k not in order]
  return {k: np.asarray(values[k], np.float64).reshape(-1) for k in keys}


_LOGGED_ONCE: set[str] = set()


def _log_once(message: str) -> None:
  if message not in _LOGGED_ONCE:
    _LOGGED_ONCE.add(message)
    logging.info(message)


# ---------------------------------------------------------------------------------------------
# Evaluation over a file


def eval_global_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """config.eval.batch_size rounded up to a multiple of the device count (and process count)."""
  n = mesh.size
  return max(n, -(-int(config.eval.batch_size) // n) * n)


def predict_file(source: Any, predict: Callable, state: TrainState, mesh: jax.sharding.Mesh,
                 global_batch_size: int, max_images: int = -1
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
  """Yields (inputs in DN, prediction in DN, keep) per batch of `source`, in file order.

  Every process reads the whole batch (evaluation files are small), feeds its rows to the
  devices and gathers the predictions back, so every host sees the same arrays. The last batch
  is padded with copies of the last image so that every batch has one shape (one compile, also
  for the metrics); `keep` (bool per row) is False on the padding.
  """
  n = len(source) if max_images is None or max_images < 0 else min(len(source), max_images)
  rows = pipeline.process_rows(global_batch_size, jax.process_index(), jax.process_count())
  img_range = source.img_range
  for start in range(0, n, global_batch_size):
    positions = np.arange(start, start + global_batch_size)
    keep = positions < n
    dn = source.read_dn(np.minimum(positions, n - 1))
    local = {k: pancollection.to_model_units(dn[k][rows], img_range) for k in MODEL_INPUTS}
    pred = predict(state.params, state.model_state, sharding.to_global_batch(local, mesh))
    pred = np.asarray(multihost_utils.process_allgather(pred, tiled=True))
    yield dn, pred, keep


def _select(values: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[keep] for k, v in values.items()}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def validate(config: ml_collections.ConfigDict, source: Any, predict: Callable,
             state: TrainState, mesh: jax.sharding.Mesh
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """(mean RR indices over the valid file, preview samples {lms, gt, pred} in DN)."""
  chunks, samples = [], []
  for dn, pred, keep in predict_file(source, predict, state, mesh,
                                     eval_global_batch_size(config, mesh),
                                     config.eval.max_valid_images):
    chunks.append(_select(reduced_resolution_indexes(pred, dn["gt"], config), keep))
    dn, pred = _select(dn, keep), pred[keep]
    for i in range(len(pred)):
      if len(samples) < config.eval.num_preview_images:
        samples.append(dict(lms=dn["lms"][i], gt=dn["gt"][i], pred=pred[i]))
  values = _concat(chunks)
  return {k: float(np.mean(v)) for k, v in values.items()}, samples


def rgb_bands(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The sensor's true-colour band indices (0-based), clipped to the number of bands."""
  try:
    rgb = imaging.get_sensor(config.data.sensor).rgb
  except ValueError:
    rgb = (2, 1, 0)
  c = int(config.data.num_bands)
  return tuple(b if b < c else c - 1 for b in rgb)


def evaluate_test_files(config: ml_collections.ConfigDict, spec: ModelSpec, state: TrainState,
               mesh: jax.sharding.Mesh, out_dir: str | os.PathLike, *,
               metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Tests on the reduced- and full-resolution files next to EXP (lms); writes the report.

  Returns the summary {resolution: {method: {index: {mean, std, n}}}} and writes
  `<out_dir>/test_results.{md,tex,csv,json}` plus previews `<out_dir>/previews/*.png`.
  """
  out_dir = pathlib.Path(out_dir)
  predict = make_predict_step(spec, config, mesh)
  gbs = eval_global_batch_size(config, mesh)
  method = _method_name(spec.name)
  per_image: dict[str, dict[str, dict[str, np.ndarray]]] = {}
  panels = {}
  rgb = rgb_bands(config)
  files = {"reduced": config.data.test_reduced_file, "full": config.data.test_full_file}
  if not any(files.values()):
    raise ValueError("no test file: set config.data.test_reduced_file and/or "
                     "config.data.test_full_file")
  for res, path in files.items():
    if not path:
      logging.warning("No %s-resolution test file configured; skipping it.", res)
      continue
    t0 = time.time()
    with pancollection.open_source(path, config.data, require_gt=(res == "reduced")) as source:
      ours, exp = [], []
      for dn, pred, keep in predict_file(source, predict, state, mesh, gbs):
        if res == "reduced":
          ours.append(_select(reduced_resolution_indexes(pred, dn["gt"], config), keep))
          exp.append(_select(reduced_resolution_indexes(dn["lms"], dn["gt"], config), keep))
        else:
          ours.append(_select(full_resolution_indexes(pred, dn["ms"], dn["pan"], dn["lms"],
                                                      config), keep))
          exp.append(_select(full_resolution_indexes(dn["lms"], dn["ms"], dn["pan"], dn["lms"],
                                                     config), keep))
        dn, pred = _select(dn, keep), pred[keep]
        for i in range(len(pred)):
          k = sum(1 for key in panels if key.startswith(res))
          if k < config.eval.num_preview_images:
            if res == "reduced":
              panels[f"{res}_{k}"] = previews.reduced_resolution_panel(
                  dn["lms"][i], dn["gt"][i], pred[i], rgb)
            else:
              panels[f"{res}_{k}"] = previews.full_resolution_panel(
                  dn["pan"][i], dn["lms"][i], pred[i], rgb)
      per_image[res] = {"EXP": _concat(exp), method: _concat(ours)}
    logging.info("Tested on %s (%s resolution, %d images) in %.1f s.", path, res,
                 len(per_image[res][method][next(iter(per_image[res][method]))]), time.time() - t0)
  if jax.process_index() == 0:
    meta = dict(metadata or {})
    meta.update(eval=config.eval.to_dict(), data=config.data.to_dict(), residual=spec.residual,
                model=spec.name)
    notes = (f"EXP = lms, the MS upsampled by the 23-tap interpolator. {method}: outputs "
             f"{'clipped to [0, 1] and ' if config.eval.clip_output else ''}x img_range "
             f"{config.data.img_range:g}; toolbox settings: block {config.eval.block_size}, "
             f"crop {config.eval.flag_cut_bounds} (dim_cut {config.eval.dim_cut}), "
             f"thvalues {config.eval.thvalues}, sensor {config.data.sensor}.")
    reports.write_report(out_dir, per_image, num_bands=int(config.data.num_bands), metadata=meta,
                         notes=notes)
    for key, panel in panels.items():
      previews.save_png(out_dir / "previews" / f"test_{key}.png", panel)
  return {res: {m: reports.summarize(v) for m, v in methods.items()}
          for res, methods in per_image.items()}


_DISPLAY_NAMES = {"dcfnet": "DCFNet", "pnn": "PNN", "dicnn1": "DiCNN1", "pannet": "PanNet",
                  "fusionnet": "FusionNet", "dmdnet": "DMDNet"}


def _method_name(name: str) -> str:
  """The row label of a model in the result tables (its paper name when known)."""
  return _DISPLAY_NAMES.get(name.lower(), name)


# ---------------------------------------------------------------------------------------------
# The training loop


def _check_file(path: str, what: str, field: str) -> None:
  if not path:
    raise ValueError(f"no {what}: set --config.{field}=PATH")
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"{what} {path!r} (config.{field}) does not exist")


def check_config(config: ml_collections.ConfigDict, mode: str | None = None) -> None:
  """Fails early, naming the field, on settings the loop cannot use (for `mode` or config.mode)."""
  mode = config.mode if mode is None else mode
  if mode not in ("train", "evaluate", "train_and_evaluate"):
    raise ValueError(f"config.mode must be 'train', 'evaluate' or 'train_and_evaluate', got "
                     f"{mode!r}")
  if config.data.source != "h5":
    raise ValueError(f"config.data.source {config.data.source!r} is not supported by the "
                     "training loop yet; use 'h5'")
  if mode in ("train", "train_and_evaluate"):
    _check_file(config.data.train_file, "training file", "data.train_file")
    if config.data.valid_file:
      _check_file(config.data.valid_file, "validation file", "data.valid_file")
  if mode in ("evaluate", "train_and_evaluate"):
    for field, what in (("test_reduced_file", "reduced-resolution test file"),
                        ("test_full_file", "full-resolution test file")):
      if config.data[field]:
        _check_file(config.data[field], what, f"data.{field}")
    if not (config.data.test_reduced_file or config.data.test_full_file):
      raise ValueError("no test file: set --config.data.test_reduced_file and/or "
                       "--config.data.test_full_file (or use --config.mode=train)")
  if mode != "evaluate" and (config.batch_size <= 0 or config.batch_size % jax.device_count()):
    raise ValueError(f"config.batch_size {config.batch_size} must be a positive multiple of the "
                     f"{jax.device_count()} devices")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[field] <= 0:
      raise ValueError(f"config.{field} must be positive, got {config[field]}")
  if config.eval.checkpoint not in ("latest", "best"):
    raise ValueError(f"config.eval.checkpoint must be 'latest' or 'best', got "
                     f"{config.eval.checkpoint!r}")


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Pending:
  """Per-step metrics still on device; fetched at log, eval and checkpoint boundaries."""

  def __init__(self):
    self.device: list[tuple[int, dict[str, jax.Array]]] = []
    self.host: list[tuple[int, dict[str, float]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.device.append((step, metrics))

  def fetch(self) -> None:
    """Moves metrics to the host; raises NonFiniteLossError on the first NaN/inf."""
    if not self.device:
      return
    fetched = jax.device_get([m for _, m in self.device])
    for (step, _), m in zip(self.device, fetched):
      m = {k: float(v) for k, v in m.items()}
      self.host.append((step, m))
      if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
        self.device = []
        raise NonFiniteLossError(
            f"the loss is {m['loss']} (gradient norm {m['grad_norm']}) at step {step}")
      if m["state_finite"] != 1.0:
        self.device = []
        raise NonFiniteLossError(f"the parameters or BatchNorm statistics became NaN/inf in "
                                 f"step {step} (loss {m['loss']}, gradient norm "
                                 f"{m['grad_norm']})")
    self.device = []

  def pop_means(self) -> dict[str, float]:
    means = {k: float(np.mean([m[k] for _, m in self.host])) for k in self.host[0][1]
             if k != "state_finite"}
    means["learning_rate"] = self.host[-1][1]["learning_rate"]
    self.host = []
    return means


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                       ) -> dict[str, Any]:
  """Trains (resuming from `<workdir>/checkpoints` if present), then tests if the mode says so.

  Returns {"step": final step, "valid": last validation indices, "test": test summary}.
  """
  check_config(config)
  workdir = pathlib.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    io_utils.write_atomic(workdir / "config.json",
                          (config.to_json_best_effort(indent=2) + "\n").encode())
  mesh = sharding.make_mesh()
  train_source = pancollection.open_source(config.data.train_file, config.data, require_gt=True)
  valid_source = (pancollection.open_source(config.data.valid_file, config.data, require_gt=True)
                  if config.data.valid_file else None)
  plan = pipeline.train_plan(train_source, config)
  total_steps = num_train_steps(config, plan.steps_per_epoch)
  spec = model_spec(config)
  tx, schedule = make_optimizer(config, total_steps, plan.steps_per_epoch)
  checkpoints = ckpt_lib.Checkpoints(workdir / "checkpoints", config)
  logging.info("Training %s (residual=%s) on %s: %d examples, %d steps per epoch, %d steps, "
               "global batch %d over %d devices (%d processes).", spec.name, spec.residual,
               config.data.train_file, plan.num_examples, plan.steps_per_epoch, total_steps,
               config.batch_size, mesh.size, jax.process_count())

  start_step = checkpoints.latest_step()
  if start_step is not None:
    state, data_state = restore_train_state(checkpoints, start_step,
                                            abstract_train_state(config, tx, mesh))
    _check_data_state(data_state, plan, start_step)
    logging.info("Resumed from the checkpoint of step %d in %s.", start_step,
                 checkpoints.directory)
  else:
    start_step = 0
    t0 = time.time()
    state = create_train_state(config, spec, tx, mesh)
    jax.block_until_ready(state)
    logging.info("Initialised %s (%d parameters) in %.1f s.", spec.name,
                 sum(x.size for x in jax.tree.leaves(state.params)), time.time() - t0)
  writer = tb_writer.MetricWriter(workdir / "tensorboard", jsonl_path=workdir / "metrics.jsonl",
                                  enabled=is_main, resume_step=start_step or None)
  last_valid: dict[str, float] = {}
  try:
    if start_step < total_steps:
      state, last_valid = _train_loop(config, workdir, spec, tx, schedule, mesh, state,
                                      start_step, total_steps, train_source, valid_source, plan,
                                      checkpoints, writer)
    else:
      logging.info("Step %d >= num_train_steps %d: nothing to train.", start_step, total_steps)
    checkpoints.wait()
    export_path = _export(config, spec, state, workdir)
    result = dict(step=int(jax.device_get(state.step)), valid=last_valid, export=str(export_path))
    if config.mode == "train_and_evaluate":
      state, step = _state_for_test(config, checkpoints, state, tx, mesh)
      result["test"] = evaluate_test_files(config, spec, state, mesh, workdir / "report",
                                           metadata=dict(step=step, workdir=str(workdir)))
      if is_main:
        logging.info("Test results (step %d):\n%s", step,
                     (workdir / "report" / "test_results.md").read_text())
    return result
  finally:
    writer.close()
    checkpoints.close()
    train_source.close()
    if valid_source is not None:
      valid_source.close()


def _check_data_state(data_state: Mapping[str, Any], plan: Any, step: int) -> None:
  """Warns when the run resumes with another batch plan than it saved (batches will differ)."""
  saved = {k: data_state.get(k) for k in ("num_examples", "global_batch_size", "seed", "shuffle")}
  now = dict(num_examples=plan.num_examples, global_batch_size=plan.global_batch_size,
             seed=plan.seed, shuffle=plan.shuffle)
  changed = {k: (saved[k], now[k]) for k in now if saved[k] is not None and saved[k] != now[k]}
  if changed:
    logging.warning("Resuming at step %d with a different input plan %s (saved, now): the "
                    "batch sequence differs from an uninterrupted run.", step, changed)
  if data_state.get("next_index", step) != step:
    logging.warning("The saved input position %s differs from the state's step %d; using the "
                    "step.", data_state.get("next_index"), step)


def _data_state(plan: Any, step: int) -> dict[str, Any]:
  return dict(next_index=int(step), num_examples=plan.num_examples,
              global_batch_size=plan.global_batch_size, seed=plan.seed, shuffle=plan.shuffle,
              epoch=int(step) // plan.steps_per_epoch)


def _train_loop(config, workdir, spec, tx, schedule, mesh, state, start_step, total_steps,
                train_source, valid_source, plan, checkpoints, writer):
  is_main = jax.process_index() == 0
  iterator = pipeline.train_iterator_from_config(train_source, config, start_step=start_step)
  step_fn = make_train_step(spec, tx, schedule, mesh)
  predict = make_predict_step(spec, config, mesh) if valid_source is not None else None
  pending = _Pending()
  last_valid: dict[str, float] = {}
  rgb = rgb_bands(config)

  def fail_nonfinite(e: NonFiniteLossError):
    checkpoints.wait()
    raise NonFiniteLossError(
        f"{e}; training stopped without saving this state. The last good checkpoint is step "
        f"{checkpoints.latest_step()} in {checkpoints.directory}. Lower the learning rate "
        "(--config.learning_rate), enable clipping (--config.grad_clip_norm=1) or check the "
        "data.") from e

  batch = sharding.to_global_batch(next(iterator), mesh)
  t0 = time.time()
  compiled = step_fn.lower(state, batch).compile()
  logging.info("Compiled the train step in %.1f s.", time.time() - t0)
  t_window, steps_window, excluded = time.time(), 0, 0.0
  step = start_step
  while step < total_steps:
    state, metrics = compiled(state, batch)
    step += 1
    steps_window += 1
    pending.add(step, metrics)
    if step < total_steps:
      batch = sharding.to_global_batch(next(iterator), mesh)  # overlaps the running step
    is_last = step == total_steps
    do_log = step % config.log_every_steps == 0 or is_last
    do_eval = valid_source is not None and (step % config.eval_every_steps == 0 or is_last)
    do_save = step % config.checkpoint_every_steps == 0 or do_eval or is_last
    if do_log or do_eval or do_save:
      try:
        pending.fetch()
      except NonFiniteLossError as e:
        fail_nonfinite(e)
    if do_log:
      elapsed = max(time.time() - t_window - excluded, 1e-9)
      rate = steps_window / elapsed
      means = pending.pop_means()
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()}
                           | {"train/steps_per_sec": rate,
                              "train/samples_per_sec": rate * config.batch_size})
      if is_main:
        logging.info("step %d/%d | loss %.4g | grad_norm %.3g | lr %.3g | %.2f steps/s | "
                     "%.1f samples/s | ETA %s", step, total_steps, means["loss"],
                     means["grad_norm"], means["learning_rate"], rate,
                     rate * config.batch_size, _format_eta((total_steps - step) / rate))
      t_window, steps_window, excluded = time.time(), 0, 0.0
    valid_metrics = None
    if do_eval or do_save:
      t_pause = time.time()
      if do_eval:
        valid_metrics, samples = validate(config, valid_source, predict, state, mesh)
        last_valid = valid_metrics
        writer.write_scalars(step, {f"valid/{k}": v for k, v in valid_metrics.items()})
        if is_main:
          logging.info("step %d validation: %s (%.1f s)", step, ", ".join(
              f"{k} {v:.4f}" for k, v in valid_metrics.items()), time.time() - t_pause)
          images = {f"valid/{i}": previews.reduced_resolution_panel(s["lms"], s["gt"], s["pred"],
                                                                    rgb)
                    for i, s in enumerate(samples)}
          writer.write_images(step, images)
          for key, image in images.items():
            previews.save_png(workdir / "previews" / f"valid_step{step:07d}_{key[6:]}.png", image)
      if do_save:
        checkpoints.save(step, state.to_dict(), _data_state(plan, step), valid_metrics)
      excluded += time.time() - t_pause
  writer.flush()
  return state, last_valid


def _state_for_test(config, checkpoints, state, tx, mesh) -> tuple[TrainState, int]:
  """The final state, or the best checkpoint's when config.eval.checkpoint == "best"."""
  step = int(jax.device_get(state.step))
  if config.eval.checkpoint == "best":
    best = checkpoints.best_step()
    if best is not None and best != step:
      state, _ = restore_train_state(checkpoints, best, abstract_train_state(config, tx, mesh))
      logging.info("Testing the best checkpoint (step %d by %s).", best,
                   config.checkpoint.best_metric)
      return state, best
  return state, step


def _export(config, spec, state, workdir) -> pathlib.Path:
  """Writes `<workdir>/export/<model>_<sensor>.npz` (+ .json) from `state` (process 0)."""
  path = workdir / "export" / f"{spec.name}_{config.data.sensor}.npz"
  if jax.process_index() == 0:
    model = merge_model(spec, *jax.device_get((state.params, state.model_state)))
    meta = ckpt_lib.metadata_from_config(config, spec.residual,
                                         step=int(jax.device_get(state.step)),
                                         source=str(workdir))
    ckpt_lib.export_params(path, model, meta)
    logging.info("Exported parameters to %s.", path)
  return path


# ---------------------------------------------------------------------------------------------
# Evaluating a saved model


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                        checkpoint: str | None = None) -> dict[str, Any]:
  """Tests a saved model and writes the report to `<workdir>/report`.

  `checkpoint`: an exported `.npz`, a workdir, a checkpoints directory or one step's directory;
  default: `<workdir>/checkpoints`, the latest or best step (config.eval.checkpoint).
  """
  check_config(config, mode="evaluate")
  workdir = pathlib.Path(workdir).absolute()
  mesh = sharding.make_mesh()
  source = pathlib.Path(checkpoint) if checkpoint else workdir / "checkpoints"
  if source.suffix == ".npz":
    model, metadata = ckpt_lib.load_exported(source)
    _check_compatible(config, metadata, source)
    eval_config = _with_model_fields(config, ckpt_lib.config_from_metadata(metadata))
    spec = model_spec(eval_config)
    if spec.residual != bool(metadata["residual"]):
      spec = dataclasses.replace(spec, residual=bool(metadata["residual"]))
    params, model_state = split_model(model)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       opt_state=())
    state = jax.device_put(state, sharding.replicated_sharding(mesh))
    step = int(metadata.get("step", -1))
  else:
    directory, step = ckpt_lib.find_checkpoint(source)
    checkpoints = ckpt_lib.Checkpoints(directory, config, read_only=True)
    try:
      if step is None:
        step = (checkpoints.best_step() if config.eval.checkpoint == "best"
                else checkpoints.latest_step())
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
      saved = ml_collections.ConfigDict(checkpoints.restore_config(step))
      eval_config = _with_model_fields(config, saved)
      _check_compatible(config, dict(num_bands=saved.data.num_bands, sensor=saved.data.sensor,
                                     img_range=saved.data.img_range), directory)
      spec = model_spec(eval_config)
      total = num_train_steps(saved, 1) if saved.num_train_steps > 0 else 1
      # Only the optimiser state's structure matters here (steps per epoch: any value).
      tx, _ = make_optimizer(saved, total, steps_per_epoch=1)
      state, _ = restore_train_state(checkpoints, step, abstract_train_state(eval_config, tx, mesh))
    finally:
      checkpoints.close()
  logging.info("Evaluating %s (step %s).", source, step)
  return evaluate_test_files(eval_config, spec, state, mesh, workdir / "report",
                             metadata=dict(step=step, checkpoint=str(source)))


def _with_model_fields(config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict
                       ) -> ml_collections.ConfigDict:
  """`config` with the model fields (and half_precision) of the saved run."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.update({k: v for k, v in saved.model.items() if k in out.model})
  if "half_precision" in saved:
    out.half_precision = saved.half_precision
  out.lock()
  return out


def _check_compatible(config: ml_collections.ConfigDict, saved: Mapping[str, Any],
                      source: Any) -> None:
  if int(saved["num_bands"]) != int(config.data.num_bands):
    raise ValueError(f"{source} holds a model for {saved['num_bands']} bands, the config's data "
                     f"have {config.data.num_bands} (config.data.num_bands)")
  if "img_range" in saved and float(saved["img_range"]) != float(config.data.img_range):
    logging.warning("%s was trained with img_range %s, the config says %s.", source,
                    saved["img_range"], config.data.img_range)
