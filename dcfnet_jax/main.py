r"""Trains and/or evaluates a pansharpening model.

  python -m dcfnet_jax.main --config=configs/demo.py --workdir=/tmp/dcfnet_demo
  python -m dcfnet_jax.main --config=configs/wv3.py --workdir=runs/wv3 \
      --config.data.train_file=.../train_wv3.h5 --config.data.valid_file=.../valid_wv3.h5 \
      --config.data.test_reduced_file=.../test_wv3_multiExm1.h5 \
      --config.data.test_full_file=.../test_wv3_OrigScale_multiExm1.h5
  python -m dcfnet_jax.main --config=configs/wv3.py --workdir=runs/wv3 --config.mode=evaluate \
      [--checkpoint=runs/wv3/checkpoints/120000 | --checkpoint=converted/dcfnet_wv3.npz]

Rerunning the same command after an interruption resumes from the last complete checkpoint.
The config is locked: a misspelt `--config.key=value` fails. See docs/training.md.
"""

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/wv3.py or configs/wv3.py:smoke.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Mode 'evaluate': an exported .npz, a workdir, a checkpoints directory "
    "or one step's directory (default: <workdir>/checkpoints, config.eval.checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly(pylogging.Filter):
  """At the default verbosity, INFO lines come from dcfnet_jax only (Orbax, grain and JAX log
  every checkpoint file operation); warnings and errors always pass. --verbosity=1 shows all.
  """

  _PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
  _NOISE = ("Requested `tracked_metric`; did not provide metrics",)

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.WARNING:
      return not str(record.msg).startswith(self._NOISE)
    return os.path.abspath(record.pathname).startswith(self._PACKAGE_DIR)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() <= logging.INFO:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
  config = _CONFIG.value
  # Imported here so that --help and flag errors stay fast and no JAX state exists before
  # jax.distributed.initialize.
  from dcfnet_jax import distributed  # pylint: disable=g-import-not-at-top

  distributed.maybe_initialize(config)
  import jax  # pylint: disable=g-import-not-at-top
  from dcfnet_jax import checkpoint, train  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info("JAX %s, %d devices (%s), process %d of %d.", jax.__version__, jax.device_count(),
               jax.devices()[0].platform, jax.process_index(), jax.process_count())
  try:
    if config.mode == "evaluate":
      train.evaluate_checkpoint(config, _WORKDIR.value, _CHECKPOINT.value)
    else:
      if _CHECKPOINT.value:
        raise app.UsageError("--checkpoint is for --config.mode=evaluate; training resumes from "
                             "<workdir>/checkpoints by itself")
      train.train_and_evaluate(config, _WORKDIR.value)
  except (FileNotFoundError, ValueError, train.NonFiniteLossError,
          checkpoint.CheckpointError) as e:
    # Known failure modes get one clear line instead of a traceback (set DCFNET_TRACEBACK=1
    # to see it).
    if os.environ.get("DCFNET_TRACEBACK"):
      raise
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
