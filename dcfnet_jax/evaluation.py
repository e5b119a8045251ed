"""Evaluation: predicting a file, validation, test-file reports and checkpoint evaluation.

- `predict_file`: every image of a source through a `inference.Predictor`, batch by batch, in
  file order (the one batching of evaluation, also used by `compare`).
- `validate`: mean reduced-resolution indices over the validation split (training's model
  selection; toolbox settings `config.eval.valid_*`, see `metrics.host`).
- `evaluate_test_files`: the reduced- and full-resolution test splits next to EXP (lms), written
  as paper-style tables (`reports`) and PNG previews; at full resolution both families, the
  toolbox's (D_lambda ... HQNR) and the reprojection protocol's (R-Q2n ... D_rho), or one
  (`config.eval.fr_indexes`).
- `evaluate_checkpoint`: the same for a saved model (`--config.mode=evaluate`).
Indices come from the one host-side wrapper `metrics.host` (float64 on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from typing import Any, Iterator, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dcfnet_jax import config_lib, data, dn, files, imaging, inference, metrics, names, previews
from dcfnet_jax import reports, sharding
from dcfnet_jax.data import pipeline
from dcfnet_jax.errors import InputError
from dcfnet_jax.losses import objective as objective_lib
from dcfnet_jax.metrics import host
from dcfnet_jax.train_state import ModelSpec

log = logging.getLogger(__name__)

MODEL_INPUTS = ("pan", "lms", "ms")
TEST_SPLITS = {"reduced": "test_reduced", "full": "test_full"}


def eval_global_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """config.eval.batch_size rounded up to a multiple of the device count (and process count)."""
  n = mesh.size
  return max(n, -(-int(config.eval.batch_size) // n) * n)


def predict_file(source: Any, predictor: inference.Predictor, params: Any, model_state: Any,
                 global_batch_size: int, max_images: int = -1
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
  """Yields (inputs in DN, prediction in DN, keep) per batch of `source`, in file order.

  `source` has `len`, `img_range` and `read_dn(indices)` (NHWC DN arrays). Every process reads
  the whole batch (evaluation files are small), feeds its rows to the devices and gathers the
  predictions back, so every host sees the same arrays. The last batch is padded with copies of
  the last image so that every batch has one shape (one compile, also for the metrics); `keep`
  (bool per row) is False on the padding.
  """
  n = len(source) if max_images is None or max_images < 0 else min(len(source), max_images)
  rows = pipeline.process_rows(global_batch_size, jax.process_index(), jax.process_count())
  for start in range(0, n, global_batch_size):
    positions = np.arange(start, start + global_batch_size)
    keep = positions < n
    batch_dn = source.read_dn(np.minimum(positions, n - 1))
    local = {k: dn.to_model_units(batch_dn[k][rows], source.img_range) for k in MODEL_INPUTS}
    pred = predictor(params, model_state, sharding.to_global_batch(local, predictor.mesh))
    pred = np.asarray(multihost_utils.process_allgather(pred, tiled=True))
    yield batch_dn, pred, keep


def _select(values: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[keep] for k, v in values.items()}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


VALID_HINT = "set --config.eval.valid_block_size / valid_flag_cut_bounds / dim_cut"
TEST_HINT = "set --config.eval.block_size / flag_cut_bounds / dim_cut"
FULL_HINT = ("set --config.eval.block_size, or one family with --config.eval.fr_indexes=toolbox "
             "(or reprojection)")


def check_image_size(config: ml_collections.ConfigDict, split: str, source: Any = None) -> None:
  """Refuses a split whose images are too small for its index settings (`metrics.host`'s rule),
  so that training fails before it starts rather than at its first validation or its test."""
  if source is None:
    with contextlib.closing(data.open_split(config, split)) as opened:
      return check_image_size(config, split, opened)
  height, width = source.read_dn([0])["pan"].shape[1:3]
  where = f"the {split} split ({config.data.get(f'{split}_file') or config.data.tfds_name})"
  if config.get("loss", "supervised") == "full_resolution" and split in ("train", "valid"):
    return check_full_resolution_size(config, height, width, where)
  try:
    if split == "test_full":
      settings = host.fr_settings_from_config(config)
      host.check_full_size(height, width, ratio=settings["ratio"],
                           block_size=settings["block_size"], indexes=settings["indexes"],
                           hint=FULL_HINT)
      return None
    settings = host.settings_from_config(config, validation=split != "test_reduced")
    host.check_reduced_size(height, width, block_size=settings["block_size"],
                            flag_cut_bounds=settings["flag_cut_bounds"],
                            dim_cut=settings["dim_cut"],
                            hint=TEST_HINT if split == "test_reduced" else VALID_HINT)
  except InputError as e:
    raise InputError(f"{where}: {e}") from e
  return None


def check_full_resolution_size(config: ml_collections.ConfigDict, height: int, width: int,
                               where: str) -> None:
  """Refuses images too small for the full-resolution loss (and the best-checkpoint index).

  Z-PNN's spectral term needs MS samples whose 41x41 MTF kernel lies inside the image (sides of
  at least 48 PAN pixels); lambda-PNN's Q2n and the reprojection indexes R-Q2n, R-SAM, R-ERGAS
  compare 32x32 blocks at MS scale (PAN 128x128).
  """
  needs_blocks = (config.full_resolution.kind == "lambda"
                  or config.checkpoint.best_metric in REPROJECTION_VALID_KEYS)
  least = FR_BLOCK * int(config.data.ratio) if needs_blocks else FR_MIN_SIDE
  if min(height, width) < least:
    what = ("lambda-PNN's loss and the reprojection indexes compare 32x32 blocks at MS scale"
            if needs_blocks else "Z-PNN's spectral term needs whole 41x41 MTF kernels inside")
    raise InputError(f"{where}: images of {height}x{width} are too small for config.loss "
                     f"'full_resolution': {what}; expected at least {least}x{least}")


FR_MIN_SIDE = 48
FR_BLOCK = 32
REPROJECTION_VALID_KEYS = ("R_Q2n", "R_SAM", "R_ERGAS")


def validate_full_resolution(config: ml_collections.ConfigDict, source: Any,
                             predictor: inference.Predictor, params: Any, model_state: Any
                             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """Validation without gt: (means over the split, preview samples {pan, lms, pred} in DN).

  Per image (eval-mode prediction, as sharpening makes it): the training's full-resolution loss
  and its terms (`loss`, `loss_<term>`), D_rho, and, when the MS is at least 32x32 (ratio 4),
  R-Q2n, R-SAM and R-ERGAS (`metrics.host.full_resolution`, the reprojection family): model
  selection by the unsupervised criterion itself, with the protocol's indexes beside it.
  """
  objective = objective_lib.objective_from_config(config)
  ratio = int(config.data.ratio)
  chunks, samples = [], []
  for batch_dn, pred, keep in predict_file(source, predictor, params, model_state,
                                           eval_global_batch_size(config, predictor.mesh),
                                           config.eval.max_valid_images):
    batch_dn, pred = _select(batch_dn, keep), pred[keep]
    reprojection = None
    if min(batch_dn["ms"].shape[1:3]) >= FR_BLOCK and ratio == host.REPROJECTION_STEP:
      reprojection = host.full_resolution(pred, batch_dn["ms"], batch_dn["pan"],
                                          sensor=config.data.sensor, ratio=ratio,
                                          block_size=FR_BLOCK, indexes="reprojection")
    for i in range(len(pred)):
      one = {k: batch_dn[k][i] for k in MODEL_INPUTS}
      loss, terms = objective_lib.loss_in_model_units(objective, pred[i], one, source.img_range)
      values = {"loss": float(loss), **{f"loss_{k}": float(v) for k, v in terms.items()}}
      if reprojection is None:
        values["D_rho"] = float(metrics.d_rho(pred[i], one["pan"], ratio=ratio))
      else:
        values.update({k: float(reprojection[k][i])
                       for k in ("D_rho",) + REPROJECTION_VALID_KEYS})
      chunks.append(values)
      if len(samples) < config.eval.num_preview_images:
        samples.append(dict(pan=one["pan"], lms=one["lms"], pred=pred[i]))
  return {k: float(np.mean([c[k] for c in chunks])) for k in chunks[0]}, samples


def validate(config: ml_collections.ConfigDict, source: Any, predictor: inference.Predictor,
             params: Any, model_state: Any
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """(mean RR indices over the validation split, preview samples {lms, gt, pred} in DN).

  With config.loss "full_resolution" (no gt): `validate_full_resolution`.
  """
  if config.get("loss", "supervised") == "full_resolution":
    return validate_full_resolution(config, source, predictor, params, model_state)
  settings = host.settings_from_config(config, validation=True)
  chunks, samples = [], []
  for batch_dn, pred, keep in predict_file(source, predictor, params, model_state,
                                           eval_global_batch_size(config, predictor.mesh),
                                           config.eval.max_valid_images):
    indexes = host.reduced_resolution(pred, batch_dn["gt"], hint=VALID_HINT, **settings)
    chunks.append(_select(indexes, keep))
    batch_dn, pred = _select(batch_dn, keep), pred[keep]
    for i in range(len(pred)):
      if len(samples) < config.eval.num_preview_images:
        samples.append(dict(lms=batch_dn["lms"][i], gt=batch_dn["gt"][i], pred=pred[i]))
  values = _concat(chunks)
  return {k: float(np.mean(v)) for k, v in values.items()}, samples


def test_indexes(resolution: str, fused: np.ndarray, batch_dn: Mapping[str, np.ndarray],
                 config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Per-image indexes of `fused` (DN) on test images (`metrics.host`, config.eval settings):
  against `gt` at reduced resolution, from `ms`, `pan`, `lms` at full resolution."""
  if resolution == "reduced":
    return host.reduced_resolution(fused, batch_dn["gt"], hint=TEST_HINT,
                                   **host.settings_from_config(config))
  return host.full_resolution(fused, batch_dn["ms"], batch_dn["pan"], lms=batch_dn["lms"],
                              hint=FULL_HINT, **host.fr_settings_from_config(config))


def _panel(resolution: str, batch_dn: Mapping[str, np.ndarray], pred: np.ndarray, i: int,
           rgb: tuple[int, int, int]) -> np.ndarray:
  if resolution == "reduced":
    return previews.reduced_resolution_panel(batch_dn["lms"][i], batch_dn["gt"][i], pred[i], rgb)
  return previews.full_resolution_panel(batch_dn["pan"][i], batch_dn["lms"][i], pred[i], rgb)


def evaluate_test_files(config: ml_collections.ConfigDict, spec: ModelSpec, params: Any,
                        model_state: Any, mesh: jax.sharding.Mesh, out_dir: str | os.PathLike,
                        *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Tests on the reduced- and full-resolution test splits next to EXP (lms); writes the report.

  `params`/`model_state` are replicated on `mesh`. Returns the summary {resolution: {method:
  {index: {mean, std, n}}}} and writes `<out_dir>/test_results.{md,tex,csv,json}` plus
  previews `<out_dir>/previews/*.png`.
  """
  out_dir = pathlib.Path(out_dir)
  predictor = inference.Predictor(spec, img_range=float(config.data.img_range), mesh=mesh,
                                  clip=bool(config.eval.clip_output))
  gbs = eval_global_batch_size(config, mesh)
  method = names.method(spec.name)
  rgb = imaging.rgb_bands(config.data.sensor, int(config.data.num_bands))
  splits = {res: split for res, split in TEST_SPLITS.items() if data.has_split(config, split)}
  if not splits:
    raise InputError("no test split: set config.data.test_reduced_file and/or "
                     "config.data.test_full_file")
  per_image: dict[str, dict[str, dict[str, np.ndarray]]] = {}
  panels = {}
  for res, split in splits.items():
    t0 = time.time()
    with contextlib.closing(data.open_split(config, split)) as source:
      ours, exp, shown = [], [], 0
      for batch_dn, pred, keep in predict_file(source, predictor, params, model_state, gbs):
        ours.append(_select(test_indexes(res, pred, batch_dn, config), keep))
        exp.append(_select(test_indexes(res, batch_dn["lms"], batch_dn, config), keep))
        batch_dn, pred = _select(batch_dn, keep), pred[keep]
        for i in range(min(len(pred), config.eval.num_preview_images - shown)):
          panels[f"{res}_{shown}"] = _panel(res, batch_dn, pred, i, rgb)
          shown += 1
      per_image[res] = {"EXP": _concat(exp), method: _concat(ours)}
    log.info("Tested on %s (%s resolution, %d images) in %.1f s.", split, res,
             len(next(iter(per_image[res][method].values()))), time.time() - t0)
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


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                        checkpoint: str | None = None) -> dict[str, Any]:
  """Tests a saved model and writes the report to `<workdir>/report`.

  `checkpoint`: an exported `.npz`, a workdir, a checkpoints directory or one step's directory;
  default: `<workdir>/checkpoints`, the latest or best step (config.eval.checkpoint).
  """
  config_lib.check_config(config, mode="evaluate", num_devices=jax.device_count())
  workdir = files.check_output_folder(pathlib.Path(workdir).absolute(), flag="--workdir")
  mesh = sharding.make_mesh()
  source = pathlib.Path(checkpoint) if checkpoint else workdir / "checkpoints"
  loaded = inference.load(source, which=config.eval.checkpoint, mesh=mesh)
  check_compatible(config, loaded.metadata, source)
  eval_config = with_model_fields(config, loaded.config)
  params, model_state = sharding.replicate((loaded.params, loaded.model_state), mesh)
  log.info("Evaluating %s (step %s).", source, loaded.step)
  return evaluate_test_files(eval_config, loaded.spec, params, model_state, mesh,
                             workdir / "report",
                             metadata=dict(step=loaded.step, checkpoint=str(source)))


def with_model_fields(config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """`config` with the model fields (and half_precision) of the saved run."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.update({k: v for k, v in saved.model.items() if k in out.model})
  if "half_precision" in saved:
    out.half_precision = saved.half_precision
  out.lock()
  return out


def check_compatible(config: ml_collections.ConfigDict, saved: Mapping[str, Any],
                     source: Any) -> None:
  """Refuses a model for another band count; warns about another img_range."""
  if int(saved["num_bands"]) != int(config.data.num_bands):
    raise InputError(f"{source} holds a model for {saved['num_bands']} bands, the config's data "
                     f"have {config.data.num_bands} (config.data.num_bands)")
  if "img_range" in saved and float(saved["img_range"]) != float(config.data.img_range):
    log.warning("%s was trained with img_range %s, the config says %s.", source,
                saved["img_range"], config.data.img_range)
