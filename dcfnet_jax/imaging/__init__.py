"""Imaging tools with the exact semantics of the MATLAB pansharpening toolbox.

Sensor table, MTF-matched Gaussian filters (``genMTF`` / ``MTF`` / ``MTF_PAN`` /
``LPfilterGauss``), the 23-tap polynomial interpolator (``interp23tap``), MATLAB's
``imresize`` and the Wald degradation (``resize_images``). Written from
docs/metric_definitions.md §1 and docs/baseline_definitions.md §1.

Array layouts: 2-D arrays are ``(H, W)``, 3-D arrays ``(H, W, C)`` and 4-D arrays
``(N, H, W, C)``. All functions are pure ``jnp`` and jittable (shapes are static).
They compute in float64 when ``jax_enable_x64`` is on and in float32 otherwise;
filters are designed in numpy float64 and then cast.

Toolbox quirks reproduced on purpose (each changes digits):
- ``interp23tap`` runs ``ratio/2`` doubling passes (right only for ratio 2 and 4;
  ratio 8 would upsample 16x), places the input at odd positions in the first pass
  and at even positions afterwards, and filters with circular (periodic) borders.
- The MTF kernels are frequency-sampled Gaussians times a Huang/Kaiser window and
  are *not* renormalised (taps sum to about 0.998). They are applied as
  correlations with edge-replicate borders.
- Sensors unknown to the toolbox get a Nyquist gain of 0.3 per band; ``MTF_PAN``
  knows a PAN gain only for the listed sensors and ``none`` (0.15).
- ``imresize`` is MATLAB's: antialiased bicubic (Keys a=-0.5) when shrinking,
  mirrored borders with the edge sample repeated. ``jax.image.resize``, OpenCV,
  PIL and Octave all give different numbers.
- The Wald degradation of this toolbox version filters the MS with the MTF and
  decimates with nearest ``imresize`` (keeps rows ``ratio*k + ratio/2``), but the
  PAN is only bicubic-resized (no ``MTF_PAN``).

The separable steps (interp23tap, bicubic imresize) are small dense matrix products
``A @ X @ B^T`` on channel-first views (fast to compile and run; interp23tap's passes
are composed into one matrix per axis); they use ``Precision.HIGHEST``
so that accelerators do not silently drop to bfloat16. A consequence: a NaN or
inf in the input spreads along its whole row/column (MATLAB keeps it local);
inputs are expected to be finite. The 41x41 MTF filters run as FFT convolutions.

The package: `sensors` (the sensor table, RGB bands), `mtf` (filters), `interp` (interp23tap),
`resize` (imresize, decimation, Wald degradation), `common` (dtype and layout helpers).
"""

from dcfnet_jax.imaging.common import as_float, working_dtype
from dcfnet_jax.imaging.interp import INTERP23_ODD_TAPS, interp23tap
from dcfnet_jax.imaging.mtf import (correlate_replicate, lp_filter_gauss, lp_filter_gauss_kernel,
                                    mtf_filter, mtf_kernel, mtf_kernels, mtf_pan_filter,
                                    mtf_pan_kernel)
from dcfnet_jax.imaging.resize import (decimate, degrade_pan_for_ds, imresize, imresize_weights,
                                       wald_degrade)
from dcfnet_jax.imaging.sensors import SENSORS, Sensor, custom_sensor, get_sensor, rgb_bands

__all__ = [
    "INTERP23_ODD_TAPS", "SENSORS", "Sensor", "as_float", "correlate_replicate", "custom_sensor",
    "decimate", "degrade_pan_for_ds", "get_sensor", "imresize", "imresize_weights",
    "interp23tap", "lp_filter_gauss", "lp_filter_gauss_kernel", "mtf_filter", "mtf_kernel",
    "mtf_kernels", "mtf_pan_filter", "mtf_pan_kernel", "rgb_bands", "wald_degrade",
    "working_dtype",
]
