"""The training loop: resume or initialise, step, log, validate, checkpoint, export, test.

`train_and_evaluate(config, workdir)` trains `config.model.name` on the train split (resuming
from `<workdir>/checkpoints` when a complete checkpoint is there), validates every
`eval_every_steps`, checkpoints every `checkpoint_every_steps` (and at every validation),
exports the final weights to `<workdir>/export/<model>_<sensor>.npz`, and with mode
"train_and_evaluate" tests on the test splits (`evaluation.evaluate_test_files`).

The pieces live elsewhere: the state (`state`), optimiser and schedule (`optim`), the jitted
step (`steps`), the input pipeline (`data.pipeline`), Orbax checkpoints (`checkpoint`) and
evaluation (`evaluation`). Losses and gradient norms stay on device and are fetched at log,
validation and checkpoint boundaries; a NaN/inf stops the run without saving that state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import optax

from dcfnet_jax import checkpoint as ckpt_lib
from dcfnet_jax import config_lib, data, evaluation, files, imaging, inference, optim, previews
from dcfnet_jax import sharding, steps, tb_writer
from dcfnet_jax.data import pipeline
from dcfnet_jax.errors import RunError
from dcfnet_jax.losses import objective as objective_lib
from dcfnet_jax.progress import format_eta
from dcfnet_jax.train_state import (ModelSpec, TrainState, abstract_train_state, create_train_state,
                              merge_model, model_spec, restore_train_state)

log = logging.getLogger(__name__)


class NonFiniteLossError(RunError, FloatingPointError):
  """Training produced a NaN/inf loss or gradient; nothing was saved after the last good step."""


@dataclasses.dataclass
class _Run:
  """What one training run works with (built once by `train_and_evaluate`)."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  spec: ModelSpec
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  plan: pipeline.BatchPlan
  total_steps: int
  train_source: Any
  valid_source: Any | None
  checkpoints: ckpt_lib.Checkpoints
  writer: tb_writer.MetricWriter

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


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

  Returns {"step": final step, "valid": last validation indices, "export": path, "test": test
  summary (mode train_and_evaluate)}.
  """
  config_lib.check_config(config, num_devices=jax.device_count())
  workdir = files.check_output_folder(pathlib.Path(workdir).absolute(), flag="--workdir")
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh()
  train_source = data.open_split(config, "train")
  valid_source = data.open_split(config, "valid") if data.has_split(config, "valid") else None
  try:  # images too small for the index settings fail now, not after training
    if config.get("loss", "supervised") == "full_resolution":
      evaluation.check_image_size(config, "train", train_source)
    if valid_source is not None:
      evaluation.check_image_size(config, "valid", valid_source)
    if config.mode == "train_and_evaluate":
      for split in evaluation.TEST_SPLITS.values():
        if data.has_split(config, split):
          evaluation.check_image_size(config, split)
  except BaseException:
    train_source.close()
    if valid_source is not None:
      valid_source.close()
    raise
  plan = pipeline.train_plan(train_source, config)
  total_steps = optim.num_train_steps(config, plan.steps_per_epoch)
  spec = model_spec(config)
  tx, schedule = optim.make_optimizer(config, total_steps, plan.steps_per_epoch)
  if is_main:  # written once the data are known to be usable (bad input writes nothing)
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
  checkpoints = ckpt_lib.Checkpoints(workdir / "checkpoints", config)
  log.info("Training %s (residual=%s) on %s: %d examples, %d steps per epoch, %d steps, global "
           "batch %d over %d devices (%d processes).", spec.name, spec.residual,
           config.data.train_file or config.data.tfds_name, plan.num_examples,
           plan.steps_per_epoch, total_steps, config.batch_size, mesh.size, jax.process_count())

  start_step = checkpoints.latest_step()
  if start_step is not None:
    state, data_state = restore_train_state(checkpoints, start_step,
                                            abstract_train_state(config, tx, mesh))
    _check_data_state(data_state, plan, start_step)
    log.info("Resumed from the checkpoint of step %d in %s.", start_step, checkpoints.directory)
  else:
    start_step = 0
    t0 = time.time()
    state = create_train_state(config, tx, mesh)
    jax.block_until_ready(state)
    log.info("Initialised %s (%d parameters) in %.1f s.", spec.name,
             sum(x.size for x in jax.tree.leaves(state.params)), time.time() - t0)
  writer = tb_writer.MetricWriter(workdir / "tensorboard", jsonl_path=workdir / "metrics.jsonl",
                                  enabled=is_main, resume_step=start_step or None)
  run = _Run(config, workdir, spec, tx, schedule, mesh, plan, total_steps, train_source,
             valid_source, checkpoints, writer)
  last_valid: dict[str, float] = {}
  try:
    if start_step < total_steps:
      state, last_valid = _train_loop(run, state, start_step)
    else:
      log.info("Step %d >= num_train_steps %d: nothing to train.", start_step, total_steps)
    checkpoints.wait()
    export_path = _export(run, state)
    result = dict(step=int(jax.device_get(state.step)), valid=last_valid, export=str(export_path))
    if config.mode == "train_and_evaluate":
      params, model_state, step = _weights_for_test(run, state)
      result["test"] = evaluation.evaluate_test_files(
          config, spec, params, model_state, mesh, workdir / "report",
          metadata=dict(step=step, workdir=str(workdir)))
      if is_main:
        log.info("Test results (step %d):\n%s", step,
                 (workdir / "report" / "test_results.md").read_text())
    return result
  finally:
    writer.close()
    checkpoints.close()
    train_source.close()
    if valid_source is not None:
      valid_source.close()


def _check_data_state(data_state: Mapping[str, Any], plan: pipeline.BatchPlan, step: int) -> None:
  """Warns when the run resumes with another batch plan than it saved (batches will differ)."""
  saved = {k: data_state.get(k) for k in ("num_examples", "global_batch_size", "seed", "shuffle")}
  now = dict(num_examples=plan.num_examples, global_batch_size=plan.global_batch_size,
             seed=plan.seed, shuffle=plan.shuffle)
  changed = {k: (saved[k], now[k]) for k in now if saved[k] is not None and saved[k] != now[k]}
  if changed:
    log.warning("Resuming at step %d with a different input plan %s (saved, now): the batch "
                "sequence differs from an uninterrupted run.", step, changed)
  if data_state.get("next_index", step) != step:
    log.warning("The saved input position %s differs from the state's step %d; using the step.",
                data_state.get("next_index"), step)


def _data_state(plan: pipeline.BatchPlan, step: int) -> dict[str, Any]:
  return dict(next_index=int(step), num_examples=plan.num_examples,
              global_batch_size=plan.global_batch_size, seed=plan.seed, shuffle=plan.shuffle,
              epoch=int(step) // plan.steps_per_epoch)


def _fail_nonfinite(run: _Run, e: NonFiniteLossError) -> None:
  run.checkpoints.wait()
  raise NonFiniteLossError(
      f"{e}; training stopped without saving this state. The last good checkpoint is step "
      f"{run.checkpoints.latest_step()} in {run.checkpoints.directory}. Lower the learning rate "
      "(--config.learning_rate), enable clipping (--config.grad_clip_norm=1) or check the "
      "data.") from e


def _validate(run: _Run, predictor: inference.Predictor, state: TrainState, step: int
              ) -> dict[str, float]:
  """Validation indices at `step` (logged, written, previews saved)."""
  t0 = time.time()
  values, samples = evaluation.validate(run.config, run.valid_source, predictor, state.params,
                                        state.model_state)
  run.writer.write_scalars(step, {f"valid/{k}": v for k, v in values.items()})
  if run.is_main:
    log.info("step %d validation: %s (%.1f s)", step,
             ", ".join(f"{k} {v:.4f}" for k, v in values.items()), time.time() - t0)
    rgb = imaging.rgb_bands(run.config.data.sensor, int(run.config.data.num_bands))
    images = {f"valid/{i}": (previews.reduced_resolution_panel(s["lms"], s["gt"], s["pred"], rgb)
                             if "gt" in s else
                             previews.full_resolution_panel(s["pan"], s["lms"], s["pred"], rgb))
              for i, s in enumerate(samples)}
    run.writer.write_images(step, images)
    for key, image in images.items():
      previews.save_png(run.workdir / "previews" / f"valid_step{step:07d}_{key[6:]}.png", image)
  return values


def _train_loop(run: _Run, state: TrainState, start_step: int
                ) -> tuple[TrainState, dict[str, float]]:
  config, total_steps, mesh = run.config, run.total_steps, run.mesh
  iterator = pipeline.train_iterator_from_config(run.train_source, config, start_step=start_step)
  step_fn = steps.make_train_step(run.spec, run.tx, run.schedule, mesh,
                                  objective=objective_lib.objective_from_config(config))
  predictor = (inference.Predictor(run.spec, img_range=float(config.data.img_range), mesh=mesh,
                                   clip=bool(config.eval.clip_output))
               if run.valid_source is not None else None)
  pending = _Pending()
  last_valid: dict[str, float] = {}
  batch = sharding.to_global_batch(next(iterator), mesh)
  t0 = time.time()
  compiled = step_fn.lower(state, batch).compile()
  log.info("Compiled the train step in %.1f s.", time.time() - t0)
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
    do_eval = predictor is not None and (step % config.eval_every_steps == 0 or is_last)
    do_save = step % config.checkpoint_every_steps == 0 or do_eval or is_last
    if do_log or do_eval or do_save:
      try:
        pending.fetch()
      except NonFiniteLossError as e:
        _fail_nonfinite(run, e)
    if do_log:
      rate = steps_window / max(time.time() - t_window - excluded, 1e-9)
      means = pending.pop_means()
      run.writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()}
                               | {"train/steps_per_sec": rate,
                                  "train/samples_per_sec": rate * config.batch_size})
      if run.is_main:
        log.info("step %d/%d | loss %.4g%s | grad_norm %.3g | lr %.3g | %.2f steps/s | "
                 "%.1f samples/s | ETA %s", step, total_steps, means["loss"], _loss_terms(means),
                 means["grad_norm"], means["learning_rate"], rate, rate * config.batch_size,
                 format_eta((total_steps - step) / rate))
      t_window, steps_window, excluded = time.time(), 0, 0.0
    if do_eval or do_save:
      t_pause = time.time()
      valid_metrics = _validate(run, predictor, state, step) if do_eval else None
      if do_eval:
        last_valid = valid_metrics
      if do_save:
        run.checkpoints.save(step, state.to_dict(), _data_state(run.plan, step), valid_metrics)
      excluded += time.time() - t_pause
  run.writer.flush()
  return state, last_valid


def _loss_terms(means: Mapping[str, float]) -> str:
  """' (spectral 0.01, spatial 0.3)' for the terms of a full-resolution loss, else ''."""
  terms = [f"{k[5:]} {v:.4g}" for k, v in means.items() if k.startswith("loss_")]
  return f" ({', '.join(terms)})" if terms else ""


def _weights_for_test(run: _Run, state: TrainState) -> tuple[Any, Any, int]:
  """(params, model_state, step) of the final state, or of the best checkpoint when
  config.eval.checkpoint == "best" (read without its optimiser state)."""
  step = int(jax.device_get(state.step))
  if run.config.eval.checkpoint == "best":
    best = run.checkpoints.best_step()
    if best is not None and best != step:
      loaded = inference.load(run.checkpoints.directory / str(best), mesh=run.mesh)
      log.info("Testing the best checkpoint (step %d by %s).", best,
               run.config.checkpoint.best_metric)
      return loaded.params, loaded.model_state, best
  return state.params, state.model_state, step


def _export(run: _Run, state: TrainState) -> pathlib.Path:
  """Writes `<workdir>/export/<model>_<sensor>.npz` (+ .json) from `state` (process 0)."""
  path = run.workdir / "export" / f"{run.spec.name}_{run.config.data.sensor}.npz"
  if run.is_main:
    model = merge_model(run.spec, *jax.device_get((state.params, state.model_state)))
    meta = ckpt_lib.metadata_from_config(run.config, run.spec.residual,
                                         step=int(jax.device_get(state.step)),
                                         source=str(run.workdir))
    ckpt_lib.export_params(path, model, meta)
    log.info("Exported parameters to %s.", path)
  return path
