"""lm-eval integration: offline local tasks built from held-out text, run end-to-end on a tiny model."""

import json
import math
import os

import pytest

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
from worker.engine.evaluation import LOCAL_TASKS, build_local_tasks, perplexity, run_lm_eval
from worker.engine.evaluation.local_tasks import cloze_items


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_tasks_are_deterministic_cloze_items_are_sound(tmp_path):
    docs = list(demo_documents("test", 10))
    a = build_local_tasks(docs, tmp_path, num_cloze=30, num_rolling=3)
    b = build_local_tasks(docs, tmp_path, num_cloze=30, num_rolling=3)
    assert a == b and sorted(p.name for p in a.iterdir()) == sorted(
        f"{t}.{ext}" for t in LOCAL_TASKS for ext in ("yaml", "jsonl")
    )
    items = _read(a / "prunescope_cloze.jsonl")
    assert len(items) == 30
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        truth = item["choices"][item["label"]]
        owner = [d for d in docs if (item["context"].rsplit("\n", 1)[0] + "\n") in d]
        assert owner and any(line.strip() == truth for line in owner[0].split("\n"))
    assert [i["label"] for i in items] == [i["label"] for i in cloze_items(docs, num_items=30)]
    assert len({i["label"] for i in items}) > 1  # the answer position is shuffled
    assert str(a) in (a / "prunescope_cloze.yaml").read_text()  # absolute data path
    with pytest.raises(ValueError, match="two documents"):
        cloze_items(docs[:1])


def test_local_tasks_end_to_end_offline(tmp_path):
    docs = list(demo_documents("test", 12))
    task_dir = build_local_tasks(docs, tmp_path, num_cloze=24, num_rolling=3, rolling_chars=600)
    model, tok = tiny_llama(seed=3), demo_tokenizer()
    seen_offline = {}
    import lm_eval

    original = lm_eval.simple_evaluate

    def spy(*args, **kwargs):
        seen_offline["value"] = os.environ.get("HF_DATASETS_OFFLINE")
        return original(*args, **kwargs)

    lm_eval.simple_evaluate = spy
    try:
        rows = run_lm_eval(model, tok, LOCAL_TASKS, task_dir=task_dir, limit=6, batch_size=8)
    finally:
        lm_eval.simple_evaluate = original
    assert seen_offline["value"] == "1" and os.environ.get("HF_DATASETS_OFFLINE") != "1"
    by = {(r["task"], r["metric"]): r for r in rows}
    acc = by[("prunescope_cloze", "acc")]
    assert 0 <= acc["value"] <= 1 and acc["stderr"] is not None and ("prunescope_cloze", "acc_norm") in by
    bpb = by[("prunescope_rolling", "bits_per_byte")]["value"]
    byte_ppl = by[("prunescope_rolling", "byte_perplexity")]["value"]
    assert byte_ppl == pytest.approx(2**bpb, rel=1e-6)
    # Cross-check with our own perplexity on the same (short) documents: same total NLL per byte.
    texts = [r["text"] for r in _read(task_dir / "prunescope_rolling.jsonl")]
    ours = perplexity(model, texts, tok, context=512)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    assert byte_ppl == pytest.approx(math.exp(ours["loss"] * ours["tokens"] / nbytes), rel=1e-3)


def test_unknown_task_is_a_clear_error(tmp_path):
    task_dir = build_local_tasks(list(demo_documents("test", 6)), tmp_path, num_cloze=5, num_rolling=1)
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        run_lm_eval(tiny_llama(), demo_tokenizer(), ["no_such_task_xyz"], task_dir=task_dir)
