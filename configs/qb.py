"""QuickBird (4 bands, 11-bit), PanCollection files.

Usage: --config=configs/qb.py[:smoke]. The fields live in dcfnet_jax.config_lib.
"""

from dcfnet_jax import config_lib


def get_config(preset=None):
  return config_lib.get_config("qb", preset)
