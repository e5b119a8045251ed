"""Test setup before any JAX computation: 8 fake CPU devices (for sharding tests) and the
XLA:CPU flag of fast gradient steps (as every CLI sets it)."""

import os
import pathlib

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import dcfnet_jax  # noqa: E402
import jax  # noqa: E402  (after XLA_FLAGS on purpose)

dcfnet_jax.configure_xla_cpu()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the checkout holds specs, golden values and the real Landsat scenes.
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  if not SHARED_DIR.is_dir():
    pytest.skip(f"{SHARED_DIR} is not present")
  return SHARED_DIR


def pytest_report_header(config):
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
