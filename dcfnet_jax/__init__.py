"""dcfnet_jax: DCFNet pansharpening (Wu et al., ICCV 2021) in JAX/Flax.

Importing the package is cheap, changes nothing in the environment and never imports torch or
tensorflow. On the CPU, call `configure_xla_cpu()` before the first JAX computation for about
2x faster gradient steps (`dcfnet_jax.xla_flags`); the command-line tools do it themselves.
docs/architecture.md says which module does what.
"""

from dcfnet_jax.xla_flags import configure as configure_xla_cpu

__version__ = "0.1.0"
__all__ = ["configure_xla_cpu", "__version__"]
