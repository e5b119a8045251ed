"""GaoFen-2 (4 bands, 10-bit), PanCollection files.

Usage: --config=configs/gf2.py[:smoke]. The fields live in dcfnet_jax.config_lib.
"""

from dcfnet_jax import config_lib


def get_config(preset=None):
  return config_lib.get_config("gf2", preset)
