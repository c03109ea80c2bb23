"""`python -m rlhf ...` (and `accelerate launch -m rlhf ...`)."""

import sys

from rlhf.cli import main

sys.exit(main())
