"""Counts the engine reports while it works, through a callback (the engine knows nothing of jobs):
loading a checkpoint (k/N tensors), lm-eval (k/N requests or windows of one model call, with its
tasks), a benchmark (k/N rounds)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
from tests.tiny_models import tiny_model
from worker.engine.evaluation import measure_model, throughput
from worker.engine.loading import LAYERS_FILE, load_model, save_model
from worker.engine.plan import PrunePlan
from worker.engine.surgery import apply_plan


class Stop(Exception):
    pass


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _counted_0_to_n(seen: list[tuple[int, int]]) -> int:
    total = seen[0][1]
    assert seen == [(k, total) for k in range(total + 1)], seen  # 0/N first, one by one, N/N last
    return total


def test_loading_a_sharded_checkpoint_counts_every_tensor(tmp_path):
    from transformers.utils.logging import set_tqdm_hook

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3  # really several shards
    seen = []
    loaded, _ = load_model(tmp_path / "m", progress=lambda done, total: seen.append((done, total)))
    assert _counted_0_to_n(seen) == len(index["weight_map"]) == len(list(loaded.parameters()))
    assert _same_weights(loaded, model)  # counted, loaded the same
    assert set_tqdm_hook(None) is None  # transformers' hook is restored afterwards

    def stop_at_3(done, total):  # a cancelled job: the callback raises, the load ends there
        seen.append((done, total))
        if done == 3:
            raise Stop

    seen.clear()
    with pytest.raises(Stop):
        load_model(tmp_path / "m", progress=stop_at_3)
    assert seen[-1][0] == 3 and set_tqdm_hook(None) is None


def test_loading_a_non_uniform_student_counts_its_tensors(tmp_path):
    plan = PrunePlan(remove_kv_groups={0: [1]}, remove_neurons={1: [0, 5, 9]}, drop_layers=[3])
    student = apply_plan(tiny_model("llama"), plan)
    out = save_model(student, None, tmp_path / "student", {})
    assert (out / LAYERS_FILE).is_file()  # our per-layer format, read tensor by tensor
    seen = []
    loaded, _ = load_model(out, progress=lambda done, total: seen.append((done, total)))
    assert _counted_0_to_n(seen) == len(student.state_dict())
    assert _same_weights(loaded, student)


def _instances(request_type: str, task: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type=request_type, doc={}, arguments=a, idx=0, metadata=(task, i, 1))
        for i, a in enumerate(args)
    ]


def test_lm_eval_counts_requests_and_rolling_windows():
    from lm_eval.models.huggingface import HFLM

    from worker.engine.evaluation.lm_eval_runner import _counting_lm

    model, tok = tiny_llama(seed=3), demo_tokenizer()
    seen = []
    counting = _counting_lm(HFLM, seen.append)(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    docs = demo_documents("test", 6)
    pairs = [(d[:80], d[80:100]) for d in docs[:5]]
    ll = counting.loglikelihood(_instances("loglikelihood", "cloze", pairs))
    assert ll == plain.loglikelihood(_instances("loglikelihood", "cloze", pairs))  # same answers
    assert [(r.call, r.done, r.total, r.unit, r.tasks) for r in seen] == [
        (1, k, 5, "requests", ("cloze",)) for k in range(6)
    ]
    assert seen[2].describe() == "loglikelihood: 2/5 requests (cloze)"

    # Documents longer than the model's context: several windows each, counted as they are scored.
    long_docs = [(docs[3],), (docs[1],)]  # ~3300 tokens: 7 windows of 512; ~400 tokens: 1
    seen.clear()
    rolled = counting.loglikelihood_rolling(_instances("loglikelihood_rolling", "rolling", long_docs))
    assert rolled == plain.loglikelihood_rolling(_instances("loglikelihood_rolling", "rolling", long_docs))
    total = seen[0].total
    assert total == 8 and {r.call for r in seen} == {2} and seen[0].requests == 2
    done = [r.done for r in seen]
    assert done == [0, 2, 4, 6, 8]  # batch by batch (batch_size 2)
    assert seen[-1].describe() == f"loglikelihood_rolling: {total}/{total} windows of 2 documents (rolling)"


def test_benchmark_counts_its_rounds():
    teacher = tiny_llama(seed=1, layers=2, hidden=32, intermediate=48, vocab=256)
    student = tiny_llama(seed=2, layers=1, hidden=32, intermediate=48, vocab=256)
    kwargs = dict(batch_sizes=(1, 2), prompt_len=8, new_tokens=2, repeats=2, warmup=1)
    seen = []
    measure_model(teacher, **kwargs, progress=lambda *a: seen.append(a))
    assert [s[:2] for s in seen] == [(k, 6) for k in range(7)]  # 2 batch sizes x (1 warm-up + 2 timed)
    assert seen[1][2] == "batch 1: warm-up 1/1" and seen[6][2] == "batch 2: timed round 2/2"
    seen.clear()
    throughput(teacher, student, **kwargs, progress=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12]  # the student's 0 is 6
    assert {s[1] for s in seen} == {12}
    assert (
        seen[3][2] == "teacher, batch 1: timed round 2/2"
        and seen[-1][2] == "student, batch 2: timed round 2/2"
    )


def test_what_the_lm_eval_callback_raises_ends_the_run_unchanged(tmp_path):
    """A cancel raised by the job's callback leaves lm-eval as itself, not as an 'lm-eval failed'."""
    from worker.engine.evaluation import build_local_tasks, run_lm_eval

    task_dir = build_local_tasks(list(demo_documents("test", 6)), tmp_path, num_cloze=4, num_rolling=1)
    seen = []

    def cancel(r):
        seen.append(r)
        raise Stop

    with pytest.raises(Stop):
        run_lm_eval(
            tiny_llama(), demo_tokenizer(), ["prunescope_cloze"], task_dir=task_dir, limit=2, progress=cancel
        )
    assert [(r.request_type, r.done, r.total, r.tasks) for r in seen] == [
        ("loglikelihood", 0, 8, ("prunescope_cloze",))  # 2 items x 4 choices
    ]
