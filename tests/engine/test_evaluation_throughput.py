"""Throughput report structure and result files with manifests (speed claims live in bench/)."""

import inspect
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.engine.distill_helpers import tiny_llama
from worker.engine.evaluation import (
    make_manifest,
    measure_model,
    read_result,
    throughput,
    write_result,
)
from worker.engine.fingerprint import weights_sha256
from worker.engine.kv_cache import cache_keyword, class_cache_keyword, returned_cache


def test_throughput_reports_both_models_in_one_run():
    teacher = tiny_llama(seed=1, layers=4, hidden=64, intermediate=128, vocab=512)
    student = tiny_llama(seed=2, layers=1, hidden=32, intermediate=48, vocab=512)
    report = throughput(teacher, student, batch_sizes=(1, 3), prompt_len=16, new_tokens=4, repeats=2)
    for role in ("teacher", "student"):
        runs = report[role]["runs"]
        assert [r["batch_size"] for r in runs] == [1, 3]
        for r in runs:
            assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
            assert 0 < r["latency_per_token_s"] < 10
            assert r["peak_memory_bytes"] > 0
    assert report["teacher"]["parameters"] == sum(p.numel() for p in teacher.parameters())
    assert report["parameter_ratio"] < 0.2
    # CPU memory = weights + measured KV cache: deterministic, so the smaller student must use less.
    assert all(s["memory"] > 2 for s in report["speedup"])
    assert all(s["prefill"] > 0 and s["decode"] > 0 and s["latency"] > 0 for s in report["speedup"])
    # KV cache of batch 3 over 16 + 4 tokens: 4 layers x K,V x 3 x 2 heads x 20 x 16 dims x 4 bytes.
    teacher_b3 = report["teacher"]["runs"][1]
    weights = sum(p.numel() * 4 for p in teacher.parameters())
    assert teacher_b3["peak_memory_bytes"] - weights == 4 * 2 * 3 * 2 * 20 * 16 * 4
    with pytest.raises(ValueError):
        throughput(teacher, student, batch_sizes=(0,))


def test_a_student_is_measured_in_its_teachers_dtype():
    """A float32 student against a bfloat16 teacher measured the dtypes, not the architectures (the
    dashboard showed a 5x decode speedup and a smaller student using more memory than its teacher): the
    student runs in the teacher's dtype, and the report says what it was cast from."""
    import torch

    teacher = tiny_llama(seed=1, layers=2, hidden=64, intermediate=128, vocab=512).to(torch.bfloat16)
    student = tiny_llama(seed=2, layers=1, hidden=32, intermediate=48, vocab=512)
    report = throughput(teacher, student, batch_sizes=(1,), prompt_len=8, new_tokens=2, repeats=1)
    assert report["teacher"]["dtype"] == report["student"]["dtype"] == "bfloat16"
    assert report["student"]["cast_from"] == "float32" and "cast_from" not in report["teacher"]
    weights = sum(p.numel() * 2 for p in student.parameters())  # bf16 bytes now, not float32's
    assert report["student"]["runs"][0]["peak_memory_bytes"] < 2 * weights
    assert report["speedup"][0]["memory"] > 1  # the smaller model uses less memory


def test_result_file_is_atomic_json_with_manifest(tmp_path):
    model = tiny_llama(seed=1, vocab=256)
    manifest = make_manifest(models={"model": model}, data={"source": "demo", "split": "test"}, seed=7)
    path = write_result(tmp_path / "out" / "perplexity.json", "perplexity", {"loss": 1.5}, manifest)
    assert [p.name for p in path.parent.iterdir()] == ["perplexity.json"]  # no temp file left
    saved = read_result(path)
    assert saved["kind"] == "perplexity" and saved["result"] == {"loss": 1.5}
    m = saved["manifest"]
    assert m["seed"] == 7 and m["data"]["split"] == "test" and m["versions"]["torch"] == torch.__version__
    assert m["model_hashes"]["model"] == weights_sha256(model) and len(m["model_hashes"]["model"]) == 64
    before = weights_sha256(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert weights_sha256(model) != before
    json.dumps(saved)  # plain JSON all the way down


class _PastKeyValuesLlama(LlamaForCausalLM):
    """A forward in the style of older transformers: takes and returns `past_key_values`."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        self.seen_caches.append(past_key_values is not None)
        stock_keyword = class_cache_keyword(LlamaForCausalLM)
        out = super().forward(input_ids=input_ids, use_cache=use_cache, **{stock_keyword: past_key_values})
        return SimpleNamespace(logits=out.logits, past_key_values=returned_cache(out))


def test_decode_loop_uses_the_cache_keyword_the_forward_takes():
    """Newer forwards get `cache` (the deprecated keyword is an error in pyproject's filterwarnings);
    a forward that only knows `past_key_values` (older transformers) still gets its cache back."""
    stock = tiny_llama(seed=1, vocab=64)
    takes_cache = "cache" in inspect.signature(LlamaForCausalLM.forward).parameters  # 5.24: yes
    assert cache_keyword(stock) == ("cache" if takes_cache else "past_key_values")
    old_style = _PastKeyValuesLlama(stock.config).eval()
    old_style.load_state_dict(stock.state_dict())
    old_style.seen_caches = []
    assert cache_keyword(old_style) == "past_key_values"
    for model in (stock, old_style):
        run = measure_model(model, batch_sizes=(2,), prompt_len=6, new_tokens=3, repeats=1, warmup=0)["runs"][
            0
        ]
        weights = sum(p.numel() * 4 for p in model.parameters())
        # The cache really went back in: it holds all 6 + 3 positions (2 layers x K,V x 2 x 2 heads x 8 dims).
        assert run["peak_memory_bytes"] - weights == 2 * 2 * 2 * 2 * 9 * 8 * 4
    assert old_style.seen_caches == [False, True, True, True]  # prefill, then every decode step
