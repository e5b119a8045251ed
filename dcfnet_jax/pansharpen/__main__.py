"""`python -m dcfnet_jax.pansharpen`: the sharpening command line (`pansharpen.cli`)."""

import sys

from dcfnet_jax.pansharpen.cli import main

if __name__ == "__main__":
  sys.exit(main())
