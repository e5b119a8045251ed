"""dcfnet_jax: DCFNet pansharpening (Wu et al., ICCV 2021) in JAX/Flax.

Importing the package is cheap, changes nothing in the environment and never imports torch or
tensorflow. The package's jits (train step, predictor, sharpening) carry the XLA:CPU option of
about 2x faster gradient steps themselves (`dcfnet_jax.xla_flags`); `configure_xla_cpu()` sets
it process-wide, for models you jit yourself (call it before the first JAX computation).
docs/architecture.md says which module does what.
"""

from dcfnet_jax.xla_flags import configure as configure_xla_cpu

__version__ = "0.1.0"
__all__ = ["configure_xla_cpu", "__version__"]
