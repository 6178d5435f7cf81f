"""The memory planner's derived terms against the real models: the activations autograd saves per token
(counted with saved-tensor hooks, each storage once) equal `saved_bytes_per_token` exactly for the
Llama-style families, in float32 and bfloat16, with and without activation checkpointing; and the
planner is torch-free. Its fitted terms are measured against real peaks in
bench/memory_planner_bench.py (printed ratios, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.real_shapes import llama_3_1_8b
from tests.tiny_models import tiny_configs
from worker.engine import memplan
from worker.engine.adapters import arch_spec
from worker.engine.memplan.peak import layer_weight_bytes as _layer_weight_bytes
from worker.engine.spec import ArchSpec


def saved_activation_bytes(model, ids) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and t.is_floating_point():
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids, use_cache=False)
    return sum(seen.values())


@pytest.mark.parametrize(
    "family", ["llama", "mistral", "qwen2", "qwen3", "olmo2", "gemma3", "gemma2", "phi3"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_saved_activations_are_derived_exactly(family, dtype, checkpointing):
    """Qwen3's per-head q/k norms, OLMo 2's post-norms and full-width q/k norms exactly; Gemma 2's eager
    attention (soft-capped scores, their float32 softmax and its cast: 8 bytes per head and key) and
    Phi-3's fused projections (the whole [q | k | v] output kept by the v view, o_proj's input copy)
    exactly; Gemma 3's four norms per layer (float32 normalised inputs, keys and values repeated to all
    heads) within one [tokens, head_dim] table, which it saves per token beside the layers."""
    from transformers import AutoModelForCausalLM

    config = tiny_configs()[family]
    # What load_model gives: SDPA, or eager where transformers has no SDPA path (Gemma 2's soft-cap).
    config._attn_implementation = "eager" if memplan.EAGER_FAMILIES.count(family) else "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    spec = arch_spec(model)
    act = 4 if dtype == torch.float32 else 2
    per_token = memplan.saved_bytes_per_token(spec, act, checkpointing, seq_len=24)
    # Two batch sizes: the difference removes what is per position, not per token (rotary cos/sin).
    measured = [saved_activation_bytes(model, torch.randint(0, 90, (b, 24))) for b in (1, 3)]
    under = (measured[1] - measured[0]) / (2 * 24) - per_token
    if family == "gemma3":
        assert 0 <= under <= spec.head_dim * act, under
    else:
        assert under == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq_len", [7, 8, 24])
def test_gemma3_sliding_layers_save_their_mask_past_the_window(dtype, seq_len):
    """Gemma 3 (SDPA): a sliding-window layer whose sequence reaches past its window gets a [B, 1, S, S]
    mask, so transformers repeats its keys and values to every head and SDPA saves the mask's additive
    copy (S act bytes per token); the global layer and any sequence within the window run is_causal.
    Counted against autograd within the rotary table, below, at and past the window (8)."""
    from transformers import AutoModelForCausalLM

    base = tiny_configs()["gemma3"]
    config = type(base)(**{**base.to_dict(), "sliding_window": 8})  # three sliding layers, one global
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    spec = arch_spec(model)
    assert (spec.sliding_window, spec.sliding_layers) == (8, 3)
    act = 4 if dtype == torch.float32 else 2
    masked = memplan.sliding_masked_layers(spec, seq_len)
    assert masked == (3 if seq_len >= 8 else 0)  # transformers skips the mask below the window only
    measured = [saved_activation_bytes(model, torch.randint(0, 90, (b, seq_len))) for b in (1, 3)]
    under = (measured[1] - measured[0]) / (2 * seq_len) - memplan.saved_bytes_per_token(
        spec, act, seq_len=seq_len
    )
    assert 0 <= under <= spec.head_dim * act, under
    # Without the term (the mask and the repeated keys / values) the estimate is off by all of it.
    unmasked = spec.model_copy(update={"sliding_layers": 0})
    kv = 2 * (spec.num_heads - spec.num_kv_heads) * spec.head_dim * act
    gap = memplan.saved_bytes_per_token(spec, act, seq_len=seq_len) - memplan.saved_bytes_per_token(
        unmasked, act, seq_len=seq_len
    )
    assert gap == masked * (seq_len * act + kv)


@pytest.mark.parametrize(
    ("family", "renormalise"),
    [("qwen3_moe", False), ("qwen3_moe", True), ("mixtral", True), ("qwen2_moe", False), ("qwen2_moe", True)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_saved_activations_are_derived_exactly(family, dtype, renormalise):
    """Mixture-of-experts layers (grouped_mm experts): exact when the top-k weights are renormalised
    (Mixtral always; Qwen's `norm_topk_prob`), else 4 (k + 1) bytes per layer and token over."""
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_moe_configs

    base = tiny_moe_configs()[family]
    width = {"intermediate_size": 16} if family == "mixtral" else {"moe_intermediate_size": 16}
    extra = {} if family == "mixtral" else {"norm_topk_prob": renormalise}
    # Expert width 16: grouped_mm needs 16-byte row strides, which a bfloat16 width of 12 is not.
    config = type(base)(**{**base.to_dict(), **width, **extra})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    spec = arch_spec(model)
    act = 4 if dtype == torch.float32 else 2
    per_token = memplan.saved_bytes_per_token(spec, act)
    measured = [saved_activation_bytes(model, torch.randint(0, 90, (b, 24))) for b in (1, 3)]
    over = 0 if renormalise else spec.num_layers * 4 * (spec.experts_per_token + 1)
    assert per_token * 2 * 24 - (measured[1] - measured[0]) == over * 2 * 24


def spec(**kw) -> ArchSpec:
    return llama_3_1_8b(**kw)


def test_options_and_sharding_move_the_estimate_the_right_way():
    s, t = spec(num_layers=16), spec()
    kw = dict(batch_size=8, seq_len=2048, device="cuda")
    base = memplan.distill_memory(s, t, **kw)["total"]
    assert memplan.distill_memory(s, t, **kw, gradient_checkpointing=True)["total"] < base
    assert memplan.distill_memory(s, t, **kw, weights_dtype="bfloat16")["total"] < base
    assert memplan.distill_memory(s, t, **{**kw, "batch_size": 4})["total"] < base
    one = memplan.distill_memory(s, t, **kw)["parts"]
    four = memplan.distill_memory(s, t, **kw, num_gpus=4)["parts"]
    assert four["optimizer"] < one["optimizer"] / 3 and four["weights"] < one["weights"] / 3
    # The static terms are exact: AdamW's two moments in the weights' dtype, no master copy.
    p = s.param_count()["total"]
    assert (
        one["weights"] == 4 * p
        and one["optimizer"] == 8 * p
        and one["teacher"] == 4 * t.param_count()["total"]
    )
    bf16 = memplan.distill_memory(s, t, **kw, weights_dtype="bfloat16")["parts"]
    assert bf16["weights"] == 2 * p and bf16["optimizer"] == 4 * p and bf16["autocast_cache"] == 0


def test_candidates_nearest_first():
    got = memplan.distill_candidates({"batch_size": 8})
    assert got[:3] == [
        {"gradient_checkpointing": True},
        {"weights_dtype": "bfloat16"},
        {"batch_size": 4},
    ]
    assert {"batch_size": 1, "gradient_checkpointing": True, "weights_dtype": "bfloat16"} in got
    assert (
        memplan.distill_candidates(
            {"batch_size": 1, "gradient_checkpointing": True, "weights_dtype": "bfloat16"}
        )
        == []
    )


def test_chunk_size_is_the_engines(monkeypatch):
    from worker.engine import chunked_head

    assert chunked_head.auto_chunk_tokens is memplan.auto_chunk_tokens  # one definition
    # CUDA chunks are bigger (the LM-head matmuls need it), and the engine picks by the tensors' device.
    assert memplan.auto_chunk_tokens(128256, "cuda") == 2092 and memplan.auto_chunk_tokens(128256) == 130
    hidden, targets = torch.randn(300, 8), torch.randint(0, 128256, (300,))
    head = torch.nn.Linear(8, 128256, bias=False)
    chunks = []
    real_logits = chunked_head.OutputHead.logits

    def counting_logits(self, h):
        chunks.append(h.shape[0])
        return real_logits(self, h)

    monkeypatch.setattr(chunked_head.OutputHead, "logits", counting_logits)
    chunked_head.token_nll(hidden, head, targets)
    assert chunks == [130, 130, 40]  # CPU tensors: the CPU budget


def test_usable_bytes():
    assert memplan.usable_bytes({"kind": "cpu", "total_bytes": 10 << 30, "free_bytes": 6 << 30}) == 6 << 30
    h100 = memplan.usable_bytes({"kind": "cuda", "total_bytes": 80 << 30, "free_bytes": 1 << 30})
    assert 75 << 30 < h100 < 76 << 30  # the device's total minus the reserve: not what is free right now


def test_planner_is_torch_free():
    code = (
        "import sys, json; from worker.engine import memplan; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("scans", "block_size", "device_stores"),
    [(("bi", "drop", "block", "angular"), 2, 3), (("drop", "angular"), 3, 0), (("bi",), 2, 5)],
)
def test_streamed_stores_follow_the_real_placement(tmp_path, scans, block_size, device_stores):
    """A real streamed pass with a device budget of `device_stores` stores: the planner's store size,
    count and tiers are the ones the pass reports in its manifest, and the device part is on `total`."""
    from tests.engine.test_importance_streamed import batches
    from tests.tiny_models import tiny_model
    from worker.engine.importance.activation_store import StoreBudget
    from worker.engine.importance.streamed import compute_importance_streamed

    tiny_model("llama").save_pretrained(tmp_path)
    spec = arch_spec(tiny_model("llama"))
    store_bytes = 5 * 12 * spec.hidden_size * 4  # the 5 samples x seq 12 x hidden, float32
    budget = StoreBudget(device_bytes=device_stores * store_bytes + store_bytes // 2, host_bytes=0)
    streamed = compute_importance_streamed(
        tmp_path, batches(), scans=scans, block_size=block_size, budget=budget
    )
    real = streamed.manifest["execution"]["activations"]
    plan = memplan.importance_memory(
        spec,
        batch_size=2,
        seq_len=12,
        streamed=True,
        scans=scans,
        block_size=block_size,
        samples=5,
        weights_dtype="float32",
        device_budget=budget.device_bytes,
    )
    assert plan["settings"]["store_bytes"] == real["store_bytes"] == store_bytes
    planned = {tier: n for tier, n in plan["settings"]["stores"].items() if n}
    assert planned == real["stores"]
    assert plan["parts"]["stores"] == real["peak_bytes"].get("device", 0)
    assert plan["disk"] == real["peak_bytes"].get("disk", 0) and plan["host_total"] == 0


@pytest.mark.parametrize("budgets", [(0, 0), (2, 3), (4, 100), (100, 0), (1, 1)])
def test_store_placement_is_activation_stores_rule_with_a_host_tier(budgets):
    """The pinned-host tier exists on CUDA only: ActivationStores' tier choice (no memory is allocated
    by `new`), fed the pass's number of stores, against `store_placement`."""
    from worker.engine.importance.activation_store import ActivationStores, StoreBudget

    size, count = 1000, memplan.streamed_store_count(6, ("bi", "drop", "block", "angular"), 2)
    for device in ("cuda", "cpu"):
        budget = StoreBudget(device_bytes=budgets[0] * size + 7, host_bytes=budgets[1] * size)
        stores = ActivationStores(budget, torch.device(device), size)
        for _ in range(count):
            stores.new()
        planned = memplan.store_placement(
            count, size, budget.device_bytes, budget.host_bytes, device == "cuda"
        )
        assert planned == {tier: stores.created[tier] for tier in ("device", "host", "disk")}


def test_streamed_device_and_host_peaks():
    """All stores on the device without a budget; with one, the device keeps what fits and the host the
    rest (pinned RAM on CUDA): the device peak falls by exactly the spilled stores."""
    big = spec()
    kw = dict(batch_size=4, seq_len=4096, streamed=True, samples=512, weights_dtype="bfloat16", device="cuda")
    unlimited = memplan.importance_memory(big, **kw)
    store = 512 * 4096 * 4096 * 2
    count = 1 + 32 + 31  # main + drop cuts + block-2 cuts
    assert unlimited["settings"]["store_bytes"] == store and unlimited["parts"]["stores"] == count * store
    spilled = memplan.importance_memory(big, **kw, device_budget=10 * store, host_budget=20 * store)
    assert spilled["settings"]["stores"] == {"device": 10, "host": 20, "disk": count - 30}
    assert unlimited["total"] - spilled["total"] == (count - 10) * store
    assert spilled["host_total"] == 20 * store and spilled["disk"] == (count - 30) * store
    in_memory = memplan.importance_memory(big, batch_size=4, seq_len=4096, weights_dtype="bfloat16")
    assert "stores" not in in_memory["parts"] and in_memory["host_total"] == 0


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "qwen2_moe", "mixtral"])
def test_importance_running_sums_are_the_hooks(family):
    """The planner's scored units are the ones the importance hooks allocate float32 sums for (a
    mixture-of-experts layer: 3 axes per expert and each expert's FFN channels, no neuron axis)."""
    from tests.tiny_models import tiny_model
    from worker.engine.adapters import adapter_for
    from worker.engine.importance.hooks import ImportanceHooks
    from worker.engine.importance.stats import NUM_SUMS

    model = tiny_model(family)
    hooks = ImportanceHooks(
        model, adapter_for(model), block_importance=True, record_calls=False, device=torch.device("cpu")
    )
    allocated = sum(axis.sums.nbytes for axis in hooks.axes)
    units = allocated // (2 * NUM_SUMS * 4)
    plan = memplan.importance_memory(arch_spec(model), batch_size=3, seq_len=16)
    assert plan["parts"]["running_sums"] == allocated + 2 * 3 * units * 4
    spec_ = arch_spec(model)
    # The hooks' float32 router buffers [tokens, E] x 3 are in the layer phase (MoE only).
    n, act = 3 * 16, memplan.dtype_bytes(spec_.dtype)
    layer = n * (memplan.transient_bytes_per_token(spec_, act, backward=False) + 2 * spec_.hidden_size * act)
    layer += sum(memplan.attention_bytes(spec_, 3, 16, act).values())
    router = 3 * n * max(s.num_experts for s in spec_.layer_shapes()) * 4
    assert plan["settings"]["phases"]["layer"] == layer + router and bool(router) == bool(spec_.num_experts)


def test_scan_rules_are_the_engines():
    """memplan keeps torch-free copies of the importance pass's default scans and loss-scan sizes."""
    from worker.engine.importance.compute import loss_scan_sizes
    from worker.engine.importance.result import DEFAULT_SCANS

    assert memplan.DEFAULT_SCANS == DEFAULT_SCANS
    for scans in (DEFAULT_SCANS, ("drop",), ("block", "angular"), ("bi",), ("drop", "block")):
        for k in (1, 2, 3):
            assert memplan.loss_scan_sizes(scans, k) == loss_scan_sizes(scans, k)


def test_math_attention_scores_only_where_no_fused_kernel_runs():
    """The math kernel's two float32 [B, H, S, S] buffers are planned on CUDA in float32 with grouped
    queries (no fused SDPA kernel takes that call), in evaluation and importance (in memory, and in a
    streamed pass's layer phase), with the keys and values it repeats to every head (`enable_gqa`), and
    nowhere else: not on CPU, not in bf16, not with multi-head attention, not with a padding mask
    (transformers then repeats the keys and values itself and the memory-efficient kernel runs)."""
    gqa = spec()
    assert gqa.num_kv_heads < gqa.num_heads
    scores = 2 * 8 * gqa.num_heads * 2048 * 2048 * 4
    kv = 2 * 8 * gqa.num_heads * 2048 * gqa.head_dim * 4
    kw = dict(batch_size=8, seq_len=2048)

    def layer_phase(fn, model=gqa, **more):
        return fn(model, **kw, **{"weights_dtype": "float32", **more})["settings"]["phases"]["layer"]

    n, d, hd = 8 * 2048, gqa.hidden_size, gqa.head_dim
    qkvo = n * 4 * (2 * gqa.num_heads * hd + 2 * gqa.num_kv_heads * hd)  # the attention's own tensors
    mlp = n * memplan.transient_bytes_per_token(gqa, 4, backward=False)
    assert memplan.attention_bytes(gqa, 8, 2048, 4, "cuda") == {"attention_scores": scores, "repeated_kv": kv}
    # A padding mask: transformers repeats the keys and values, the memory-efficient kernel runs.
    mask = 8 * 2048 * 2048 * 5
    assert memplan.attention_bytes(gqa, 8, 2048, 4, "cuda", padded=True) == {
        "repeated_kv": kv,
        "attention_mask": mask,
    }
    for fn in (memplan.importance_memory, memplan.evaluation_memory):
        # The layer's input / output and the larger sublayer: on CUDA the attention (the math kernel's
        # buffers), on CPU and with a padding mask the MLP.
        assert layer_phase(fn, device="cuda") == n * 2 * d * 4 + qkvo + scores + kv
        assert (
            layer_phase(fn, device="cpu")
            == layer_phase(fn, device="cuda", padded=True)
            == n * 2 * d * 4 + mlp
        )
        assert qkvo + kv + mask < mlp < qkvo + scores + kv
        assert layer_phase(fn, device="cuda", weights_dtype="bfloat16") == layer_phase(
            fn, device="cpu", weights_dtype="bfloat16"
        )
    mha = gqa.model_copy(update={"num_kv_heads": gqa.num_heads})
    assert memplan.attention_bytes(mha, 8, 2048, 4, "cuda") == {}
    streamed = memplan.importance_memory(gqa, **kw, device="cuda", weights_dtype="float32", streamed=True)
    cpu_streamed = memplan.importance_memory(gqa, **kw, device="cpu", weights_dtype="float32", streamed=True)
    # ... less one layer's weights: CUDA holds the streamed layer once (the host keeps the read copy).
    assert streamed["settings"]["phases"]["layer"] - cpu_streamed["settings"]["phases"][
        "layer"
    ] == qkvo + scores + kv - mlp - _layer_weight_bytes(gqa, 4)
    # The layers and the head never overlap (measured, bench): the working set is the larger phase.
    for plan in (streamed, memplan.evaluation_memory(gqa, **kw), memplan.importance_memory(gqa, **kw)):
        assert plan["parts"]["working"] == max(plan["settings"]["phases"].values())


def allocator_peak(fn) -> int:
    """Peak of the CPU allocator's running total while `fn` runs (torch.profiler's memory events)."""
    import tempfile

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with torch.inference_mode():
        prof.start()
        fn()
        prof.stop()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(open(f.name).read())["traceEvents"]
    return max(
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    )


def test_attention_transients_are_measured():
    """A forward's attention buffers against the allocator's real peak (CPU, float32, tiny widths and
    256-token sequences so attention dominates). Gemma 2's eager kernel: the [B, H, S, S] scores and
    their softmax, the two additive masks and the repeated keys and values (`attention_bytes`) with the
    attention's own tensors make the peak, the larger sublayer (`forward_working_bytes`), within 10%. Llama with a padded batch: SDPA gets a mask,
    so transformers repeats the grouped keys and values and SDPA makes the boolean mask additive; the
    padded forward's extra peak is planned within 0.8-1.3x (measured: 1.2)."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    b, s = 2, 256
    ids = torch.randint(3, 90, (b, s))
    ones, padded = torch.ones_like(ids), torch.ones_like(ids)
    padded[0, -64:] = 0
    peaks, plans = {}, {}
    for family in ("gemma2", "llama"):
        config = tiny_configs()[family]
        config._attn_implementation = "eager" if family == "gemma2" else "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        spec = arch_spec(model)
        assert spec.num_kv_heads < spec.num_heads
        for name, mask in (("ones", ones), ("padded", padded)):
            peaks[family, name] = allocator_peak(
                lambda m=mask, net=model: net.model(input_ids=ids, attention_mask=m, use_cache=False)
            )
            plans[family, name] = memplan.attention_bytes(spec, b, s, 4, "cpu", padded=name == "padded")
        # the layer's input / output and the larger of its MLP's and its attention's working sets
        plans[family, "layer"] = b * s * 2 * spec.hidden_size * 4 + memplan.forward_working_bytes(
            spec, b, s, 4
        )
    gemma = plans["gemma2", "ones"]
    assert set(gemma) == {"attention_scores", "repeated_kv"}
    planned = plans["gemma2", "layer"]
    assert 0.9 <= planned / peaks["gemma2", "ones"] <= 1.1, (planned, peaks["gemma2", "ones"])
    assert plans["llama", "ones"] == {}  # no mask, no copies: SDPA's grouped-query path
    extra = sum(plans["llama", "padded"].values())
    measured = peaks["llama", "padded"] - peaks["llama", "ones"]
    assert 0.8 <= extra / measured <= 1.3, (plans["llama", "padded"], measured)


def test_attention_terms_reach_every_job_kind():
    """The eager scores are planned wherever Gemma 2's attention runs: importance (in memory, and in a
    streamed pass's layer phase), evaluation, the distillation teacher's forward and the student's saved
    activations; repeated keys and values only with grouped queries (eager, math kernel or padding).
    Gemma 2's final logit soft-cap holds a third [chunk, V] buffer in the NLL head."""
    from tests.real_shapes import llama_3_1_8b as llama

    gemma = llama(num_layers=4).model_copy(update={"family": "gemma2", "layer_norms": 4})
    kw = dict(batch_size=2, seq_len=1024)
    scores = 2 * gemma.num_heads * 1024 * 1024 * (2 + 4) + 2 * 2 * 1024 * 1024 * 2
    kv = 2 * 2 * gemma.num_heads * 1024 * gemma.head_dim * 2
    assert memplan.attention_bytes(gemma, 2, 1024, 2) == {"attention_scores": scores, "repeated_kv": kv}
    plain = gemma.model_copy(update={"family": "llama"})
    for fn, more in (
        (memplan.importance_memory, {}),
        (memplan.importance_memory, {"streamed": True}),
        (memplan.evaluation_memory, {}),
    ):
        eager, sdpa = (
            fn(m, **kw, **more, weights_dtype="bfloat16")["settings"]["phases"] for m in (gemma, plain)
        )
        # the eager attention outweighs the MLP, whose working set is the SDPA model's larger sublayer
        n, hd = 2 * 1024, gemma.head_dim
        qkvo = n * 2 * (2 * gemma.num_heads * hd + 2 * gemma.num_kv_heads * hd)
        mlp = n * memplan.transient_bytes_per_token(plain, 2, backward=False)
        assert eager["layer"] - sdpa["layer"] == qkvo + scores + kv - mlp
        assert 2 * eager["head"] == 3 * sdpa["head"]  # the soft-capped logits: raw, tanh and capped at once
    # Distillation: the student saves 8 bytes per head and key per layer; the teacher's forward holds
    # the scores while it runs.
    dkw = dict(batch_size=2, seq_len=1024, weights_dtype="bfloat16")
    assert memplan.distill_memory(gemma, None, **dkw)["settings"][
        "activations_saved"
    ] - memplan.distill_memory(plain, None, **dkw)["settings"][
        "activations_saved"
    ] == 2 * 1024 * gemma.num_layers * (
        gemma.num_heads * (8 * 1024 - 4)  # the scores, for SDPA's log-sum-exp
        + 2 * (gemma.num_heads - gemma.num_kv_heads) * gemma.head_dim * 2  # keys and values repeated
    )
    # Multi-head attention without padding: nothing repeated; padded: copies and the mask, no math kernel.
    mha = plain.model_copy(update={"num_kv_heads": plain.num_heads})
    assert memplan.attention_bytes(mha, 2, 1024, 4, "cuda", padded=True) == {
        "attention_mask": 2 * 1024 * 1024 * 5
    }
    gqa = memplan.attention_bytes(plain, 2, 1024, 4, "cuda", padded=True)
    assert "attention_scores" not in gqa and gqa["repeated_kv"] == 2 * 2 * plain.num_heads * 1024 * 128 * 4
    assert set(memplan.attention_bytes(plain, 2, 1024, 4, "cuda")) == {"attention_scores", "repeated_kv"}


def test_fused_gate_up_output_is_planned():
    """Phi-3's fused gate_up_proj holds its whole [tokens, 2 F] output until the product of its halves
    exists: one [tokens, F] more than a Llama of the same shapes at the forward's peak (allocator
    profile), which is what the planner adds to Phi-3's forward working set."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

    torch.set_num_threads(1)
    shape = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    ids = torch.randint(3, 128, (2, 128))
    peaks, planned = {}, {}
    for family, cls in (("llama", LlamaConfig), ("phi3", Phi3Config)):
        config = cls(**shape)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        peaks[family] = allocator_peak(lambda net=model: net.model(input_ids=ids, use_cache=False))
        planned[family] = ids.numel() * memplan.transient_bytes_per_token(arch_spec(model), 4, backward=False)
    extra = planned["phi3"] - planned["llama"]
    assert extra == ids.numel() * 1024 * 4
    assert 0.9 <= extra / (peaks["phi3"] - peaks["llama"]) <= 1.1, (extra, peaks)


def test_soft_capped_head_holds_a_third_logit_buffer():
    """The inference NLL over one chunk: plain logits peak at two [chunk, V] float32 buffers (logits and
    their log-softmax), Gemma 2's soft-capped ones at three (raw, tanh, capped), as `nll_chunk_buffers`."""
    from worker.engine.chunked_head import OutputHead, token_nll

    torch.set_num_threads(1)
    chunk, vocab = 256, 4096
    hidden, targets = torch.randn(chunk, 32), torch.randint(0, vocab, (chunk,))
    linear = torch.nn.Linear(32, vocab, bias=False)
    gemma2 = spec().model_copy(update={"family": "gemma2"})
    buffer = chunk * vocab * 4
    for head, planned in ((OutputHead(linear), spec()), (OutputHead(linear, softcap=30.0), gemma2)):
        peak = allocator_peak(lambda h=head: token_nll(hidden, h, targets, chunk_tokens=chunk))
        assert round(peak / buffer) == memplan.nll_chunk_buffers(planned), peak / buffer


def test_teacher_correction_adds_the_teacher_training_and_the_kept_teacher():
    """teacher_correction_steps > 0 (distill/loop.py correct_teacher): first the teacher is trained
    like a CE-only student (sharded over N ranks: 1/N of its weights, gradients and AdamW states)
    beside the whole loaded teacher (on N ranks also the whole corrected copy) and the student's
    weights; then the run keeps the loaded teacher beside the corrected one."""
    teacher = llama_3_1_8b()
    student = llama_3_1_8b(num_layers=8)
    kw = dict(batch_size=4, seq_len=1024, weights_dtype="bfloat16", device="cuda")
    whole = teacher.param_count()["total"] * 2
    for gpus in (1, 4):
        run = memplan.distill_memory(student, teacher, **kw, num_gpus=gpus)
        train = memplan.distill_memory(teacher, None, **kw, num_gpus=gpus)
        out = memplan.teacher_correction_memory(student, teacher, **kw, num_gpus=gpus)
        parts, phases = out["parts"], out["settings"]["phases"]
        assert parts["correction_step"] == train["total"]
        assert parts["teacher"] == whole and parts["corrected_teacher"] == (whole if gpus > 1 else 0)
        assert parts["student_weights"] == student.param_count()["total"] * 2
        assert phases == {"correction": sum(parts.values()), "distillation": run["total"] + whole}
        assert out["total"] == max(phases.values()) > run["total"]
    # One process: training the 8B teacher (weights, gradients, 2 AdamW states) is the peak.
    one = memplan.teacher_correction_memory(student, teacher, **kw)
    assert one["total"] == one["settings"]["phases"]["correction"] > 4 * whole
    # 4 ranks: the sharded training is a quarter of that, the whole copies are not.
    four = memplan.teacher_correction_memory(student, teacher, **kw, num_gpus=4)
    assert four["parts"]["correction_step"] < one["parts"]["correction_step"] / 3


# ---- prune jobs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen3_moe", "gemma2"])
def test_prune_largest_tensor_kind_is_the_models_largest_parameter(family):
    """tensor_numels knows each family's biggest tensor (untied head, Phi-3's fused gate_up / qkv, the
    fused expert tensors of a mixture of experts): out-of-core surgery reads it whole."""
    from tests.tiny_models import tiny_model

    model = tiny_model(family)
    numels = memplan.tensor_numels(arch_spec(model))
    biggest = max(p.numel() for p in model.parameters())
    assert max(numels.values()) == biggest, (numels, biggest)
    if family == "phi3":
        assert "gate_up" in numels and "qkv" in numels and "q" not in numels


def _prune_specs():
    teacher = llama_3_1_8b()
    student = teacher.model_copy(update={"hidden_size": 3072, "intermediate_size": 9000, "num_layers": 24})
    return teacher, student


def test_prune_in_memory_terms():
    teacher, student = _prune_specs()
    got = memplan.prune_memory(teacher, student, mode="in_memory", weights_dtype="bfloat16")
    assert got["parts"]["teacher_weights"] == teacher.param_count()["total"] * 2  # loaded whole
    assert got["parts"]["student_weights"] == student.param_count()["total"] * 2  # the cut copy beside it
    # one cut tensor in flight: the student's largest (its untied 128k x 3072 head / embeddings)
    assert got["parts"]["cut_tensor"] == 128256 * 3072 * 2
    assert got["total"] == sum(got["parts"].values())
    # no student: the teacher (an upper bound); the default dtype is the checkpoint's (float32 here)
    assert (
        memplan.prune_memory(teacher, None)["parts"]["student_weights"] == teacher.param_count()["total"] * 4
    )


def test_prune_out_of_core_terms():
    teacher, student = _prune_specs()
    got = memplan.prune_memory(teacher, student, mode="out_of_core", weights_dtype="bfloat16")
    # the embeddings are read whole (a hidden cut is along dim 1), then cut
    assert got["parts"] == {"read_tensor": 128256 * 4096 * 2, "cut_tensor": 128256 * 3072 * 2}
    assert got["settings"]["largest_tensor"] == "embed"
    in_memory = memplan.prune_memory(teacher, student, mode="in_memory", weights_dtype="bfloat16")["total"]
    assert got["total"] < in_memory / 10  # about one tensor, not the model
    # Phi-3 with a small vocabulary: the fused gate_up [2 F, D] is the tensor read whole
    phi = teacher.model_copy(update={"family": "phi3", "vocab_size": 1024})
    got = memplan.prune_memory(phi, phi, mode="out_of_core", weights_dtype="float32")
    assert got["settings"]["largest_tensor"] == "gate_up"
    assert got["parts"]["read_tensor"] == 2 * 14336 * 4096 * 4
    with pytest.raises(ValueError, match="prune mode"):
        memplan.prune_memory(teacher, mode="auto")


def test_prune_out_of_core_reads_kept_experts_one_at_a_time():
    """Fused expert tensors are assembled from the checkpoint's per-expert tensors: the kept experts,
    each cut, then stacked (expert_layout.FusedExpertReader), plus one teacher expert being read; not
    the whole [E, 2F, D] tensor (the bench's Qwen3-MoE case measured 1.28 that way, 1.03 this way)."""
    from tests.real_shapes import qwen3_30b_a3b

    teacher = qwen3_30b_a3b().model_copy(update={"vocab_size": 1024})
    student = teacher.model_copy(update={"num_experts": 96})
    got = memplan.prune_memory(teacher, student, mode="out_of_core", weights_dtype="bfloat16")
    assert got["settings"]["largest_tensor"] == "experts_gate_up"
    kept = 96 * 2 * teacher.intermediate_size * teacher.hidden_size
    one_expert = 2 * teacher.intermediate_size * teacher.hidden_size
    assert got["parts"] == {"read_tensor": (kept + one_expert) * 2, "cut_tensor": kept * 2}


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "qwen2_moe"])
def test_saving_a_mixture_of_experts_copies_its_fused_gate_up_tensors(family):
    """save_pretrained reverts transformers' load-time expert fusion on the whole state dict before it
    writes: every layer's gate_up_proj [E, 2 F, D] is chunked into contiguous gate and up copies (down_proj
    splits into views). `saved_expert_copies_numel` counts exactly the new storages; the in-memory
    prune's save phase holds them all beside the cut model (the bench's Qwen3-MoE case: 0.89 without them)."""
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    from tests.tiny_models import tiny_moe_configs

    config = tiny_moe_configs()[family]
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    reverted = revert_weight_conversion(model, model.state_dict())
    copies = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in reverted.values()
        if t.untyped_storage().data_ptr() not in params
    }
    spec = arch_spec(model)
    assert sum(copies.values()) == memplan.saved_expert_copies_numel(spec) * 4 > 0
    # The prune estimate takes the larger phase: here the save (every layer's copy) beats one cut tensor.
    got = memplan.prune_memory(spec, spec, mode="in_memory", weights_dtype="float32")
    phases = got["settings"]["phases"]
    assert phases["save"] == sum(copies.values()) > phases["cut"]
    assert got["parts"]["save_copies"] == phases["save"] and "cut_tensor" not in got["parts"]
    dense = memplan.prune_memory(llama_3_1_8b(), mode="in_memory")
    assert dense["settings"]["phases"]["save"] == 0 and dense["parts"]["cut_tensor"] > 0


def test_out_of_core_scattered_rows_hold_the_gathered_rows():
    """A scattered row cut (every other neuron, every fourth hidden channel) read out of core: the reader
    reads the whole tensor, gathers the kept rows, then selects the kept columns with the whole buffer
    still alive. Measured with the allocator's own accounting (the bench's profiler) on a real
    prune_checkpoint, the peak is read + gathered rows + cut of the widest MLP tensor, within the few
    index tensors' bytes; without `gathered_rows` the estimate was 0.55 of it."""
    import gc
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM, LlamaConfig

    from worker.engine import checkpoint_reader
    from worker.engine.out_of_core import prune_checkpoint
    from worker.engine.plan import PrunePlan
    from worker.engine.surgery import apply_plan

    d, f = 128, 256  # 32 removed hidden channels: 32 runs of kept rows, more than MAX_RUNS (16)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    teacher = arch_spec(model)
    plan = PrunePlan(
        remove_neurons={i: list(range(0, f, 2)) for i in range(2)}, remove_hidden=list(range(0, d, 4))
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "teacher")
        student = arch_spec(apply_plan(model, plan))
        del model
        gc.collect()
        got = memplan.prune_memory(teacher, student, mode="out_of_core", weights_dtype="float32")
        assert got["settings"]["largest_tensor"] == "down"  # [D, F]: D' x F gathered, then D' x F'
        assert got["parts"] == {
            "read_tensor": d * f * 4,
            "gathered_rows": 96 * f * 4,
            "cut_tensor": 96 * 128 * 4,
        }
        peak = [0]
        original = checkpoint_reader.owned_buffer
        # The reader's buffers from the allocator, so the profiler sees them (as the bench does).
        checkpoint_reader.owned_buffer = lambda n: torch.empty(n, dtype=torch.uint8)
        try:
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            ) as prof:
                prune_checkpoint(Path(tmp) / "teacher", plan, Path(tmp) / "student", {})
        finally:
            checkpoint_reader.owned_buffer = original
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
        peak[0] = max(
            e["args"]["Total Allocated"]
            for e in events
            if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
        )
    assert got["total"] <= peak[0] <= got["total"] + 4096, (got["total"], peak[0])
