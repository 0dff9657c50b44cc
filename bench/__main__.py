"""`python -m bench` (what `make bench` runs); `python -m bench --help` lists the commands."""

import os
import sys

from bench.main import main

sys.exit(main(sys.argv[1:], os.environ))
