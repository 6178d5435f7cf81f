"""lm-eval data-parallel over N ranks, with every rank's harness seeing one process.

The wrapped LM reports `rank 0, world_size 1` to lm-eval (HFLM given a model object always does), so
the harness on every rank builds the same full request list and calls the model with all of it. Inside
each call, the requests are batched exactly as one process batches them (HFLM's own order: lm-eval's
`Collator` with HFLM's sort and grouping keys; a rolling call's windows in document order), rank r
computes batches r, r + N, ..., and `all_gather_object` puts every answer back in the request order on
every rank. So each rank's harness computes the same metrics, and, because every batch is the same
tensor it would be in one process, the same per-request numbers as one process, bit for bit.

Why batches and not every N-th request: a batch is padded to its longest row, and the kernels a backend
picks depend on the batch's shape, so a request scored in a different batch can differ from the
one-process number in the last bits (on CPU with the tests' tiny Llama, every-N-th-request sharding
happened to agree exactly too; nothing promises that on a GPU).
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict


@contextlib.contextmanager
def one_process_harness():
    """LOCAL_RANK=0 while lm-eval runs on a rank: `simple_evaluate` returns its results only where
    LOCAL_RANK is 0 (its tensor-parallel guard), and each of our ranks is the harness's one process."""
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved


def rolling_windows(lm, text: str) -> list[tuple]:
    """A document's windows for `_loglikelihood_tokens`, split as HFLM.loglikelihood_rolling does."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = get_rolling_token_windows(
        token_list=lm.tok_encode(text),
        prefix_token=lm.prefix_token_id,
        max_seq_len=lm.max_length,
        context_len=1,
    )
    return [(None, *window) for window in map(make_disjoint_window, windows)]


def batched_indices(collator_items: list[tuple], batch_size: int, **collator_args) -> list[list[int]]:
    """Indices of the batches one process forms: `collator_items` are (index, *what HFLM collates)."""
    from lm_eval.models.utils import Collator

    return [
        [item[0] for item in batch]
        for batch in Collator(collator_items, **collator_args).get_batched(n=batch_size)
    ]


def sharded_lm(hflm_class, ranks):
    """An HFLM subclass answering each call data-parallel over `ranks` (a distributed context)."""

    class ShardedLM(hflm_class):
        unit_scale = 1.0  # the call's units over this rank's (a progress counter scales by it)

        def _fixed_batch(self) -> int:
            return self.batch_size if isinstance(self.batch_size, int) else 1

        def _mine(self, batches: list[list[int]]) -> list[int]:
            mine = sorted(i for b in batches[ranks.rank :: ranks.world_size] for i in b)
            total = sum(len(b) for b in batches)
            self.unit_scale = total / max(1, len(mine))
            return mine

        def _gathered(self, size: int, pairs: list[tuple[int, object]]) -> list:
            out = [None] * size
            for rank_pairs in ranks.gather_objects(pairs):
                for i, answer in rank_pairs:
                    out[i] = answer
            return out

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            if override_bs is not None:  # a batch of this rank's rolling windows (below)
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            # HFLM's Collator keys: longest first, then by tokens; one-token continuations sharing a
            # context grouped (one forward pass for the group, its longest continuation first).
            grouped = self.backend == "causal" and self.logits_cache
            group_of = lambda r: tuple(r[-2] + r[-1][:-1])  # noqa: E731
            batches = batched_indices(
                [(i, *r) for i, r in enumerate(requests)],
                self._fixed_batch(),
                sort_fn=lambda r: (-len(r[-2] + r[-1]), tuple(r[-2] + r[-1])),
                group_fn=group_of,
                group_by="contexts" if grouped else None,
            )
            if grouped:  # a batch holds one request per group: the rank answers the whole group
                members = defaultdict(list)
                for i, r in enumerate(requests):
                    members[group_of(r)].append(i)
                batches = [[m for i in b for m in members[group_of(requests[i])]] for b in batches]
            mine = self._mine(batches)
            answers = super()._loglikelihood_tokens([requests[i] for i in mine], disable_tqdm) if mine else []
            return self._gathered(len(requests), list(zip(mine, answers, strict=True)))

        def generate_until(self, requests, disable_tqdm: bool = False):
            batches = batched_indices(
                [(i, *r.args) for i, r in enumerate(requests)],
                self._fixed_batch(),
                sort_fn=lambda r: (-len(self.tok_encode(r[1])), r[1]),  # HFLM's, per gen_kwargs
                group_fn=lambda r: r[2],
                group_by="gen_kwargs",
            )
            mine = self._mine(batches)
            answers = super().generate_until([requests[i] for i in mine], disable_tqdm) if mine else []
            return self._gathered(len(requests), list(zip(mine, answers, strict=True)))

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            # As HFLM: every document's windows in order, cut into batches of the batch size; a
            # document's log-likelihood is the sum of its windows' in window order.
            windows = [(d, w) for d, req in enumerate(requests) for w in rolling_windows(self, req.args[0])]
            n = self._fixed_batch()
            batches = [list(range(i, min(i + n, len(windows)))) for i in range(0, len(windows), n)]
            self._mine(batches)
            answers = []
            for batch in batches[ranks.rank :: ranks.world_size]:
                nlls = self._loglikelihood_tokens([windows[i][1] for i in batch], True, len(batch))
                answers += zip(batch, nlls, strict=True)
            per_window = self._gathered(len(windows), answers)
            totals = [0.0] * len(requests)
            for (d, _), (nll, _greedy) in zip(windows, per_window, strict=True):
                totals[d] += nll
            for req, total in zip(requests, totals, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            return totals

    return ShardedLM
