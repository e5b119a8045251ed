"""dcfnet_jax: DCFNet pansharpening (Wu et al., ICCV 2021) in JAX/Flax.

Importing the package is cheap and never imports torch or tensorflow.
"""

__version__ = "0.1.0"
