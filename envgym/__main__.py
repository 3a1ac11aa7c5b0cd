"""`python -m envgym ...` is the `envgym` command (`torchrun -m envgym train ...` starts it once per rank)."""

import sys

from envgym.cli import main

sys.exit(main())
