"""The embedded Landsat demo set: trains in a few minutes on 2 CPU cores.

Usage: --config=configs/demo.py[:smoke]. The fields live in dcfnet_jax.config_lib.
"""

from dcfnet_jax import config_lib


def get_config(preset=None):
  return config_lib.get_config("demo", preset)
