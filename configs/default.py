"""Default config (WV3 data fields, official training protocol).

Usage: --config=configs/default.py[:smoke]. The fields live in dcfnet_jax.config_lib.
"""

from dcfnet_jax import config_lib


def get_config(preset=None):
  return config_lib.get_config("default", preset)
