"""Configs by name, presets, command-line overrides and the config check.

The DCFNet training protocol of the official code (docs/dcfnet_architecture.md §9), per
sensor: `get_config(name, preset)` for `default`, `demo`, `wv3`, `wv2`, `qb`, `gf2`. Command-line tools take
`--config=NAME[:PRESETS]` (an installed package needs no clone: `--config=demo`), or a config
file `--config=configs/wv3.py[:PRESETS]` defining `get_config(preset)` (the repository's
`configs/` files are thin wrappers of `get_config`). Every field can be overridden,
`--config.batch_size=16` (`load`); configs are locked, so a misspelt field fails.

Presets, comma-separated after the config (`--config=wv3:pnn,smoke`):
- `smoke` shrinks everything for a quick end-to-end check;
- a comparison network's name (`pnn`, `dicnn1`, `pannet`, `fusionnet`, `dmdnet`) selects that
  network with the optimiser, schedule, batch size and length of its reference training recipe
  (docs/baseline_definitions.md §3.7; DMDNet's is assumed), applied before `smoke`.

`check_config` fails early, naming the field, on settings that cannot work.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections

from dcfnet_jax.errors import InputError
from dcfnet_jax.losses import objective
from dcfnet_jax.metrics import host

DEMO_DIR = pathlib.Path(__file__).resolve().parent / "data" / "demo"

# Per-sensor data fields (docs/dcfnet_architecture.md §1, docs/metric_definitions.md §0).
SENSORS = {
    "wv3": dict(sensor="wv3", num_bands=8, img_range=2047.0, bits=11),
    "wv2": dict(sensor="wv2", num_bands=8, img_range=2047.0, bits=11),
    "qb": dict(sensor="qb", num_bands=4, img_range=2047.0, bits=11),
    "gf2": dict(sensor="gf2", num_bands=4, img_range=1023.0, bits=10),
}


CONFIG_NAMES = ("default", "demo") + tuple(SENSORS)
MODES = ("train", "evaluate", "train_and_evaluate")
SOURCES = ("h5", "tfds")


def get_config(name: str = "wv3", preset: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config for `name` (wv3, wv2, qb, gf2, demo or default)."""
  if name == "demo":
    config = _base_config()
    _apply_demo(config)
  elif name in SENSORS or name == "default":
    config = _base_config()
    config.data.update(SENSORS.get(name, SENSORS["wv3"]))
  else:
    raise InputError(f"unknown config {name!r}; expected one of: {', '.join(CONFIG_NAMES)} or "
                     "a config file such as configs/wv3.py")
  names = [p.strip() for p in (preset or "").split(",") if p.strip()]
  unknown = [p for p in names if p not in ("smoke", "full_resolution")
             and p not in METHOD_RECIPES]
  if unknown:
    raise InputError(f"unknown config preset {unknown[0]!r}; expected comma-separated names "
                     f"from: smoke, full_resolution, {', '.join(METHOD_RECIPES)}")
  for method in (p for p in names if p in METHOD_RECIPES):
    apply_method_recipe(config, method)
  if "full_resolution" in names:
    apply_full_resolution_preset(config)
  if "smoke" in names:
    apply_smoke_preset(config)
  config.lock()
  return config


def _base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 10  # the framework default seed of the official code

  # What main does: "train_and_evaluate" (default), "train" or "evaluate".
  config.mode = "train_and_evaluate"

  config.data = ml_collections.ConfigDict()
  config.data.sensor = "wv3"  # a name of dcfnet_jax.imaging's sensor table
  config.data.num_bands = 8
  config.data.img_range = 2047.0  # DN of full scale: inputs are divided by it
  config.data.bits = 11  # radiometric bits L used by the metrics' thresholds
  config.data.ratio = 4
  config.data.source = "h5"  # "h5" (PanCollection files) or "tfds"
  config.data.train_file = ""
  config.data.valid_file = ""
  config.data.test_reduced_file = ""  # reduced resolution test file (has gt)
  config.data.test_full_file = ""  # full resolution test file (no gt)
  config.data.tfds_name = ""  # e.g. "pancollection/wv3" when source == "tfds"
  config.data.tfds_data_dir = ""
  config.data.augment = False  # random flips / rot90, the same for every input
  config.data.shuffle = True
  config.data.prefetch = 2
  config.data.drop_remainder = True

  config.model = ml_collections.ConfigDict()
  config.model.name = "dcfnet"
  # Residual learning: output = network + lms, in the loss and at evaluation. None takes the
  # model's own default (DCFNet: True); False gives the official raw form
  # (docs/dcfnet_architecture.md §1).
  config.model.residual = ml_collections.config_dict.placeholder(bool)
  # DCFNet's head: "torch" (the official PyTorch default init) or "zero" (last conv zero, so a
  # residual network starts at lms; the demo's choice).
  config.model.head_init = "torch"
  # BatchNorm momentum, torch convention (running = (1 - m)·running + m·batch); official 0.01.
  config.model.bn_momentum_torch = 0.01

  config.batch_size = 32  # global batch, split over all devices
  config.learning_rate = 1e-4
  config.optimizer = "adam"  # "adam" (official) or "sgd" (torch-style momentum SGD, e.g. PNN)
  config.sgd_momentum = 0.9
  # "constant", "cosine" (to 0 at the end) or "step" (× lr_decay_factor every
  # lr_decay_every_steps steps, or every lr_decay_every_epochs epochs when that is > 0).
  config.lr_schedule = "constant"
  config.lr_decay_factor = 0.1
  config.lr_decay_every_steps = 0
  config.lr_decay_every_epochs = 0
  config.warmup_steps = 0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0  # 0 disables clipping (official default)
  # Training length: num_train_steps wins when > 0, else num_epochs over the training file.
  config.num_train_steps = -1
  config.num_epochs = 5000
  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.half_precision = False  # bfloat16 compute, float32 parameters and loss

  # The training loss: "supervised" (the network's pixel loss against gt: MSE, PNN's with its
  # border) or "full_resolution" (unsupervised, no gt needed: Z-PNN's or lambda-PNN's loss on
  # full-resolution files of ms, pan and maybe lms; docs/adaptation.md). Validation then
  # reports that loss, its terms and the reprojection indexes instead of reduced-resolution ones.
  config.loss = "supervised"
  config.full_resolution = ml_collections.ConfigDict()
  config.full_resolution.kind = "zpnn"  # "zpnn" or "lambda"
  # Loss weights; None takes the sensor's (config.data.sensor) settings of losses.objective.
  config.full_resolution.beta = ml_collections.config_dict.placeholder(float)  # Z-PNN spatial
  config.full_resolution.alpha = ml_collections.config_dict.placeholder(float)  # R-ERGAS
  config.full_resolution.beta_prime = ml_collections.config_dict.placeholder(float)  # D_lambda
  config.full_resolution.gamma = ml_collections.config_dict.placeholder(float)  # spatial
  config.full_resolution.spatial_mean = "selected"  # or "all"

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep_best = 3
  config.checkpoint.best_metric = "ERGAS"  # a reduced-resolution index of validation
  config.checkpoint.best_mode = "min"
  config.checkpoint.async_save = True

  # Evaluation follows the MATLAB toolbox demos (docs/metric_definitions.md §0).
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 4
  config.eval.block_size = 32
  config.eval.flag_cut_bounds = True
  config.eval.dim_cut = 21
  config.eval.thvalues = False
  # Full-resolution test indices: "all" (the toolbox's D_lambda ... HQNR, then the reprojection
  # protocol's R-Q2n, R-Q, R-SAM, R-ERGAS, D_rho, which need images of at least 128x128), or one
  # family, "toolbox" or "reprojection" (docs/full_resolution.md).
  config.eval.fr_indexes = "all"
  # Validation runs on training-size patches (64x64 in PanCollection), smaller than the toolbox
  # crop plus one Q block (256x256 test images fit): its indices skip the crop. A report never
  # changes settings by itself; images too small for them are refused (metrics.host).
  config.eval.valid_flag_cut_bounds = False
  config.eval.valid_block_size = 32
  config.eval.num_preview_images = 4
  config.eval.max_valid_images = -1  # -1: all
  # Clip network outputs to [0, 1] before x img_range, as the official test step does.
  config.eval.clip_output = True
  # Which checkpoint the final test / mode "evaluate" uses: "latest" or "best".
  config.eval.checkpoint = "latest"

  config.distributed = ml_collections.ConfigDict()
  # "auto": initialise jax.distributed when the environment asks for it (e.g. a TPU pod or
  # the coordinator variables below are set); "on"/"off" force it.
  config.distributed.mode = "auto"
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = 0
  config.distributed.process_id = -1

  return config


def _apply_demo(config: ml_collections.ConfigDict) -> None:
  """The embedded Landsat 7 demo set (4 bands B, G, R, NIR; 8-bit; ratio 4 by Wald protocol).

  Small enough to train usefully in a few minutes on 2 CPU cores.
  """
  config.data.update(dict(sensor="none", num_bands=4, img_range=255.0, bits=8))
  config.data.train_file = str(DEMO_DIR / "train.h5")
  config.data.valid_file = str(DEMO_DIR / "valid.h5")
  config.data.test_reduced_file = str(DEMO_DIR / "test_reduced.h5")
  config.data.test_full_file = str(DEMO_DIR / "test_full.h5")
  config.batch_size = 8
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.num_train_steps = 150
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  # A few hundred steps are too few for the official setup to beat EXP: start the residual
  # network at lms and let BatchNorm's running statistics keep up (docs/training.md, the demo).
  config.model.head_init = "zero"
  config.model.bn_momentum_torch = 0.1
  config.checkpoint.best_metric = "ERGAS"


# Reference training recipes of the comparison networks (docs/baseline_definitions.md §3.7; all
# clip the gradient norm at 10). PNN's learning rate is 1e-4·17·17·C, set from the band count
# below.
METHOD_RECIPES = {
    "pnn": dict(optimizer="sgd", sgd_momentum=0.9, learning_rate=None, batch_size=64,
                num_epochs=12000),
    "dicnn1": dict(learning_rate=2e-4, lr_schedule="step", lr_decay_factor=0.1,
                   lr_decay_every_epochs=1500, batch_size=64, num_epochs=5000),
    "pannet": dict(learning_rate=1e-3, batch_size=32, num_epochs=450),
    "fusionnet": dict(learning_rate=3e-4, batch_size=32, num_epochs=400),
    # No reference recipe exists for DMDNet (a reconstruction): PanNet's, assumed.
    "dmdnet": dict(learning_rate=1e-3, batch_size=32, num_epochs=450),
}


def apply_method_recipe(config: ml_collections.ConfigDict, method: str) -> None:
  """Selects network `method` with its reference training recipe (keeps the data fields)."""
  recipe = dict(METHOD_RECIPES[method])
  if recipe["learning_rate"] is None:
    recipe["learning_rate"] = 1e-4 * 17 * 17 * config.data.num_bands
  config.model.name = method
  config.grad_clip_norm = 10.0
  config.update(recipe)


def apply_full_resolution_preset(config: ml_collections.ConfigDict) -> None:
  """Unsupervised training on full-resolution files (no gt): the full-resolution loss, and
  the best checkpoint by its validation value."""
  config.loss = "full_resolution"
  config.checkpoint.best_metric = "loss"
  config.checkpoint.best_mode = "min"


def apply_smoke_preset(config: ml_collections.ConfigDict) -> None:
  """A few tiny steps end to end: for tests, notebooks on CPU and quick checks."""
  config.batch_size = 4
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval.max_valid_images = 2
  config.eval.num_preview_images = 1


# ---------------------------------------------------------------------------------------------
# Loading by name or file, command-line overrides


def load(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """The locked config of `--config=spec` (NAME[:PRESETS] or FILE.py[:PRESETS]) with overrides.

  `overrides` are (dotted field, text) pairs, e.g. ("data.train_file", "train.h5"); the text is
  parsed as the field's type (true/false for booleans). Errors name the field.
  """
  name, _, preset = str(spec).partition(":")
  if name.endswith(".py") or "/" in name:
    config = _from_file(pathlib.Path(name), preset or None)
  else:
    config = get_config(name, preset or None)
  for key, text in overrides:
    set_field(config, key, text)
  return config


def _from_file(path: pathlib.Path, preset: str | None) -> ml_collections.ConfigDict:
  if path.is_dir():
    raise InputError(f"--config {path} is a folder; expected a config file (e.g. configs/wv3.py)")
  if not path.is_file():
    raise InputError(f"--config {path}: no such config file (or use a name: "
                     f"{', '.join(CONFIG_NAMES)})")
  if path.suffix != ".py":
    raise InputError(f"--config {path}: a config file is Python (.py) with get_config()")
  module_spec = importlib.util.spec_from_file_location(f"_dcfnet_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file: say where it fails)
    raise InputError(f"--config {path}: the file fails to run: {type(e).__name__}: {e} "
                     "(DCFNET_TRACEBACK=1 shows where)") from e
  if not hasattr(module, "get_config"):
    raise InputError(f"--config {path}: defines no get_config()")
  config = module.get_config(preset) if preset else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"--config {path}: get_config() returned {type(config).__name__}, not a "
                     "ConfigDict")
  config.lock()
  return config


def set_field(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets `config.<key>` from command-line text, parsed as the field's type."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise InputError(f"--config.{key}: unknown field config.{'.'.join(parents[:i + 1])}")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    known = ", ".join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else ""
    raise InputError(f"--config.{key}: unknown field; config.{'.'.join(parents) or ''} has "
                     f"{known}".replace("config.:", "config:"))
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise InputError(f"--config.{key} is a group of fields; set one of them")
  try:
    node[leaf] = _parse(text, node.get_type(leaf))
  except (TypeError, ValueError) as e:
    raise InputError(f"--config.{key}={text}: {e}") from e


def _parse(text: str, kind: type) -> object:
  if kind is bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
      return True
    if lowered in ("false", "0", "no", "off"):
      return False
    raise ValueError("expected true or false")
  if kind is str:
    return text
  if kind is int:
    return int(text)
  if kind is float:
    return float(text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


# ---------------------------------------------------------------------------------------------
# The config check


def _check_file(path: str, what: str, field: str) -> None:
  if not path:
    raise InputError(f"no {what}: set --config.{field}=PATH")
  if pathlib.Path(path).is_dir():
    raise InputError(f"{what} {path!r} (config.{field}) is a folder; expected a file")
  if not pathlib.Path(path).is_file():
    raise InputError(f"{what} {path!r} (config.{field}) does not exist")


def check_config(config: ml_collections.ConfigDict, mode: str | None = None, *,
                 num_devices: int = 1) -> None:
  """Fails early, naming the field, on settings the loop cannot use (for `mode` or config.mode).

  `num_devices`: the global device count, which must divide config.batch_size.
  """
  mode = config.mode if mode is None else mode
  if mode not in MODES:
    raise InputError(f"config.mode must be one of {', '.join(MODES)}, got {mode!r}")
  source = config.data.source
  if source not in SOURCES:
    raise InputError(f"config.data.source must be 'h5' or 'tfds', got {source!r}")
  if source == "tfds":
    if not config.data.tfds_name:
      raise InputError('config.data.source is "tfds" but config.data.tfds_name is empty; set '
                       'e.g. --config.data.tfds_name=pancollection/wv3 (prepared with python -m '
                       'dcfnet_jax.data.tfds_builder)')
  elif mode in ("train", "train_and_evaluate"):
    _check_file(config.data.train_file, "training file", "data.train_file")
    if config.data.valid_file:
      _check_file(config.data.valid_file, "validation file", "data.valid_file")
  if source == "h5" and mode in ("evaluate", "train_and_evaluate"):
    for field, what in (("test_reduced_file", "reduced-resolution test file"),
                        ("test_full_file", "full-resolution test file")):
      if config.data[field]:
        _check_file(config.data[field], what, f"data.{field}")
    if not (config.data.test_reduced_file or config.data.test_full_file):
      raise InputError("no test file: set --config.data.test_reduced_file and/or "
                       "--config.data.test_full_file (or use --config.mode=train)")
  if mode != "evaluate" and (config.batch_size <= 0 or config.batch_size % num_devices):
    raise InputError(f"config.batch_size {config.batch_size} must be a positive multiple of the "
                     f"{num_devices} devices")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[field] <= 0:
      raise InputError(f"config.{field} must be positive, got {config[field]}")
  _check_loss(config)
  if config.eval.fr_indexes not in host.FR_INDEXES:
    raise InputError(f"config.eval.fr_indexes must be one of {', '.join(host.FR_INDEXES)}, got "
                     f"{config.eval.fr_indexes!r}")
  if config.eval.checkpoint not in ("latest", "best"):
    raise InputError(f"config.eval.checkpoint must be 'latest' or 'best', got "
                     f"{config.eval.checkpoint!r}")


LOSSES = ("supervised", "full_resolution")
# What validation reports with the full-resolution loss (evaluation.validate_full_resolution):
# the loss, its terms (loss_<term>) and these indexes; one of them selects the best checkpoint.
FULL_RESOLUTION_VALID_KEYS = ("loss", "loss_spectral", "loss_spatial", "loss_R_ERGAS",
                              "loss_D_lambda_K", "D_rho", "R_Q2n", "R_SAM", "R_ERGAS")


def _check_loss(config: ml_collections.ConfigDict) -> None:
  loss = config.get("loss", "supervised")
  if loss not in LOSSES:
    raise InputError(f"config.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
  if loss != "full_resolution":
    return
  fr = config.full_resolution
  for field, allowed in (("kind", objective.KINDS), ("spatial_mean", objective.SPATIAL_MEANS)):
    if fr[field] not in allowed:
      raise InputError(f"config.full_resolution.{field} must be "
                       f"{' or '.join(repr(a) for a in allowed)}, got {fr[field]!r}")
  if int(config.data.ratio) != 4:
    raise InputError(f"config.loss 'full_resolution' samples every 4 pixels (the authors' "
                     f"step): config.data.ratio must be 4, got {config.data.ratio}")
  if config.checkpoint.best_metric not in FULL_RESOLUTION_VALID_KEYS:
    raise InputError(f"config.checkpoint.best_metric {config.checkpoint.best_metric!r} is not "
                     "reported by validation with config.loss 'full_resolution' (no gt); use "
                     f"one of {', '.join(FULL_RESOLUTION_VALID_KEYS)} (the preset "
                     "full_resolution sets 'loss')")
