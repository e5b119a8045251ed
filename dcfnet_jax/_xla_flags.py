"""XLA:CPU flags that make DCFNet's gradient steps fast; applied when `dcfnet_jax` is imported.

jaxlib 0.10 to 0.12 send every CPU convolution to the YNNPACK library, which runs the weight gradients
of convolutions (a convolution whose window is the whole image) 4-10x slower than XLA's Eigen
path. `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` sends single
convolutions back to Eigen (docs/bench_model_cpu.md has the measurements).

XLA reads XLA_FLAGS once, when JAX initialises its backend (the first computation), so the flag
only takes effect if `dcfnet_jax` is imported before that. An unknown flag aborts XLA, so it is
only added for jaxlib versions on which it was verified to exist. Set
`DCFNET_JAX_NO_XLA_FLAGS=1` to opt out; a setting of the same flag already in XLA_FLAGS wins.
"""

import importlib.metadata
import logging
import os
import sys

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution"
OPT_OUT_ENV = "DCFNET_JAX_NO_XLA_FLAGS"
# jaxlib versions on which the flag was verified to exist: 0.10.2, 0.11.2 and 0.12.0.1 (it halves
# the batch-32 CPU training step on 0.10.2 and on 0.12.0.1, docs/bench_model_cpu.md). Later
# versions are left alone until checked: an unknown flag would abort XLA.
_VERIFIED_RANGE = ((0, 10, 2), (0, 13, 0))

_log = logging.getLogger(__name__)


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


def _backend_initialised() -> bool:
  """True when JAX has already created its backends (then XLA_FLAGS is no longer read)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # pylint: disable=broad-except
    return False


def apply() -> str:
  """Appends the flag to XLA_FLAGS when safe; returns a one-line description of what happened."""
  if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
    return f"not set ({OPT_OUT_ENV} is set)"
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return "not set (jaxlib is not installed)"
  if not flag_verified_for(jaxlib_version):
    return f"not set (not verified for jaxlib {jaxlib_version})"
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG_NAME in flags:
    return "not set (XLA_FLAGS already sets it)"
  if _backend_initialised():
    message = (f"not set: JAX's backend was initialised before dcfnet_jax was imported, so "
               f"{YNN_FLAG} could no longer take effect; import dcfnet_jax before running any "
               "JAX computation (or put the flag in XLA_FLAGS) for fast CPU gradients")
    _log.warning(message)
    return message
  os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
  return f"set {YNN_FLAG}"


STATUS = apply()
