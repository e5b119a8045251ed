"""Configs: the official DCFNet training protocol (dcfnet_architecture.md §9), per sensor.

The files in the repository's `configs/` folder are thin wrappers around `get_config` so that
`--config=configs/wv3.py` works with absl's config flags, while notebooks and tests that only
have the installed package call `get_config("wv3")` directly. Every field can be overridden on
the command line (`--config.batch_size=16`); configs are locked, so a misspelt override fails.

Presets, comma-separated after the config (`--config=configs/wv3.py:pnn,smoke`):
- `smoke` shrinks everything for a quick end-to-end check;
- a comparison network's name (`pnn`, `dicnn1`, `pannet`, `fusionnet`, `dmdnet`) selects that
  network with the optimiser, schedule, batch size and length of its reference training recipe
  (docs/baseline_definitions.md §3.7; DMDNet's is assumed), applied before `smoke`.
"""

import pathlib

import ml_collections

DEMO_DIR = pathlib.Path(__file__).resolve().parent / "data" / "demo"

# Per-sensor data fields (docs/dcfnet_architecture.md §1, docs/metric_definitions.md §0).
SENSORS = {
    "wv3": dict(sensor="wv3", num_bands=8, img_range=2047.0, bits=11),
    "wv2": dict(sensor="wv2", num_bands=8, img_range=2047.0, bits=11),
    "qb": dict(sensor="qb", num_bands=4, img_range=2047.0, bits=11),
    "gf2": dict(sensor="gf2", num_bands=4, img_range=1023.0, bits=10),
}


def get_config(name: str = "wv3", preset: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config for `name` (wv3, wv2, qb, gf2, demo or default)."""
  if name == "demo":
    config = _base_config()
    _apply_demo(config)
  elif name in SENSORS or name == "default":
    config = _base_config()
    config.data.update(SENSORS.get(name, SENSORS["wv3"]))
  else:
    raise ValueError(f"unknown config {name!r}; expected one of: default, demo, {', '.join(SENSORS)}")
  names = [p.strip() for p in (preset or "").split(",") if p.strip()]
  unknown = [p for p in names if p != "smoke" and p not in METHOD_RECIPES]
  if unknown:
    raise ValueError(f"unknown config preset {unknown[0]!r}; expected comma-separated names "
                     f"from: smoke, {', '.join(METHOD_RECIPES)}")
  for method in (p for p in names if p in METHOD_RECIPES):
    apply_method_recipe(config, method)
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


def apply_smoke_preset(config: ml_collections.ConfigDict) -> None:
  """A few tiny steps end to end: for tests, notebooks on CPU and quick checks."""
  config.batch_size = 4
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval.max_valid_images = 2
  config.eval.num_preview_images = 1
