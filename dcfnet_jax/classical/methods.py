"""The registry of classical methods: name -> `method(ms, pan, sensor, ratio=4, lms=None)`."""

from __future__ import annotations

from typing import Callable

import jax

from dcfnet_jax.classical import bdsd_pc, cvpr19, exp, mtf_glp_fs, mtf_glp_hpm
from dcfnet_jax.errors import InputError

# The modules keep their names (`classical.bdsd_pc.bdsd_pc` is the function).
METHODS: dict[str, Callable[..., jax.Array]] = {
    "exp": exp.exp,
    "bdsd_pc": bdsd_pc.bdsd_pc,
    "mtf_glp_hpm": mtf_glp_hpm.mtf_glp_hpm,
    "mtf_glp_fs": mtf_glp_fs.mtf_glp_fs,
    "cvpr19": cvpr19.cvpr19,
}


def get_method(name: str) -> Callable[..., jax.Array]:
  try:
    return METHODS[name]
  except KeyError:
    raise InputError(f"unknown classical method {name!r}; expected one of: "
                     f"{', '.join(METHODS)}") from None
