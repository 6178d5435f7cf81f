"""`python -m worker.engine.distill.run_distributed STUDENT [distill options] -o OUT` under torchrun.

The same command as `prunescope distill` (worker/cli/distill_commands.py), named for launchers:

    torchrun --nproc-per-node 8 -m worker.engine.distill.run_distributed STUDENT --teacher T -o OUT
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m worker.engine.distill.run_distributed ...
"""

from __future__ import annotations

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
