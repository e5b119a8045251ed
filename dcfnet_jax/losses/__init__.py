"""Training losses that need no ground truth: the full-resolution losses of Z-PNN and lambda-PNN."""

from dcfnet_jax.losses.full_resolution import LAMBDA_PNN_TERMS
from dcfnet_jax.losses.full_resolution import ZPNN_TERMS
from dcfnet_jax.losses.full_resolution import lambda_pnn_loss
from dcfnet_jax.losses.full_resolution import lambda_spectral
from dcfnet_jax.losses.full_resolution import spatial_term
from dcfnet_jax.losses.full_resolution import spatial_threshold
from dcfnet_jax.losses.full_resolution import spectral_l1
from dcfnet_jax.losses.full_resolution import zpnn_loss

__all__ = [
    "LAMBDA_PNN_TERMS", "ZPNN_TERMS", "lambda_pnn_loss", "lambda_spectral", "spatial_term",
    "spatial_threshold", "spectral_l1", "zpnn_loss",
]
