r"""Trains and/or evaluates a pansharpening model.

  python -m dcfnet_jax.main --config=demo --workdir=workdirs/demo
  python -m dcfnet_jax.main --config=wv3 --workdir=runs/wv3 \
      --config.data.train_file=.../train_wv3.h5 --config.data.valid_file=.../valid_wv3.h5 \
      --config.data.test_reduced_file=.../test_wv3_multiExm1.h5 \
      --config.data.test_full_file=.../test_wv3_OrigScale_multiExm1.h5
  python -m dcfnet_jax.main --config=wv3 --workdir=runs/wv3 --config.mode=evaluate \
      [--checkpoint=runs/wv3/checkpoints/120000 | --checkpoint=converted/dcfnet_wv3.npz]

--config takes a name (default, demo, wv3, wv2, qb, gf2) or a config file (configs/wv3.py),
with presets after ':' (demo:smoke). Rerunning the same command after an interruption resumes
from the last complete checkpoint. The config is locked: a misspelt --config.FIELD fails. See
docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import jax

from dcfnet_jax import cli, distributed, evaluation, train
from dcfnet_jax.errors import InputError

log = logging.getLogger("dcfnet_jax.main")


def build_parser() -> cli.Parser:
  parser = cli.make_parser("dcfnet_jax.main", __doc__)
  cli.add_config_arguments(parser)
  parser.add_argument("--workdir", required=True,
                      help="directory for checkpoints, logs, previews, reports and the export")
  parser.add_argument("--checkpoint", help="mode 'evaluate': an exported .npz, a workdir, a "
                      "checkpoints directory or one step's directory (default: "
                      "<workdir>/checkpoints, step by config.eval.checkpoint)")
  return parser


def run(args: argparse.Namespace) -> None:
  config = cli.config_from_args(args)
  distributed.maybe_initialize(config)  # before any other JAX computation
  if jax.process_index() != 0:
    logging.getLogger("dcfnet_jax").setLevel(logging.WARNING)
  log.info("JAX %s, %d devices (%s), process %d of %d.", jax.__version__, jax.device_count(),
           jax.devices()[0].platform, jax.process_index(), jax.process_count())
  if config.mode == "evaluate":
    evaluation.evaluate_checkpoint(config, args.workdir, args.checkpoint)
  else:
    if args.checkpoint:
      raise InputError("--checkpoint is for --config.mode=evaluate; training resumes from "
                       "<workdir>/checkpoints by itself")
    train.train_and_evaluate(config, args.workdir)


main = cli.entry(build_parser, run)


if __name__ == "__main__":
  sys.exit(main())
