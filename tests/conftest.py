"""Test setup before any JAX computation: 8 fake CPU devices (for sharding tests) and the
XLA:CPU flag of fast gradient steps in XLA_FLAGS (for the tests' own jits of the model; the
package's jits carry it per compilation, tests/test_xla_flags.py checks that without the
environment); the test data of tests/data (`data_file`) and the `--fail-on-skip` option
(tests/fail_on_skip.py)."""

import os
import pathlib
import stat

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import dcfnet_jax  # noqa: E402
import jax  # noqa: E402  (after XLA_FLAGS on purpose)

from fail_on_skip import pytest_addoption, pytest_configure  # noqa: E402,F401  (--fail-on-skip)

dcfnet_jax.configure_xla_cpu()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The repository's test data: golden values, the official state_dict keys, real Landsat pairs.
DATA_DIR = REPO_ROOT / "tests" / "data"


def data_file(name: str) -> pathlib.Path:
  """A file of tests/data (see its README); a missing one fails the test, it never skips it."""
  path = DATA_DIR / name
  if not path.is_file():
    pytest.fail(f"{path} is missing: the test data shipped with the repository "
                "(tests/data/README.md)", pytrace=False)
  return path


def pytest_report_header(config):
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"


def file_modes(paths) -> dict[str, int]:
  """Permission bits of files (folders: every file below them)."""
  out = {}
  for path in map(pathlib.Path, paths):
    found = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    out.update({str(p): stat.S_IMODE(p.stat().st_mode) for p in found})
  return out


@pytest.fixture
def umask022():
  """Sets umask 022 for the test and returns a check that files (or all files below folders)
  have the mode a new file gets under it, 0644 (the atomic writer must not leave 0600)."""
  old = os.umask(0o022)

  def check(*paths):
    modes = file_modes(paths)
    wrong = {k: oct(v) for k, v in modes.items() if v != 0o644}
    assert modes and not wrong, f"expected 0o644: {wrong}"

  yield check
  os.umask(old)
