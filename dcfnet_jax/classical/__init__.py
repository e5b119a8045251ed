"""Classical pansharpening methods of the DCFNet paper's comparison.

Definitions: docs/baseline_definitions.md §2.

Every method is a pure, jit-able JAX function of one image,
`method(ms, pan, sensor, ratio=4, lms=None) -> fused (H, W, C)`, with data in DN: `ms` (h, w, C)
the low-resolution MS, `pan` (H, W) or (H, W, 1), `lms` (H, W, C) the MS upsampled to the PAN size
(the dataset's `lms`, the toolbox's `I_MS`; computed with interp23tap when omitted). They compute
in float64 when `jax_enable_x64` is on (recommended: the toolbox runs in double precision).
"""

from __future__ import annotations

from typing import Callable

import jax

from dcfnet_jax.classical import bdsd_pc, cvpr19, exp, mtf_glp_fs, mtf_glp_hpm

# The modules keep their names (`classical.bdsd_pc.bdsd_pc` is the function).
METHODS: dict[str, Callable[..., jax.Array]] = {
    "exp": exp.exp,
    "bdsd_pc": bdsd_pc.bdsd_pc,
    "mtf_glp_hpm": mtf_glp_hpm.mtf_glp_hpm,
    "mtf_glp_fs": mtf_glp_fs.mtf_glp_fs,
    "cvpr19": cvpr19.cvpr19,
}

# Row labels as the DCFNet paper prints them (GLP-Reg is MTF-GLP-FS; CVPR19 is ours).
DISPLAY_NAMES = {
    "exp": "EXP",
    "bdsd_pc": "BDSD-PC",
    "mtf_glp_hpm": "GLP-HPM",
    "mtf_glp_fs": "GLP-Reg (MTF-GLP-FS)",
    "cvpr19": "CVPR19 (reconstruction)",
}


def get_method(name: str) -> Callable[..., jax.Array]:
  try:
    return METHODS[name]
  except KeyError:
    raise ValueError(f"unknown classical method {name!r}; expected one of: "
                     f"{', '.join(METHODS)}") from None


__all__ = ["METHODS", "DISPLAY_NAMES", "get_method"]
