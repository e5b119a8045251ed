"""dcfnet_jax: DCFNet pansharpening (Wu et al., ICCV 2021) in JAX/Flax.

Importing the package is cheap and never imports torch or tensorflow.
"""

from dcfnet_jax import _xla_flags  # noqa: F401  (sets XLA:CPU flags before JAX starts)

__version__ = "0.1.0"
