"""Registry constructors of the comparison networks (docs/baseline_definitions.md §3):
`config.model.name` `pnn`, `dicnn1`, `pannet`, `dmdnet` (a reconstruction) and `fusionnet`.

Each constructor has the registry's signature `(config, rngs, dtype) -> nnx.Module` and builds
the network for `config.data.num_bands` bands with its reference architecture.
"""

from typing import Any

import ml_collections
from flax import nnx

from dcfnet_jax.models.dicnn import DiCNN1
from dcfnet_jax.models.dmdnet import DMDNet
from dcfnet_jax.models.fusionnet import FusionNet
from dcfnet_jax.models.pannet import PanNet
from dcfnet_jax.models.pnn import PNN

NETWORKS = {
    "pnn": PNN,
    "dicnn1": DiCNN1,
    "pannet": PanNet,
    "dmdnet": DMDNet,
    "fusionnet": FusionNet,
}

# Row labels as the DCFNet paper prints them.
DISPLAY_NAMES = {
    "pnn": "PNN",
    "dicnn1": "DiCNN1",
    "pannet": "PanNet",
    "dmdnet": "DMDNet (reconstruction)",
    "fusionnet": "FusionNet",
}


def _constructor(cls):
  def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype: Any) -> nnx.Module:
    return cls(int(config.data.num_bands), rngs=rngs, dtype=dtype)

  build.__name__ = f"build_{cls.__name__.lower()}"
  build.__doc__ = f"{cls.__name__} for config.data.num_bands bands."
  return build


CONSTRUCTORS = {name: _constructor(cls) for name, cls in NETWORKS.items()}
