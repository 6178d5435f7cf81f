"""One rank of a data-parallel lm-eval run, for tests/engine/test_distributed_evaluate.py.

Run plainly (one process) or under torchrun: the same tiny Llama answers the same requests of every
type through lm-eval's HFLM (data-parallel over the ranks when there are several), then runs the local
offline tasks through `run_lm_eval`. Every rank writes what it got to OUT/rank<r>.json.

    python tests/engine/lm_eval_rank_main.py OUT [--hang-in-call]

`--hang-in-call` (the fault test, as distill_rank_main's `--hang-at`): the last rank writes OUT/pid<r>
and sleeps in its first model forward of the first lm-eval call, for the test to kill it there. Other
options (worker.multi_rank appends `--stop-file` and `--metrics-jsonl`) are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama  # noqa: E402
from worker.engine.distributed import DistributedContext  # noqa: E402
from worker.engine.evaluation import LOCAL_TASKS, build_local_tasks, run_lm_eval  # noqa: E402

BATCH = 4


def requests(task_dir: Path):
    """Every request type, with enough requests of each for several batches of BATCH."""
    from lm_eval.api.instance import Instance

    cloze = [json.loads(line) for line in (task_dir / "prunescope_cloze.jsonl").read_text().splitlines()]
    pairs = [(item["context"], " " + choice) for item in cloze[:6] for choice in item["choices"]]
    # One-token continuations of one context: one forward pass for the group in one process.
    pairs += [(cloze[0]["context"], word) for word in (" the", " a", " of")]
    texts = [
        json.loads(line)["text"] for line in (task_dir / "prunescope_rolling.jsonl").read_text().splitlines()
    ]
    greedy = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    generate = [
        (item["context"], greedy if i % 3 else {**greedy, "until": ["."]}) for i, item in enumerate(cloze[:9])
    ]
    return (
        [Instance("loglikelihood", {}, args, i) for i, args in enumerate(pairs)],
        [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)],
        [Instance("generate_until", {}, args, i) for i, args in enumerate(generate)],
    )


def _hang(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(3600)


def main(argv=None) -> int:
    from lm_eval.models.huggingface import HFLM

    from worker.engine.evaluation.lm_eval_shards import sharded_lm

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--hang-in-call", action="store_true")
    args, _ = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    out = args.out
    ctx = DistributedContext.from_environment()
    model, tokenizer = tiny_llama(seed=3), demo_tokenizer()
    if args.hang_in_call and ctx.rank == ctx.world_size - 1:
        model.register_forward_pre_hook(lambda *_: _hang(out / f"pid{ctx.rank}"))
    task_dir = build_local_tasks(
        list(demo_documents("test", 12)), out / "tasks", num_cloze=24, num_rolling=4, rolling_chars=600
    )
    lm_class = sharded_lm(HFLM, ctx) if ctx.distributed else HFLM
    # A short context: the rolling documents are several windows each.
    lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=BATCH, max_length=48, device="cpu")
    rows = [0]  # sequences this rank ran the model on (a batch of B: B), to show the work is shared
    model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.__setitem__(
            0, rows[0] + (args[0] if args else kwargs["input_ids"]).shape[0]
        ),
        with_kwargs=True,
    )
    ll, rolling, generate = requests(task_dir)
    answers, work = {}, {}
    for kind, call, reqs in (
        ("loglikelihood", lm.loglikelihood, ll),
        ("loglikelihood_rolling", lm.loglikelihood_rolling, rolling),
        ("generate_until", lm.generate_until, generate),
    ):
        rows[0] = 0
        answers[kind] = [list(a) if isinstance(a, tuple) else a for a in call(reqs)]
        work[kind] = rows[0]
    seen = []
    scores = run_lm_eval(
        model,
        tokenizer,
        LOCAL_TASKS,
        task_dir=task_dir,
        limit=8,
        batch_size=BATCH,
        progress=seen.append,
        ranks=ctx,
    )
    calls = {}  # each model call's reports: (done, total) in order
    for r in seen:
        calls.setdefault(f"{r.call} {r.request_type}", []).append((r.done, r.total))
    (out / f"rank{ctx.rank}.json").write_text(
        json.dumps({"answers": answers, "work": work, "rows": scores, "calls": calls})
    )
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
