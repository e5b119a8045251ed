"""`python -m dcfnet_jax.bench`: the benchmark command line (`bench.cli`)."""

import sys

from dcfnet_jax.bench.cli import main

if __name__ == "__main__":
  sys.exit(main())
