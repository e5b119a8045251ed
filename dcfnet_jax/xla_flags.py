"""The XLA:CPU flag that makes DCFNet's gradient steps about 2x faster: set explicitly.

jaxlib 0.10 to 0.12 send every CPU convolution to the YNNPACK library, which runs the weight
gradients of convolutions (a convolution whose window is the whole image) 4-10x slower than
XLA's Eigen path. `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` sends single
convolutions back to Eigen (docs/bench_model_cpu.md has the measurements).

XLA reads XLA_FLAGS once, when JAX creates its backend (the first computation), so the flag must
be in the environment before that. Nothing happens on `import dcfnet_jax`:
- every command-line tool calls `configure()` before its first computation (`dcfnet_jax.cli`);
- Python users call `dcfnet_jax.configure_xla_cpu()` first thing (or export the flag in
  XLA_FLAGS); training and the predictor warn once, with this one-line fix, when they run on the
  CPU without it.
An unknown flag aborts XLA, so the flag is only set for jaxlib versions on which it was verified
to exist. `DCFNET_JAX_NO_XLA_FLAGS=1` opts out; a setting of the same flag in XLA_FLAGS wins.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution"
OPT_OUT_ENV = "DCFNET_JAX_NO_XLA_FLAGS"
FIX = (f"call dcfnet_jax.configure_xla_cpu() before the first JAX computation, or export "
       f"XLA_FLAGS={YNN_FLAG}")
# jaxlib versions on which the flag was verified to exist: 0.10.2, 0.11.2 and 0.12.0.1 (it halves
# the batch-32 CPU training step on 0.10.2 and on 0.12.0.1, docs/bench_model_cpu.md). Later
# versions are left alone until checked: an unknown flag would abort XLA.
_VERIFIED_RANGE = ((0, 10, 2), (0, 13, 0))


class XlaFlagWarning(UserWarning):
  """JAX runs on the CPU without the flag: gradient steps are about 2x slower."""


def _version_tuple(version: str) -> tuple[int, ...]:
  parts = []
  for piece in version.split(".")[:3]:
    digits = "".join(ch for ch in piece if ch.isdigit())
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def flag_verified_for(jaxlib_version: str) -> bool:
  """Whether the YNNPACK flag was verified to exist in this jaxlib version."""
  low, high = _VERIFIED_RANGE
  return low <= _version_tuple(jaxlib_version) < high


def _jaxlib_version() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def status() -> str:
  """One line: whether XLA_FLAGS holds the flag now, and if not, why."""
  if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
    return f"not set ({OPT_OUT_ENV} is set)"
  if YNN_FLAG_NAME in os.environ.get("XLA_FLAGS", ""):
    return f"set in XLA_FLAGS ({YNN_FLAG_NAME})"
  version = _jaxlib_version()
  if version is None:
    return "not set (jaxlib is not installed)"
  if not flag_verified_for(version):
    return f"not set (not verified for jaxlib {version})"
  return "not set"


def configure() -> str:
  """Appends the flag to XLA_FLAGS when it is safe and wanted; returns `status()`.

  Takes effect only if called before JAX's first computation in this process.
  """
  if status() == "not set":
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
  return status()


def warn_if_unset(backend: str) -> None:
  """Warns (once per call site) when `backend` is the CPU and the flag could be set but is not."""
  if backend == "cpu" and status() == "not set":
    warnings.warn(f"JAX runs on the CPU without {YNN_FLAG}, so gradient steps are about 2x "
                  f"slower: {FIX}", XlaFlagWarning, stacklevel=3)
