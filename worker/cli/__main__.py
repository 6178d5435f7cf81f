"""`python -m worker.cli ...` (and `torchrun -m worker.cli ...`): the `prunescope` command."""

import sys

from worker.cli import main

sys.exit(main())
