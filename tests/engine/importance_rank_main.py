"""One rank of a data-parallel importance pass, for tests/engine/test_distributed_importance.py.

Run plainly (one process) or under torchrun: the same tiny Llama and calibration batches (5 batches of
2, some right-padded: the ranks get 3 and 2), every scan. Rank 0 saves the artifact to OUT.

    python tests/engine/importance_rank_main.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama  # noqa: E402
from worker.engine.data import calibration_batches  # noqa: E402
from worker.engine.distributed import DistributedContext  # noqa: E402
from worker.engine.importance import compute_importance  # noqa: E402


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    ctx = DistributedContext.from_environment()
    model = tiny_llama(seed=3, layers=4)
    batches = calibration_batches(
        demo_tokenizer(),
        list(demo_documents("calibration", 4)),
        seq_len=40,
        num_samples=10,
        batch_size=2,
        seed=1,
    )
    result = compute_importance(
        model,
        batches,
        scans=("bi", "drop", "block", "angular"),
        block_size=2,
        hash_weights=False,
        context=ctx,
    )
    if ctx.is_main:
        result.save(out)
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
