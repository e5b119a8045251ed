"""Test setup: 8 fake CPU devices (for sharding tests) before any JAX computation, the test
data of tests/data (`data_file`) and the `--fail-on-skip` option (tests/fail_on_skip.py)."""

import os
import pathlib

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

from fail_on_skip import pytest_addoption, pytest_configure  # noqa: E402,F401  (--fail-on-skip)

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
