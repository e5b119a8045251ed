"""Classical pansharpening methods of the DCFNet paper's comparison.

Definitions: docs/baseline_definitions.md §2.

Every method is a pure, jit-able JAX function of one image,
`method(ms, pan, sensor, ratio=4, lms=None) -> fused (H, W, C)`, with data in DN: `ms` (h, w, C)
the low-resolution MS, `pan` (H, W) or (H, W, 1), `lms` (H, W, C) the MS upsampled to the PAN size
(the dataset's `lms`, the toolbox's `I_MS`; computed with interp23tap when omitted). They compute
in float64 when `jax_enable_x64` is on (recommended: the toolbox runs in double precision).
Their display names (GLP-Reg is MTF-GLP-FS, CVPR19 is ours) are in `dcfnet_jax.names`.
"""

from dcfnet_jax.classical.methods import METHODS, get_method

__all__ = ["METHODS", "get_method"]
