"""Data-parallel perplexity: 2 gloo ranks, each scoring every other batch of windows, == one process."""

from __future__ import annotations

import json

from tests.engine.torchrun_helpers import run


def test_two_ranks_give_the_one_process_perplexity(tmp_path):
    from tests.engine.distill_helpers import demo_tokenizer, tiny_llama
    from worker.engine.data import read_documents
    from worker.engine.evaluation import perplexity
    from worker.engine.loading import save_model

    model, tokenizer = tiny_llama(seed=5, layers=2), demo_tokenizer()
    save_model(model, tokenizer, tmp_path / "model", {"kind": "test"})
    docs = read_documents("demo", "test")[:12]
    # Short windows with a stride: long documents become several windows, so there are many batches.
    options = dict(context=48, stride=24, batch_size=4)
    want = perplexity(model, docs, tokenizer, **options)
    batches = []
    perplexity(model, docs, tokenizer, **options, progress=lambda done, total: batches.append(total))
    assert len(batches) >= 6  # several batches each: rank 1 gets real work, not a remainder

    args = [str(tmp_path / "model"), "--split", "test", "--max-documents", "12", "--context", "48"]
    args += ["--stride", "24", "--batch-size", "4", "--out", str(tmp_path / "two.json")]
    code, log = run(["-m", "worker.evaluate_ranks", *args])
    assert code == 0, log
    got = json.loads((tmp_path / "two.json").read_text())
    assert got["world_size"] == 2
    assert got["tokens"] == want["tokens"] and got["documents"] == want["documents"] == 12
    assert abs(got["loss"] - want["loss"]) <= 1e-6 * abs(want["loss"]), (got, want)
    assert abs(got["perplexity"] - want["perplexity"]) <= 1e-6 * want["perplexity"], (got, want)
    print(f"relative difference of the perplexity: {abs(got['perplexity'] / want['perplexity'] - 1):.2e}")
