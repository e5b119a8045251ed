r"""Compares pansharpening methods on a dataset's test files, as the DCFNet paper's tables do.

  python -m dcfnet_jax.compare --config=configs/demo.py --methods=all --out=runs/compare_demo \
      [--checkpoints=dcfnet=runs/demo/export/dcfnet_none.npz --checkpoints=pnn=...] \
      [--train-steps=300] [--max-images=N]

Every method runs on the reduced-resolution test file (indices against `gt`: Q2n, Q, SAM,
ERGAS, SCC) and on the full-resolution one (D_lambda, D_s, QNR, D_lambda_K, HQNR), both from
`config.data`, with the toolbox settings of `config.eval`. Methods:

* classical (`dcfnet_jax.classical`, float64): exp, bdsd_pc, mtf_glp_hpm, mtf_glp_fs (GLP-Reg),
  cvpr19 (our reconstruction). Their outputs are not clipped (as in the toolbox).
* networks: pnn, dicnn1, pannet, dmdnet (reconstruction), fusionnet, dcfnet. A network runs
  from `--checkpoints=NAME=PATH` (an exported .npz, a training workdir or a checkpoint
  directory). Without one it is trained for `--train-steps` steps through the training code
  (`train.train_and_evaluate`, config `--config` with `model.name` = NAME, workdir
  `<out>/train/NAME`, resumable) or, with `--train-steps=0` (the default), skipped with a note
  in the table. Network outputs are clipped to [0, 1] when `config.eval.clip_output`, then
  multiplied by img_range, as the official test step does.

Writes `<out>/comparison.{md,tex,csv,json}` (mean ± std per index, best in bold; via
`dcfnet_jax.reports`) and `<out>/figure_reduced.png` / `figure_full.png`: the same crop of one
test image from every method, with |method − GT| error maps on a common colour scale at
reduced resolution. `--save-fused` also writes each method's outputs to `<out>/fused/`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from dcfnet_jax import classical, previews, reports
from dcfnet_jax.models import baselines

CLASSICAL = tuple(classical.METHODS)
NETWORKS = tuple(baselines.NETWORKS) + ("dcfnet",)
GROUPS = {"all": CLASSICAL + NETWORKS, "classical": CLASSICAL, "networks": NETWORKS}
NETWORK_DISPLAY = {**baselines.DISPLAY_NAMES, "dcfnet": "DCFNet"}


def display_name(method: str) -> str:
  return classical.DISPLAY_NAMES.get(method) or NETWORK_DISPLAY.get(method, method)


def parse_methods(spec: str) -> list[str]:
  """"all", "classical", "networks" or a comma-separated list (groups may be mixed in)."""
  out: list[str] = []
  for part in (p.strip().lower() for p in spec.split(",")):
    if not part:
      continue
    names = GROUPS.get(part, (part,))
    for name in names:
      if name not in CLASSICAL + NETWORKS:
        raise ValueError(f"unknown method {name!r}; expected {', '.join(CLASSICAL + NETWORKS)} "
                         f"or a group ({', '.join(GROUPS)})")
      if name not in out:
        out.append(name)
  if not out:
    raise ValueError("--methods is empty")
  return out


def parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
  """["name=PATH", ...] -> {name: PATH} (network names only)."""
  out = {}
  for item in items or ():
    name, sep, path = item.partition("=")
    name = name.strip().lower()
    if not sep or not path:
      raise ValueError(f"--checkpoints expects NAME=PATH, got {item!r}")
    if name not in NETWORKS:
      raise ValueError(f"--checkpoints {item!r}: {name!r} is not a network "
                       f"({', '.join(NETWORKS)})")
    out[name] = path
  return out


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class TestSet:
  """One test file in DN, NHWC float32 (ms, pan, lms[, gt])."""

  resolution: str  # "reduced" or "full"
  path: str
  arrays: dict[str, np.ndarray]

  @property
  def num_images(self) -> int:
    return int(self.arrays["ms"].shape[0])


def load_test_sets(config: ml_collections.ConfigDict, max_images: int = -1) -> list[TestSet]:
  from dcfnet_jax.data import pancollection  # pylint: disable=g-import-not-at-top

  sets = []
  for res, path in (("reduced", config.data.test_reduced_file),
                    ("full", config.data.test_full_file)):
    if not path:
      logging.warning("No %s-resolution test file in the config (config.data.test_%s_file): "
                      "skipping that table.", res, res)
      continue
    with pancollection.open_source(path, config.data, require_gt=(res == "reduced")) as source:
      n = len(source) if max_images is None or max_images < 0 else min(len(source), max_images)
      sets.append(TestSet(res, str(path), source.read_dn(np.arange(n))))
  if not sets:
    raise ValueError("no test file: set config.data.test_reduced_file and/or "
                     "config.data.test_full_file")
  return sets


# ---------------------------------------------------------------------------------------------
# Running methods


def run_classical(method: str, test: TestSet, config: ml_collections.ConfigDict) -> np.ndarray:
  """Fused images (N, H, W, C) in DN, float64 (not clipped)."""
  from dcfnet_jax.classical import batch  # pylint: disable=g-import-not-at-top

  a = test.arrays

  def progress(done, total, seconds):
    if done == total or done % 10 == 0:
      logging.info("%s (%s): %d/%d images (%.2f s for the last).", method, test.resolution, done,
                   total, seconds)

  return batch.fuse_images(method, a["ms"], a["pan"], a["lms"], sensor=config.data.sensor,
                           ratio=int(config.data.ratio), progress=progress)


def make_network_predictor(model: Any, residual: bool, img_range: float, clip: bool
                           ) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
  """A jitted `batch in DN -> fused DN` for an eval-mode NNX model (the official test step)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from dcfnet_jax.models import dcfnet  # pylint: disable=g-import-not-at-top

  graphdef, state = nnx.split(model)
  scale = np.float32(img_range)

  @jax.jit
  def predict(state, pan, lms, ms):
    net = nnx.merge(graphdef, state)
    pan, lms, ms = pan / scale, lms / scale, ms / scale
    out = net(pan, lms, dcfnet.make_mms(ms), ms).astype(jnp.float32)
    if residual:
      out = out + lms
    if clip:
      out = jnp.clip(out, 0.0, 1.0)
    return out * scale

  def run(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(predict(state, *(jnp.asarray(batch[k], jnp.float32)
                                       for k in ("pan", "lms", "ms"))))

  return run


def run_network(predict: Callable, test: TestSet, batch_size: int) -> np.ndarray:
  a = test.arrays
  outputs = []
  for start in range(0, test.num_images, batch_size):
    outputs.append(predict({k: a[k][start:start + batch_size] for k in ("pan", "lms", "ms")}))
  return np.concatenate(outputs).astype(np.float64)


def train_network(name: str, config: ml_collections.ConfigDict, steps: int,
                  workdir: pathlib.Path) -> str:
  """Trains `name` for `steps` steps with `config` (mode "train"); returns the export path."""
  from dcfnet_jax import train  # pylint: disable=g-import-not-at-top

  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.name = name
  cfg.model.residual = None  # each network's own default (PNN is not residual)
  cfg.mode = "train"
  cfg.num_train_steps = int(steps)
  cfg.checkpoint_every_steps = int(steps)
  cfg.eval_every_steps = int(steps)
  cfg.log_every_steps = max(1, int(steps) // 10)
  cfg.lock()
  logging.info("Training %s for %d steps in %s (no checkpoint was given).", name, steps, workdir)
  result = train.train_and_evaluate(cfg, workdir)
  return str(result["export"])


def load_network(path: str, config: ml_collections.ConfigDict, expected_name: str):
  """(eval-mode model, residual) from a checkpoint, checked against the config's data."""
  from dcfnet_jax import pansharpen  # pylint: disable=g-import-not-at-top

  loaded = pansharpen.load_model(path)
  if loaded.num_bands != int(config.data.num_bands):
    raise ValueError(f"checkpoint {path} holds a {loaded.num_bands}-band model; the test data "
                     f"have {config.data.num_bands} bands")
  if loaded.name.lower() != expected_name:
    raise ValueError(f"checkpoint {path} holds a {loaded.name!r} model, given as "
                     f"{expected_name!r}")
  if float(loaded.img_range) != float(config.data.img_range):
    logging.warning("%s was trained with img_range %s; the config says %s (used for the data).",
                    path, loaded.img_range, config.data.img_range)
  return loaded.model, loaded.residual


# ---------------------------------------------------------------------------------------------
# Indices, tables and figures


def evaluate(fused: np.ndarray, test: TestSet, config: ml_collections.ConfigDict
             ) -> dict[str, np.ndarray]:
  from dcfnet_jax import train  # pylint: disable=g-import-not-at-top

  a = test.arrays
  if test.resolution == "reduced":
    return train.reduced_resolution_indexes(fused, a["gt"], config)
  return train.full_resolution_indexes(fused, a["ms"], a["pan"], a["lms"], config)


def _short(label: str) -> str:
  """Figure titles must fit a 128-pixel panel: "CVPR19 (reconstruction)" -> "CVPR19*"."""
  base = label.split(" (")[0]
  return base + "*" if "reconstruction" in label else base


def _crop_window(height: int, width: int, size: int) -> tuple[slice, slice]:
  size = min(size, height, width) if size > 0 else min(height, width)
  r0, c0 = (height - size) // 2, (width - size) // 2
  return slice(r0, r0 + size), slice(c0, c0 + size)


def comparison_figure(test: TestSet, fused: Mapping[str, np.ndarray], rgb: Sequence[int], *,
                      image: int = 0, crop: int = 128, min_size: int = 128) -> np.ndarray:
  """uint8 figure: the same crop from every method (top); |method − GT| maps (bottom, RR).

  Reduced resolution: GT first, colours stretched on the GT crop, error maps (mean absolute
  error over bands, in DN) share one colour scale (99th percentile over all methods) with a
  colour bar. Full resolution: PAN first, colours stretched on the lms crop, no error maps.
  Titles are shortened (a * marks our reconstructions).
  """
  a = test.arrays
  if not 0 <= image < test.num_images:
    raise ValueError(f"figure image {image} is out of range for {test.num_images} test images")
  rows, cols = _crop_window(a["pan"].shape[1], a["pan"].shape[2], crop)
  cut = lambda x: np.asarray(x[image][rows, cols], np.float64)  # noqa: E731
  names = list(fused)
  if test.resolution == "reduced":
    reference = cut(a["gt"])
    bounds = previews.stretch_bounds(reference, rgb)
    top = [previews.true_color(reference, rgb, bounds)]
    titles = ["GT"]
  else:
    reference = cut(a["lms"])
    bounds = previews.stretch_bounds(reference, rgb)
    top = [previews.true_color(cut(a["pan"]), rgb)]
    titles = ["PAN"]
  top += [previews.true_color(cut(fused[n]), rgb, bounds) for n in names]
  titles += [_short(n) for n in names]
  top = [previews.upscale(p, min_size) for p in top]
  figure = previews.tile(top, titles)
  if test.resolution != "reduced":
    return figure
  errors = {n: np.abs(cut(fused[n]) - reference).mean(-1) for n in names}
  vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99.0)),
             1e-12)
  maps = [previews.upscale(previews.error_map(cut(fused[n]), reference, vmax)[0], min_size)
          for n in names]
  blank = np.full_like(maps[0], 255)
  bar = previews.colorbar(maps[0].shape[0], 0.0, vmax)
  bottom = previews.tile([blank] + maps + [bar], ["|method - GT|, DN"] +
                         [_short(n) for n in names] + [""])
  width = max(figure.shape[1], bottom.shape[1])
  pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)),  # noqa: E731
                         constant_values=255)
  return np.concatenate([pad(figure), np.full((6, width, 3), 255, np.uint8), pad(bottom)], 0)


# ---------------------------------------------------------------------------------------------
# The whole comparison


def run(config: ml_collections.ConfigDict, methods: Sequence[str], out_dir: str | pathlib.Path,
        *, checkpoints: Mapping[str, str] | None = None, train_steps: int = 0,
        max_images: int = -1, figure_image: int = 0, figure_crop: int = 128,
        save_fused: bool = False) -> dict[str, Any]:
  """Runs `methods`, writes the table and figures to `out_dir`; returns the summary.

  Returns {"summary": {resolution: {method: {index: {mean, std, n}}}}, "skipped": {method:
  reason}, "paths": {...}}.
  """
  out_dir = pathlib.Path(out_dir)
  checkpoints = dict(checkpoints or {})
  unknown = sorted(set(checkpoints) - set(methods))
  if unknown:
    raise ValueError(f"--checkpoints given for {unknown}, which are not in --methods")
  tests = load_test_sets(config, max_images)
  per_image: dict[str, dict[str, dict[str, np.ndarray]]] = {t.resolution: {} for t in tests}
  outputs: dict[str, dict[str, np.ndarray]] = {t.resolution: {} for t in tests}
  skipped: dict[str, str] = {}
  sources: dict[str, str] = {}
  timings: dict[str, float] = {}
  batch_size = max(1, int(config.eval.batch_size))
  for method in methods:
    label = display_name(method)
    t0 = time.time()
    try:
      if method in CLASSICAL:
        runner = lambda test, m=method: run_classical(m, test, config)  # noqa: E731
        sources[label] = "classical (float64)"
      else:
        path = checkpoints.get(method)
        if path is None and train_steps > 0:
          path = train_network(method, config, train_steps, out_dir / "train" / method)
          sources[label] = f"trained {train_steps} steps here ({path})"
        elif path is None:
          skipped[label] = "no checkpoint (--checkpoints) and --train-steps=0"
          logging.warning("Skipping %s: %s.", label, skipped[label])
          continue
        else:
          sources[label] = f"checkpoint {path}"
        model, residual = load_network(path, config, method)
        predict = make_network_predictor(model, residual, float(config.data.img_range),
                                         bool(config.eval.clip_output))
        runner = lambda test, p=predict: run_network(p, test, batch_size)  # noqa: E731
      for test in tests:
        fused = runner(test)
        outputs[test.resolution][label] = fused
        per_image[test.resolution][label] = evaluate(fused, test, config)
    except (ValueError, FileNotFoundError) as e:
      skipped[label] = f"failed: {e}"
      logging.error("%s failed: %s", label, e)
      for res in per_image:
        per_image[res].pop(label, None)
        outputs[res].pop(label, None)
      continue
    timings[label] = time.time() - t0
    logging.info("%s done in %.1f s.", label, timings[label])

  notes = _notes(config, sources, skipped, train_steps)
  metadata = dict(config=config.to_dict(), methods=list(methods), sources=sources,
                  skipped=skipped, seconds=timings,
                  test_files={t.resolution: t.path for t in tests},
                  num_images={t.resolution: t.num_images for t in tests})
  paths = {}
  if any(per_image.values()):
    paths.update(reports.write_report(out_dir, {r: m for r, m in per_image.items() if m},
                                      name="comparison", num_bands=int(config.data.num_bands),
                                      metadata=metadata, notes=notes))
  from dcfnet_jax import train  # pylint: disable=g-import-not-at-top

  rgb = train.rgb_bands(config)
  for test in tests:
    if outputs[test.resolution]:
      figure = comparison_figure(test, outputs[test.resolution], rgb, image=figure_image,
                                 crop=figure_crop)
      paths[f"figure_{test.resolution}"] = previews.save_png(
          out_dir / f"figure_{test.resolution}.png", figure)
    if save_fused:
      from dcfnet_jax import io_utils  # pylint: disable=g-import-not-at-top
      for label, fused in outputs[test.resolution].items():
        safe = "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower()
        io_utils.save_arrays_h5(out_dir / "fused" / f"{safe}_{test.resolution}.h5",
                                {"fused": np.ascontiguousarray(np.moveaxis(fused, -1, 1))},
                                method=label, source=test.path, layout="N,C,H,W, DN")
  summary = {res: {m: reports.summarize(v) for m, v in methods_.items()}
             for res, methods_ in per_image.items()}
  return dict(summary=summary, skipped=skipped, paths={k: str(v) for k, v in paths.items()})


def _notes(config, sources: Mapping[str, str], skipped: Mapping[str, str],
           train_steps: int) -> str:
  lines = [
      f"Data in DN (img_range {config.data.img_range:g}, sensor {config.data.sensor}). "
      f"EXP = the file's lms (23-tap interpolation). Classical methods run in float64 and are "
      f"not clipped; networks are {'clipped to [0, 1] then ' if config.eval.clip_output else ''}"
      f"multiplied by img_range. Toolbox settings: block {config.eval.block_size}, crop "
      f"{config.eval.flag_cut_bounds} (dim_cut {config.eval.dim_cut}), thvalues "
      f"{config.eval.thvalues}.",
      "CVPR19 and DMDNet are reconstructions (no reference code exists): their numbers are not "
      "the papers'. See docs/baselines.md.",
  ]
  trained = [m for m, s in sources.items() if s.startswith("trained")]
  if trained:
    lines.append(f"{', '.join(trained)}: trained only {train_steps} steps by this comparison "
                 "(not converged; not the published training).")
  for method, source in sources.items():
    if source.startswith("checkpoint"):
      lines.append(f"{method}: {source}.")
  for method, reason in skipped.items():
    lines.append(f"{method}: skipped ({reason}).")
  return " ".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line (flags are defined only when run as a program, so importing this module next to
# dcfnet_jax.main never defines `--config` twice)


def _define_flags() -> dict[str, Any]:
  return dict(
      config=config_flags.DEFINE_config_file(
          "config", None, "Config file, e.g. configs/demo.py or configs/wv3.py (test files and "
          "evaluation settings come from it).", lock_config=True),
      methods=flags.DEFINE_string(
          "methods", "all", "Comma-separated methods or groups (all, classical, networks): "
          f"{', '.join(CLASSICAL + NETWORKS)}."),
      checkpoints=flags.DEFINE_multi_string(
          "checkpoints", [], "NAME=PATH of a network's exported .npz, workdir or checkpoint "
          "directory; repeat per network."),
      train_steps=flags.DEFINE_integer(
          "train-steps", 0, "Train networks without a checkpoint for this many steps through "
          "the training code (0: skip them)."),
      out=flags.DEFINE_string("out", "compare_out", "Output directory."),
      max_images=flags.DEFINE_integer(
          "max-images", -1, "Use only the first N images of each test file (-1: all)."),
      figure_image=flags.DEFINE_integer("figure-image", 0, "Test image shown in the figures."),
      figure_crop=flags.DEFINE_integer(
          "figure-crop", 128, "Side of the central crop in the figures (0: whole image)."),
      save_fused=flags.DEFINE_bool("save-fused", False, "Also write every method's outputs."),
  )


def main(argv, flag_values: Mapping[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = {k: v.value for k, v in flag_values.items()}
  if f["config"] is None:
    raise app.UsageError("--config is required (e.g. --config=configs/demo.py)")
  try:
    if f["train_steps"] < 0:
      raise ValueError(f"--train-steps must be >= 0, got {f['train_steps']}")
    result = run(f["config"], parse_methods(f["methods"]), f["out"],
                 checkpoints=parse_checkpoints(f["checkpoints"]), train_steps=f["train_steps"],
                 max_images=f["max_images"], figure_image=f["figure_image"],
                 figure_crop=f["figure_crop"], save_fused=f["save_fused"])
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  md = result["paths"].get("md")
  if md:
    print(pathlib.Path(md).read_text())
  for _, path in sorted(result["paths"].items()):
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
