"""The XLA:CPU option that makes DCFNet's gradient steps about 2x faster, given per compilation.

jaxlib 0.10 to 0.12 send every CPU convolution to the YNNPACK library, which runs the weight
gradients of convolutions (a convolution whose window is the whole image) 4-10x slower than
XLA's Eigen path. The XLA option `xla_cpu_experimental_ynn_fusion_type` lists what YNNPACK
takes; jaxlib's default list is INDIVIDUAL_DOT, REDUCE and INDIVIDUAL_CONVOLUTION, and without
the convolutions (`YNN_WITHOUT_CONVOLUTIONS`) single convolutions go back to Eigen
(docs/bench_model_cpu.md has the measurements).

The package passes that list per compilation, `jax.jit(..., compiler_options=...)`, in every jit
that runs a model: the train step (`steps.make_train_step`), the predictor (`inference.Predictor`)
and the sharpening tile runner. So the command-line tools and Python users get the speed without
touching the environment, importing the package changes nothing, and computations on a GPU or
TPU get no option at all (`compiler_options` returns None off the CPU). On jaxlib 0.10.2 and
0.12.0.1 the train step compiled with the per-jit option is the same program, instruction for
instruction, as the one compiled with the process-wide setting `XLA_FLAGS=YNN_FLAG`
(tests/test_xla_flags.py checks the default list and the option on the installed jaxlib).

For a model jitted by the user (their own `jax.jit` of a gradient), pass
`compiler_options("cpu")` to that jit, or call `dcfnet_jax.configure_xla_cpu()` before the
first JAX computation: it appends the same setting, in XLA_FLAGS syntax, to the environment
(XLA reads XLA_FLAGS once, when JAX creates its backend).

Rules: the option is given only for jaxlib versions where it was verified (an unknown option or
enum name is a compile error); `DCFNET_JAX_NO_XLA_FLAGS=1` opts out of both mechanisms; a
setting of the same option in XLA_FLAGS wins (then no per-jit option is given).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution"
# The per-compilation value (enum names; compiler options do not take XLA_FLAGS' +/- syntax).
YNN_DEFAULT = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,"
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
OPT_OUT_ENV = "DCFNET_JAX_NO_XLA_FLAGS"
# jaxlib versions on which the option was verified: 0.10.2 and 0.12.0.1 (default list, per-jit
# value = XLA_FLAGS setting; it halves the batch-32 CPU training step), and the XLA_FLAGS
# setting on 0.11.2. Later versions are left alone until checked.
_VERIFIED_RANGE = ((0, 10, 2), (0, 13, 0))


def _version_tuple(version: str) -> tuple[int, ...]:
  parts = []
  for piece in version.split(".")[:3]:
    digits = "".join(ch for ch in piece if ch.isdigit())
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def flag_verified_for(jaxlib_version: str) -> bool:
  """Whether the YNNPACK option was verified to exist in this jaxlib version."""
  low, high = _VERIFIED_RANGE
  return low <= _version_tuple(jaxlib_version) < high


def _jaxlib_version() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def _why_not() -> str | None:
  """Why neither mechanism applies now (None: it can be used)."""
  if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
    return f"{OPT_OUT_ENV} is set"
  if YNN_FLAG_NAME in os.environ.get("XLA_FLAGS", ""):
    return f"set in XLA_FLAGS ({YNN_FLAG_NAME})"
  version = _jaxlib_version()
  if version is None:
    return "jaxlib is not installed"
  if not flag_verified_for(version):
    return f"not verified for jaxlib {version}"
  return None


def compiler_options(platform: str) -> dict[str, Any] | None:
  """The `compiler_options` of a jit whose computation runs on `platform` ("cpu", "gpu", ...).

  The YNNPACK list without convolutions on the CPU; None elsewhere, when opted out, when
  XLA_FLAGS already sets the option, or on an unverified jaxlib.
  """
  if platform != "cpu" or _why_not() is not None:
    return None
  return {YNN_FLAG_NAME: YNN_WITHOUT_CONVOLUTIONS}


def mesh_compiler_options(mesh: Any) -> dict[str, Any] | None:
  """`compiler_options` for a jit over a `jax.sharding.Mesh` (its devices' platform)."""
  return compiler_options(mesh.devices.flat[0].platform)


def status() -> str:
  """One line: how convolutions are kept out of YNNPACK in this process, or why they are not."""
  why = _why_not()
  if why is None:
    return f"per-jit option {YNN_FLAG_NAME}={YNN_WITHOUT_CONVOLUTIONS} on the package's CPU jits"
  if why.startswith("set in XLA_FLAGS"):
    return why
  return f"not set ({why})"


def configure() -> str:
  """Appends `YNN_FLAG` to XLA_FLAGS when it is safe and wanted; returns `status()`.

  Only needed for jits the package does not make (its own jits carry the option); takes
  effect only if called before JAX's first computation in this process.
  """
  if _why_not() is None:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
  return status()
