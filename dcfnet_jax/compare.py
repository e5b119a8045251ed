r"""Compares pansharpening methods on a dataset's test files, as the DCFNet paper's tables do.

  python -m dcfnet_jax.compare --config=demo --methods=all --out=runs/compare_demo \
      [--checkpoints=dcfnet=runs/demo/export/dcfnet_none.npz --checkpoints=pnn=...] \
      [--train-steps=300] [--max-images=N]

Every method runs on the reduced-resolution test file (indices against `gt`: Q2n, Q, SAM,
ERGAS, SCC) and on the full-resolution one (the toolbox's D_lambda, D_s, QNR, D_lambda_K, HQNR,
then the reprojection protocol's R-Q2n, R-Q, R-SAM, R-ERGAS, D_rho; one family with
`--config.eval.fr_indexes=toolbox|reprojection`), both from `config.data`, with the settings of
`config.eval`. Methods:

* classical (`dcfnet_jax.classical`, float64): exp, bdsd_pc, mtf_glp_hpm, mtf_glp_fs (GLP-Reg),
  cvpr19 (our reconstruction). Their outputs are not clipped (as in the toolbox).
* networks: pnn, dicnn1, pannet, dmdnet (reconstruction), fusionnet, dcfnet. A network runs
  from `--checkpoints=NAME=PATH` (an exported .npz, a training workdir or a checkpoint
  directory). Without one it is trained for `--train-steps` steps through the training code
  (`train.train_and_evaluate`, config `--config` with `model.name` = NAME, workdir
  `<out>/train/NAME`, resumable) or, with `--train-steps=0` (the default), skipped with a note
  in the table. Networks run through `inference.Predictor`: outputs clipped to [0, 1] when
  `config.eval.clip_output`, then multiplied by img_range, as the official test step does.

Writes `<out>/comparison.{md,tex,csv,json}` (mean ± std per index, best in bold; via
`dcfnet_jax.reports`) and `<out>/figure_reduced.png` / `figure_full.png`: the same crop of one
test image from every method, with |method − GT| error maps on a common colour scale at
reduced resolution. `--save-fused` also writes each method's outputs to `<out>/fused/`.
"""

from __future__ import annotations

import contextlib
import argparse
import dataclasses
import logging
import pathlib
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from dcfnet_jax import classical, cli, data, evaluation, files, imaging, inference, names
from dcfnet_jax import previews, reports, sharding, train
from dcfnet_jax.classical import batch as classical_batch
from dcfnet_jax.errors import InputError
from dcfnet_jax.models import baselines

log = logging.getLogger(__name__)

CLASSICAL = tuple(classical.METHODS)
NETWORKS = tuple(baselines.NETWORKS) + ("dcfnet",)
GROUPS = {"all": CLASSICAL + NETWORKS, "classical": CLASSICAL, "networks": NETWORKS}


def parse_methods(spec: str) -> list[str]:
  """"all", "classical", "networks" or a comma-separated list (groups may be mixed in)."""
  out: list[str] = []
  for part in (p.strip().lower() for p in spec.split(",")):
    if not part:
      continue
    names = GROUPS.get(part, (part,))
    for name in names:
      if name not in CLASSICAL + NETWORKS:
        raise InputError(f"unknown method {name!r}; expected {', '.join(CLASSICAL + NETWORKS)} "
                         f"or a group ({', '.join(GROUPS)})")
      if name not in out:
        out.append(name)
  if not out:
    raise InputError("--methods is empty")
  return out


def parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
  """["name=PATH", ...] -> {name: PATH} (network names only)."""
  out = {}
  for item in items or ():
    name, sep, path = item.partition("=")
    name = name.strip().lower()
    if not sep or not path:
      raise InputError(f"--checkpoints expects NAME=PATH, got {item!r}")
    if name not in NETWORKS:
      raise InputError(f"--checkpoints {item!r}: {name!r} is not a network "
                       f"({', '.join(NETWORKS)})")
    out[name] = path
  return out


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class TestSet:
  """One test split in memory, DN, NHWC float32 (ms, pan, lms[, gt]); a source for
  `evaluation.predict_file`."""

  resolution: str  # "reduced" or "full"
  path: str
  arrays: dict[str, np.ndarray]
  img_range: float

  @property
  def num_images(self) -> int:
    return int(self.arrays["ms"].shape[0])

  def __len__(self) -> int:
    return self.num_images

  def read_dn(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    return {k: v[np.asarray(indices)] for k, v in self.arrays.items()}


def load_test_sets(config: ml_collections.ConfigDict, max_images: int = -1) -> list[TestSet]:
  sets = []
  for res, split in evaluation.TEST_SPLITS.items():
    if not data.has_split(config, split):
      log.warning("No %s-resolution test split in the config (config.data.%s_file): skipping "
                  "that table.", res, split)
      continue
    with contextlib.closing(data.open_split(config, split)) as source:
      evaluation.check_image_size(config, split, source)  # before any method runs
      n = len(source) if max_images is None or max_images < 0 else min(len(source), max_images)
      label = config.data[f"{split}_file"] or f"{config.data.tfds_name}:{split}"
      sets.append(TestSet(res, str(label), source.read_dn(np.arange(n)),
                          float(config.data.img_range)))
  if not sets:
    raise InputError("no test file: set config.data.test_reduced_file and/or "
                     "config.data.test_full_file")
  return sets


# ---------------------------------------------------------------------------------------------
# Running methods


def run_classical(method: str, test: TestSet, config: ml_collections.ConfigDict) -> np.ndarray:
  """Fused images (N, H, W, C) in DN, float64 (not clipped)."""
  a = test.arrays

  def progress(done, total, seconds):
    if done == total or done % 10 == 0:
      log.info("%s (%s): %d/%d images (%.2f s for the last).", method, test.resolution, done,
                   total, seconds)

  return classical_batch.fuse_images(method, a["ms"], a["pan"], a["lms"], sensor=config.data.sensor,
                           ratio=int(config.data.ratio), progress=progress)


def network_runner(loaded: inference.LoadedModel, config: ml_collections.ConfigDict
                   ) -> Callable[[TestSet], np.ndarray]:
  """test set -> fused images (N, H, W, C) in DN of a network (`inference.Predictor`, the
  official test step: clipped when config.eval.clip_output, times the config's img_range),
  float64. The predictor and the replicated weights are made once for every test set."""
  mesh = sharding.make_mesh()
  predictor = loaded.predictor(mesh, clip=bool(config.eval.clip_output),
                               img_range=float(config.data.img_range))
  params, model_state = predictor.replicate(loaded.params, loaded.model_state)
  batch_size = evaluation.eval_global_batch_size(config, mesh)

  def run(test: TestSet) -> np.ndarray:
    outputs = [pred[keep] for _, pred, keep in evaluation.predict_file(
        test, predictor, params, model_state, batch_size)]
    return np.concatenate(outputs).astype(np.float64)

  return run


def train_network(name: str, config: ml_collections.ConfigDict, steps: int,
                  workdir: pathlib.Path) -> str:
  """Trains `name` for `steps` steps with `config` (mode "train"); returns the export path."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.name = name
  cfg.model.residual = None  # each network's own default (PNN is not residual)
  cfg.mode = "train"
  cfg.num_train_steps = int(steps)
  cfg.checkpoint_every_steps = int(steps)
  cfg.eval_every_steps = int(steps)
  cfg.log_every_steps = max(1, int(steps) // 10)
  cfg.lock()
  log.info("Training %s for %d steps in %s (no checkpoint was given).", name, steps, workdir)
  result = train.train_and_evaluate(cfg, workdir)
  return str(result["export"])


def load_network(path: str, config: ml_collections.ConfigDict, expected_name: str
                 ) -> inference.LoadedModel:
  """The network of a checkpoint (best step of a workdir), checked against the config's data."""
  loaded = inference.load(path)
  if loaded.num_bands != int(config.data.num_bands):
    raise InputError(f"checkpoint {path} holds a {loaded.num_bands}-band model; the test data "
                     f"have {config.data.num_bands} bands")
  if loaded.name.lower() != expected_name:
    raise InputError(f"checkpoint {path} holds a {loaded.name!r} model, given as "
                     f"{expected_name!r}")
  if float(loaded.img_range) != float(config.data.img_range):
    log.warning("%s was trained with img_range %s; the config says %s (used for the data).",
                path, loaded.img_range, config.data.img_range)
  return loaded


# ---------------------------------------------------------------------------------------------
# Indices, tables and figures


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
    raise InputError(f"figure image {image} is out of range for {test.num_images} test images")
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
    raise InputError(f"--checkpoints given for {unknown}, which are not in --methods")
  tests = load_test_sets(config, max_images)
  per_image: dict[str, dict[str, dict[str, np.ndarray]]] = {t.resolution: {} for t in tests}
  outputs: dict[str, dict[str, np.ndarray]] = {t.resolution: {} for t in tests}
  skipped: dict[str, str] = {}
  sources: dict[str, str] = {}
  timings: dict[str, float] = {}
  for method in methods:
    label = names.method(method)
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
          log.warning("Skipping %s: %s.", label, skipped[label])
          continue
        else:
          sources[label] = f"checkpoint {path}"
        loaded = load_network(path, config, method)
        runner = network_runner(loaded, config)
      for test in tests:
        fused = runner(test)
        outputs[test.resolution][label] = fused
        per_image[test.resolution][label] = evaluation.test_indexes(
            test.resolution, fused, test.arrays, config)
    except (ValueError, FileNotFoundError) as e:
      skipped[label] = f"failed: {e}"
      log.error("%s failed: %s", label, e)
      for res in per_image:
        per_image[res].pop(label, None)
        outputs[res].pop(label, None)
      continue
    timings[label] = time.time() - t0
    log.info("%s done in %.1f s.", label, timings[label])

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
  rgb = imaging.rgb_bands(config.data.sensor, int(config.data.num_bands))
  for test in tests:
    if outputs[test.resolution]:
      figure = comparison_figure(test, outputs[test.resolution], rgb, image=figure_image,
                                 crop=figure_crop)
      paths[f"figure_{test.resolution}"] = previews.save_png(
          out_dir / f"figure_{test.resolution}.png", figure)
    if save_fused:
      for label, fused in outputs[test.resolution].items():
        safe = "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower()
        files.save_arrays_h5(out_dir / "fused" / f"{safe}_{test.resolution}.h5",
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
# Command line


def build_parser() -> cli.Parser:
  p = cli.make_parser("dcfnet_jax.compare", __doc__)
  cli.add_config_arguments(p)
  p.add_argument("--methods", default="all", help="comma-separated methods or groups (all, "
                 f"classical, networks): {', '.join(CLASSICAL + NETWORKS)}")
  p.add_argument("--checkpoints", action="append", default=[], metavar="NAME=PATH",
                 help="a network's exported .npz, workdir or checkpoint directory; repeat per "
                 "network")
  p.add_argument("--train-steps", type=int, default=0, help="train networks without a "
                 "checkpoint for this many steps through the training code (0: skip them)")
  p.add_argument("--out", default="compare_out", help="output directory")
  p.add_argument("--max-images", type=int, default=-1,
                 help="use only the first N images of each test file (-1: all)")
  p.add_argument("--figure-image", type=int, default=0, help="test image shown in the figures")
  p.add_argument("--figure-crop", type=int, default=128,
                 help="side of the central crop in the figures (0: whole image)")
  p.add_argument("--save-fused", action="store_true", help="also write every method's outputs")
  return p


def run_cli(args: argparse.Namespace) -> None:
  if args.train_steps < 0:
    raise InputError(f"--train-steps must be >= 0, got {args.train_steps}")
  files.check_output_folder(args.out, flag="--out")
  checkpoints = parse_checkpoints(args.checkpoints)
  for name, path in checkpoints.items():  # missing or damaged: now, not after the other methods
    try:
      inference.check_source(path)
    except InputError as e:
      raise InputError(f"--checkpoints {name}={path}: {e}") from e
  result = run(cli.config_from_args(args), parse_methods(args.methods), args.out,
               checkpoints=checkpoints, train_steps=args.train_steps,
               max_images=args.max_images, figure_image=args.figure_image,
               figure_crop=args.figure_crop, save_fused=args.save_fused)
  md = result["paths"].get("md")
  if md:
    print(pathlib.Path(md).read_text())
  for _, path in sorted(result["paths"].items()):
    log.info("wrote %s", path)


main = cli.entry(build_parser, run_cli)


if __name__ == "__main__":
  sys.exit(main())
