"""One convention for every command-line tool of the package.

Every tool has `main(argv=None) -> int`, made by `entry(build_parser, run)` (`run_main`):
- arguments: argparse, `--flag value` or `--flag=value`; tools that take a config add
  `--config NAME_OR_FILE[:PRESETS]` and any number of `--config.FIELD=VALUE` overrides
  (`add_config_arguments`);
- logging: the standard `logging` module, one format; INFO lines of dcfnet_jax only (`-v` shows
  every library's, `-q` only warnings);
- before the first computation: `xla_flags.configure()` (about 2x faster CPU gradients);
- exit status 0 on success, 2 for bad input or usage (`errors.InputError`, a missing file, a
  file or folder the user may not read or write, argparse errors), 1 for a run that failed
  (`errors.RunError`, NaN losses, OS errors such as a full disk). Expected errors print one line `error: ...` without a traceback;
  `DCFNET_TRACEBACK=1` shows it. Anything else is a bug and keeps its traceback.
Console scripts (setup.cfg) call the same `main`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from dcfnet_jax import config_lib, xla_flags
from dcfnet_jax.errors import InputError, RunError

TRACEBACK_ENV = "DCFNET_TRACEBACK"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Library messages that are noise at the default verbosity.
_NOISE = ("Requested `tracked_metric`; did not provide metrics",)

log = logging.getLogger("dcfnet_jax")


class _StderrHandler(logging.StreamHandler):
  """Writes to the current sys.stderr (which tests and notebooks may replace)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr
    super().emit(record)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Keeps the description's line breaks; shows defaults except the uninformative None/False."""

  def _get_help_string(self, action):
    if action.default is None or action.default is False or action.default == []:
      return action.help
    return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
  """argparse with `--config.FIELD=VALUE` overrides when `add_config_arguments` was called."""

  takes_config = False

  def parse_known_args(self, args=None, namespace=None):
    args = list(sys.argv[1:] if args is None else args)
    if not self.takes_config:
      return super().parse_known_args(args, namespace)
    overrides, rest, i = [], [], 0
    while i < len(args):
      arg = args[i]
      if arg.startswith("--config.") and "=" in arg:
        key, value = arg[len("--config."):].split("=", 1)
        overrides.append((key, value))
      elif arg.startswith("--config."):
        if i + 1 >= len(args):
          self.error(f"{arg} needs a value")
        overrides.append((arg[len("--config."):], args[i + 1]))
        i += 1
      else:
        rest.append(arg)
      i += 1
    namespace, extras = super().parse_known_args(rest, namespace)
    namespace.config_overrides = overrides
    return namespace, extras


def make_parser(module: str, doc: str | None) -> Parser:
  """The parser of `python -m <module>`; the description is the module docstring."""
  parser = Parser(prog=f"python -m {module}", description=(doc or "").strip(),
                  formatter_class=HelpFormatter, allow_abbrev=False)
  group = parser.add_argument_group("logging")
  group.add_argument("-v", "--verbose", action="store_true",
                     help="also show INFO messages of the libraries (JAX, Orbax, grain)")
  group.add_argument("-q", "--quiet", action="store_true", help="show warnings and errors only")
  return parser


def add_config_arguments(parser: Parser, *, required: bool = True) -> None:
  """`--config NAME_OR_FILE[:PRESETS]` plus `--config.FIELD=VALUE` overrides (config_lib)."""
  parser.takes_config = True
  parser.add_argument(
      "--config", required=required, metavar="NAME[:PRESETS]",
      help=f"a config name ({', '.join(config_lib.CONFIG_NAMES)}) or a config file "
           "(configs/wv3.py), optionally with comma-separated presets after ':' (smoke, a "
           "comparison network's recipe); then any --config.FIELD=VALUE overrides "
           "(e.g. --config.batch_size=16)")


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict | None:
  """The locked config that `--config` and the `--config.*` overrides describe."""
  if getattr(args, "config", None) is None:
    if getattr(args, "config_overrides", None):
      raise InputError("--config.FIELD overrides need --config")
    return None
  return config_lib.load(args.config, args.config_overrides)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
  """One format for every tool; INFO of dcfnet_jax only, unless `verbose` or `quiet`."""
  root = logging.getLogger()
  for h in list(root.handlers):  # the bare handler absl installs (logging.basicConfig())
    if type(h) is logging.StreamHandler and getattr(h.formatter, "_fmt", None) in (
        None, logging.BASIC_FORMAT):
      root.removeHandler(h)
  handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
  if handler is None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(lambda record: not str(record.msg).startswith(_NOISE))
    root.addHandler(handler)
  root.setLevel(logging.INFO if verbose else logging.WARNING)
  log.setLevel(logging.WARNING if quiet else logging.INFO)


def report(error: BaseException, code: int) -> int:
  """Prints `error: ...` (and the traceback when DCFNET_TRACEBACK is set); returns `code`."""
  if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
    traceback.print_exception(error)
  print(f"error: {error}", file=sys.stderr, flush=True)
  return code


def exit_code(error: BaseException) -> int | None:
  """2 for bad input, 1 for an expected run failure, None for a bug (keep the traceback)."""
  if isinstance(error, (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError)):
    return EXIT_BAD_INPUT
  if isinstance(error, (RunError, FloatingPointError, OSError)):
    return EXIT_FAILED
  return None


def run_main(parser: Parser, run: Callable[[argparse.Namespace], Any],
             argv: Sequence[str] | None = None) -> int:
  """Parses `argv`, sets up logging and the XLA:CPU flag, calls `run(args)`; the exit status."""
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
    return int(e.code or 0)
  setup_logging(args.verbose, args.quiet)
  xla_flags.configure()
  try:
    result = run(args)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except  (mapped below, bugs re-raised)
    code = exit_code(e)
    if code is None:
      raise
    return report(e, code)
  return int(result) if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


def entry(build_parser: Callable[[], Parser], run: Callable[[argparse.Namespace], Any]
          ) -> Callable[[Sequence[str] | None], int]:
  """The `main(argv=None) -> int` of a tool (also its console script)."""

  def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)

  main.__doc__ = "Runs the tool on `argv` (default: sys.argv[1:]); returns the exit status."
  return main
