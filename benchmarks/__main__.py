"""``python -m benchmarks [--suite NAME ...] [--quick] [--out DIR] ...``: same as ``jaxconv bench``."""

import sys

from jaxconv.bench.cli import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
