"""`python -m dcfnet_jax.classical`: the classical-methods command line (`classical.cli`)."""

import sys

from dcfnet_jax.classical.cli import main

if __name__ == "__main__":
  sys.exit(main())
