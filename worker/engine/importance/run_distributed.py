"""`python -m worker.engine.importance.run_distributed MODEL [importance options] -o OUT` under torchrun:
data-parallel importance, the same command as `prunescope importance` named for launchers."""

from __future__ import annotations

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["importance", *sys.argv[1:]]))
