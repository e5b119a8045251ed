"""Pansharpening quality indices, identical to the MATLAB toolbox (docs/metric_definitions.md).

Reduced resolution (fused vs ground truth): ``reduced_resolution_indexes`` ->
Q2n (reported as Q4/Q8, see ``q2n_name``), Q (Q_avg), SAM, ERGAS, SCC.
Full resolution, toolbox: ``full_resolution_indexes`` -> D_lambda, D_s, QNR, D_lambda_K, HQNR.
Full resolution, reprojection protocol (Scarpa & Ciotola 2022): ``reprojection_indexes``
-> R_Q2n, R_Q, R_SAM, R_ERGAS, D_rho.
Pure jnp, jittable, (H, W, C) or batched (N, H, W, C), data in DN.

``host.reduced_resolution`` / ``host.full_resolution``: the one host-side wrapper (float64 on
the CPU, per-image values, the small-image rule) that every tool uses.
"""

from dcfnet_jax.metrics import host
from dcfnet_jax.metrics._common import cut_size
from dcfnet_jax.metrics.full import FR_KEYS
from dcfnet_jax.metrics.full import block_uqi
from dcfnet_jax.metrics.full import d_lambda
from dcfnet_jax.metrics.full import d_lambda_khan
from dcfnet_jax.metrics.full import d_s
from dcfnet_jax.metrics.full import full_resolution_indexes
from dcfnet_jax.metrics.correlation_field import local_correlation
from dcfnet_jax.metrics.reduced import RR_KEYS
from dcfnet_jax.metrics.reduced import ergas
from dcfnet_jax.metrics.reduced import q2n
from dcfnet_jax.metrics.reduced import q2n_name
from dcfnet_jax.metrics.reduced import q_avg
from dcfnet_jax.metrics.reduced import reduced_resolution_indexes
from dcfnet_jax.metrics.reduced import sam
from dcfnet_jax.metrics.reduced import scc
from dcfnet_jax.metrics.reprojection import REPROJECTION_KEYS
from dcfnet_jax.metrics.reprojection import REPROJECTION_STEP
from dcfnet_jax.metrics.reprojection import coregistration_phases
from dcfnet_jax.metrics.reprojection import d_rho
from dcfnet_jax.metrics.reprojection import reproject
from dcfnet_jax.metrics.reprojection import reprojection_indexes
from dcfnet_jax.metrics.reprojection import reprojection_kernels

__all__ = [
    "FR_KEYS", "REPROJECTION_KEYS", "REPROJECTION_STEP", "RR_KEYS", "block_uqi",
    "coregistration_phases", "cut_size", "d_lambda", "d_lambda_khan", "d_rho", "d_s", "ergas",
    "full_resolution_indexes", "host", "local_correlation", "q2n", "q2n_name", "q_avg",
    "reduced_resolution_indexes", "reproject", "reprojection_indexes", "reprojection_kernels",
    "sam", "scc",
]
