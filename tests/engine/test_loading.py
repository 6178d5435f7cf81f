"""Saving pruned students and loading them back with identical logits.

Uniform cuts load with stock `AutoModelForCausalLM.from_pretrained`; non-uniform ones with
`load_model` (stock modeling classes, resized before the weights are loaded).
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from tests.tiny_models import FAMILIES, VOCAB, tiny_model
from worker.engine.adapters import UnsupportedArchitecture, arch_spec, count_parameters
from worker.engine.loading import LAYERS_FILE, MANIFEST_FILE, load_model, save_model
from worker.engine.plan import PrunePlan, plan_stats
from worker.engine.surgery import apply_plan

UNIFORM = PrunePlan(
    drop_layers=[1],
    remove_heads={i: [0, 2, 4, 6] for i in (0, 2, 3)},
    remove_neurons={i: list(range(0, 16, 2)) for i in (0, 2, 3)},
)
# GPT-2 derives head_dim = n_embd / n_head: a vanilla GPT-2 cut of heads also cuts the hidden size.
UNIFORM_GPT2 = UNIFORM.model_copy(update={"remove_hidden": list(range(16))})
NON_UNIFORM = PrunePlan(remove_kv_groups={0: [1]}, remove_neurons={1: [0, 5, 9]}, drop_layers=[3])
NON_UNIFORM_PHI3 = PrunePlan(remove_neurons={1: [0, 5, 9]}, drop_layers=[3])  # one head count (Phi-3)
HIDDEN = PrunePlan(remove_hidden=list(range(1, 32, 4)))


def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(ids()).logits


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w2")


def pruned(family: str, plan: PrunePlan):
    return apply_plan(tiny_model(family), plan)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_cut_loads_with_vanilla_from_pretrained(family, tmp_path):
    model = pruned(family, UNIFORM_GPT2 if family == "gpt2" else UNIFORM)
    expected = logits(model)
    out = save_model(model, tiny_tokenizer(), tmp_path / "student", {"plan": UNIFORM.model_dump(mode="json")})
    assert not (out / LAYERS_FILE).exists()
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == "vanilla" and manifest["plan"]["drop_layers"] == [1]
    assert manifest["libraries"]["transformers"] and manifest["architecture"]["num_layers"] == 3
    stock = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    torch.testing.assert_close(logits(stock), expected, atol=1e-6, rtol=0)
    assert count_parameters(stock) == count_parameters(model)
    ours, tokenizer = load_model(out, attn_implementation="eager")
    torch.testing.assert_close(logits(ours), expected, atol=1e-6, rtol=0)
    assert tokenizer is not None and (out / "tokenizer.json").exists()
    assert tokenizer.convert_tokens_to_ids("w5") == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_cut_round_trips_through_our_format(family, tmp_path):
    model = pruned(family, NON_UNIFORM_PHI3 if family == "phi3" else NON_UNIFORM)
    expected = logits(model)
    out = save_model(model, None, tmp_path / "student", {"teacher": "tiny"})
    layers = json.loads((out / LAYERS_FILE).read_text())
    assert layers["layers"] == [s.model_dump() for s in arch_spec(model).layer_shapes()]
    assert json.loads((out / MANIFEST_FILE).read_text())["format"] == layers["format"]
    loaded, tokenizer = load_model(out, attn_implementation="eager")
    assert tokenizer is None
    assert type(loaded) is type(model)  # the stock modeling class, no custom code
    torch.testing.assert_close(logits(loaded), expected, atol=1e-6, rtol=0)
    assert arch_spec(loaded) == arch_spec(model)
    prompt = ids()[:1, :4]
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(loaded.generate(prompt, **kw), model.generate(prompt, **kw))


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_cut_round_trips(family, tmp_path):
    model = pruned(family, HIDDEN)
    expected = logits(model)
    out = save_model(model, None, tmp_path / "student", {})
    # GPT-2 attention stays 32 wide while n_embd is 24: only our loader rebuilds that.
    assert (out / LAYERS_FILE).exists() == (family == "gpt2")
    loaded, _ = load_model(out, attn_implementation="eager")
    assert loaded.config.hidden_size == 24
    torch.testing.assert_close(logits(loaded), expected, atol=1e-6, rtol=0)


def test_vanilla_from_pretrained_refuses_our_format_instead_of_loading_it_wrong(tmp_path):
    out = save_model(pruned("llama", NON_UNIFORM), None, tmp_path / "s", {})
    with pytest.raises(RuntimeError, match="size"):
        AutoModelForCausalLM.from_pretrained(out)


def test_load_model_dtype(tmp_path):
    out = save_model(pruned("qwen3", UNIFORM), None, tmp_path / "s", {})
    model, _ = load_model(out, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(out, dtype="float7")


def test_save_refuses_a_non_empty_output_and_replaces_it_atomically_when_asked(tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = pruned("llama", UNIFORM)
    with pytest.raises(FileExistsError, match="not empty"):
        save_model(model, None, out, {})
    assert (out / "keep.txt").read_text() == "mine"
    save_model(model, None, out, {}, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temp dirs left


def test_failed_save_leaves_nothing_behind(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(pruned("llama", UNIFORM), BrokenTokenizer(), tmp_path / "student", {})
    assert list(tmp_path.iterdir()) == []


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4})
    )
    with pytest.raises(
        UnsupportedArchitecture, match="'gpt_neox' is not supported; supported: llama, mistral"
    ):
        load_model(tmp_path)


def test_remote_code_is_not_run_unless_asked(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "configuration_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom_lm'\n"
    )
    config = {"model_type": "custom_lm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="custom code"):
        load_model(tmp_path)
    assert not marker.exists()


def test_a_saved_non_uniform_student_can_be_pruned_again(tmp_path):
    first = save_model(pruned("qwen3", NON_UNIFORM), None, tmp_path / "a", {})
    student, _ = load_model(first, attn_implementation="eager")
    plan = PrunePlan(remove_heads={0: [0, 2, 4]}, remove_neurons={1: [0]}, drop_layers=[2])
    stats = plan_stats(plan, arch_spec(student))
    apply_plan(student, plan)
    assert count_parameters(student) == stats["params_total"]
    expected = logits(student)
    again, _ = load_model(save_model(student, None, tmp_path / "b", {}), attn_implementation="eager")
    torch.testing.assert_close(logits(again), expected, atol=1e-6, rtol=0)
    assert [s.num_heads for s in arch_spec(again).layer_shapes()] == [3, 8]


def test_family_constants_survive_the_cut_and_the_reload(tmp_path):
    # Per-layer attention types are sliced with the layers; Granite's multipliers and Gemma's soft-caps
    # are constants of the family that no cut changes (the logits comparisons above depend on them).
    for family, fields in (
        (
            "gemma2",
            {"final_logit_softcapping": 0.3, "attn_logit_softcapping": 2.0, "query_pre_attn_scalar": 8},
        ),
        ("granite", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 4.0}),
        ("gemma3", {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    ):
        out = save_model(pruned(family, UNIFORM), None, tmp_path / family, {})
        stock = AutoModelForCausalLM.from_pretrained(out)
        assert {k: getattr(stock.config, k) for k in fields} == fields
        assert stock.config.num_hidden_layers == 3


@pytest.mark.parametrize("family", ["olmo2", "granite"])
def test_hidden_size_need_not_divide_by_the_head_count_where_the_config_allows(family, tmp_path):
    # 32 -> 29 channels with 8 heads of 4: the explicit head_dim in the saved config is what they read.
    model = pruned(family, PrunePlan(remove_hidden=[0, 7, 30]))
    expected = logits(model)
    out = save_model(model, None, tmp_path / "s", {})
    assert not (out / LAYERS_FILE).exists()
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    assert stock.config.hidden_size == 29
    torch.testing.assert_close(logits(stock), expected, atol=1e-6, rtol=0)
