"""Out-of-core surgery: the checkpoint cut tensor by tensor equals the in-memory surgery, bit for bit.

For every family in tests/tiny_models.FAMILIES and every kind of cut (the plans of test_surgery.py:
heads, KV groups, neurons, layers, combined, hidden channels, uneven head counts), a teacher saved in
several shards is cut both ways; every saved tensor is torch.equal, config.json, the per-layer file
and the manifest's format/architecture agree, the output is sharded with a consistent index, and it
loads by today's contract (uniform: vanilla from_pretrained; non-uniform: our loader) to the same
logits as the model the in-memory surgery cut. Both surgeries take their slices from one cut map
(worker/engine/cut_map.py), which test_surgery.py checks against the masked teacher; these tests check
everything else: reading row runs across shards, dtype conversion, renumbering, tied heads, writing.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from tests.engine.test_surgery import EXACT_CUTS, HIDDEN, UNEVEN_HEADS, inputs, logits
from tests.tiny_models import FAMILIES, tiny_model
from worker.engine.adapters import arch_spec
from worker.engine.checkpoint_reader import INDEX_FILE, MAX_RUNS, CheckpointReader
from worker.engine.importance.provenance import weights_sha256
from worker.engine.loading import LAYERS_FILE, MANIFEST_FILE, load_model, save_model
from worker.engine.out_of_core import (
    checkpoint_weights_sha256,
    choose_mode,
    open_checkpoint,
    prune_checkpoint,
)
from worker.engine.plan import PlanError, PlanTargets, PrunePlan
from worker.engine.shard_writer import TensorEntry, plan_shards
from worker.engine.surgery import apply_plan

CUTS = {**EXACT_CUTS, "hidden": HIDDEN, "uneven": UNEVEN_HEADS}
TEACHER_SHARD = "20KB"  # the tiny teachers (~50-100 KB) are saved in several shards
STUDENT_SHARD = 16_000  # bytes: several output shards too


def cases():
    for family in FAMILIES:
        for cut in CUTS:
            if not (cut == "uneven" and family == "phi3"):  # Phi-3's config holds one head count
                yield family, cut


def save_teacher(model, path: Path) -> Path:
    model.save_pretrained(path, max_shard_size=TEACHER_SHARD)
    assert (path / INDEX_FILE).is_file()  # sharded input
    return path


def tensors(path: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {name: reader.read(name) for name in reader.names()}


def load_by_contract(path: Path):
    """Uniform students load with stock from_pretrained; the others only with our loader.

    Eager attention, as the tiny models use, so the logits can be compared exactly."""
    if (path / LAYERS_FILE).is_file():
        return load_model(path, attn_implementation="eager")[0]
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def assert_same_student(in_memory: Path, out_of_core: Path) -> None:
    expected, got = tensors(in_memory), tensors(out_of_core)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    for file in ("config.json", "generation_config.json", LAYERS_FILE):
        assert (in_memory / file).is_file() == (out_of_core / file).is_file(), file
        if (in_memory / file).is_file():
            assert json.loads((out_of_core / file).read_text()) == json.loads((in_memory / file).read_text())
    m_in, m_out = (json.loads((p / MANIFEST_FILE).read_text()) for p in (in_memory, out_of_core))
    assert m_in["format"] and m_in["architecture"]
    for key in ("format", "architecture", "plan"):
        assert m_out.get(key) == m_in.get(key), key


@pytest.mark.parametrize(("family", "cut"), list(cases()))
def test_out_of_core_equals_in_memory_surgery(family, cut, tmp_path):
    plan = CUTS[cut]
    teacher = save_teacher(tiny_model(family), tmp_path / "teacher")
    manifest = {"plan": plan.model_dump(mode="json")}
    model = apply_plan(tiny_model(family), plan)
    save_model(model, None, tmp_path / "in_memory", manifest)
    pruned = prune_checkpoint(
        teacher, plan, tmp_path / "out_of_core", manifest, max_shard_bytes=STUDENT_SHARD
    )
    out = pruned.path
    assert out == (tmp_path / "out_of_core").resolve() and pruned.spec == arch_spec(model)
    assert_same_student(tmp_path / "in_memory", out)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and shards == {p.name for p in out.glob("*.safetensors")}
    for shard in shards:  # every tensor is where the index says, and the shards stay bounded
        with safe_open(str(out / shard), "pt") as f:
            assert {k for k, v in index["weight_map"].items() if v == shard} == set(f.keys())
    assert not list(tmp_path.glob(".out_of_core.tmp-*"))  # the temp dir was renamed into place
    ids = inputs()
    assert torch.equal(logits(load_by_contract(out), ids), logits(model, ids))


def test_a_uniform_student_loads_with_vanilla_from_pretrained(tmp_path):
    teacher = save_teacher(tiny_model("llama"), tmp_path / "teacher")
    out = prune_checkpoint(teacher, EXACT_CUTS["layers"], tmp_path / "student", {}).path
    assert not (out / LAYERS_FILE).exists() and (out / "model.safetensors").is_file()  # one shard here
    student = load_by_contract(out)
    expected = apply_plan(tiny_model("llama"), EXACT_CUTS["layers"])
    assert torch.equal(logits(student, inputs()), logits(expected, inputs()))


def test_dtype_conversion_and_a_bf16_teacher(tmp_path):
    teacher = save_teacher(tiny_model("qwen2").to(torch.bfloat16), tmp_path / "teacher")
    plan = EXACT_CUTS["combined"]
    for dtype in (None, "float32"):
        loaded, _ = load_model(teacher, dtype=dtype)
        save_model(apply_plan(loaded, plan), None, tmp_path / f"mem-{dtype}", {})
        prune_checkpoint(teacher, plan, tmp_path / f"ooc-{dtype}", {}, dtype=dtype, max_shard_bytes=8_000)
        assert_same_student(tmp_path / f"mem-{dtype}", tmp_path / f"ooc-{dtype}")
    assert next(iter(tensors(tmp_path / "ooc-None").values())).dtype == torch.bfloat16
    assert next(iter(tensors(tmp_path / "ooc-float32").values())).dtype == torch.float32


def test_a_non_uniform_teacher_is_cut_again(tmp_path):
    """A promoted student (per-layer widths) as the teacher of the next round."""
    first = apply_plan(tiny_model("llama"), UNEVEN_HEADS)
    save_model(first, None, tmp_path / "round1", {})
    plan = PrunePlan(remove_neurons={0: [1, 2], 2: [0]}, remove_hidden=list(range(3, 11)))
    again, _ = load_model(tmp_path / "round1")
    save_model(apply_plan(again, plan), None, tmp_path / "mem", {})
    prune_checkpoint(tmp_path / "round1", plan, tmp_path / "ooc", {}, max_shard_bytes=STUDENT_SHARD)
    assert_same_student(tmp_path / "mem", tmp_path / "ooc")


@pytest.mark.parametrize("family", ["llama", "llama_tied", "gpt2"])
def test_the_streamed_weights_hash_equals_the_in_memory_one(family, tmp_path):
    teacher = save_teacher(tiny_model(family), tmp_path / "teacher")
    model, _ = load_model(teacher)
    ckpt = open_checkpoint(teacher)
    assert checkpoint_weights_sha256(ckpt) == weights_sha256(model)
    assert ckpt.spec == arch_spec(model)
    assert ckpt.model_bytes() == sum(p.numel() * p.element_size() for p in model.parameters())


def test_bad_requests_change_nothing(tmp_path):
    teacher = save_teacher(tiny_model("llama"), tmp_path / "teacher")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        prune_checkpoint(teacher, EXACT_CUTS["layers"], existing, {})
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    with pytest.raises(PlanError, match="drop_layers"):
        prune_checkpoint(teacher, PrunePlan(drop_layers=[0, 1, 2, 3]), tmp_path / "none", {})
    with pytest.raises(ValueError, match="targets"):
        prune_checkpoint(teacher, PrunePlan(targets=PlanTargets(num_layers=2)), tmp_path / "none", {})
    with pytest.raises(FileNotFoundError, match="config.json"):
        prune_checkpoint(existing, EXACT_CUTS["layers"], tmp_path / "none", {})
    (existing / "config.json").write_text((teacher / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        prune_checkpoint(existing, EXACT_CUTS["layers"], tmp_path / "none", {})
    assert not (tmp_path / "none").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "teacher"]  # no temp dir left


def test_overwrite_replaces_the_output_whole(tmp_path):
    teacher = save_teacher(tiny_model("llama"), tmp_path / "teacher")
    out = tmp_path / "student"
    prune_checkpoint(teacher, EXACT_CUTS["combined"], out, {}, max_shard_bytes=STUDENT_SHARD)
    assert (out / LAYERS_FILE).is_file()
    prune_checkpoint(teacher, EXACT_CUTS["layers"], out, {}, overwrite=True)
    assert not (out / LAYERS_FILE).exists() and not (out / INDEX_FILE).exists()  # no stale file


def test_reader_reads_row_runs_and_column_selections(tmp_path):
    teacher = save_teacher(tiny_model("llama"), tmp_path / "teacher")
    reader = CheckpointReader(teacher)
    name = "model.layers.1.mlp.up_proj.weight"
    full = reader.read(name)
    rows, cols = (0, 1, 2, 7, 9, 10, 47), (31, 0, 5)
    assert torch.equal(reader.read(name, (rows, None)), full[list(rows)])
    assert torch.equal(reader.read(name, (rows, cols)), full[list(rows)][:, list(cols)])
    assert torch.equal(reader.read(name, (None, cols)), full[:, list(cols)])
    scattered = tuple(range(0, 48, 2))  # more runs than MAX_RUNS: read whole, then gathered
    assert len(scattered) > MAX_RUNS
    assert torch.equal(reader.read(name, (scattered, cols)), full[list(scattered)][:, list(cols)])


def test_shards_are_bounded_and_a_big_tensor_goes_alone():
    entries = [TensorEntry(f"t{i}", torch.float32, (n,)) for i, n in enumerate([10, 10, 100, 5, 5, 5])]
    shards = plan_shards(entries, max_shard_bytes=80)
    assert [[e.name for e in s] for s in shards] == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    assert all(sum(e.nbytes for e in s) <= 80 for s in shards if len(s) > 1)


def test_choose_mode_says_which_mode_and_why():
    gb = (
        10**9
    )  # the threshold's setting is in GB (PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB): quoted so, and in GiB
    assert choose_mode("always", 1) == (True, "out of core (requested)")
    assert choose_mode("never", 100 * gb) == (False, "in memory (requested)")
    assert choose_mode("auto", 140 * gb, 64 * gb) == (
        True,
        "out of core (model 130.4 GiB > the threshold 64 GB (59.6 GiB))",
    )
    assert choose_mode("auto", 2 << 30, 64 << 30) == (
        False,
        "in memory (model 2.0 GiB <= the threshold 68.7195 GB (64.0 GiB))",
    )
    assert choose_mode("auto", None)[0] is False and "not a local safetensors" in choose_mode("auto", None)[1]
    on, why = choose_mode("auto", 1)  # default threshold: half the available RAM
    assert on is False and "available RAM" in why
    with pytest.raises(ValueError, match="local directory"):
        choose_mode("always", None)
    with pytest.raises(ValueError, match="auto, never, always"):
        choose_mode("sometimes", 1)


def test_a_checkpoint_saved_without_the_base_model_prefix(tmp_path):
    """Hub GPT-2 stores "h.0.attn..." rather than "transformer.h.0.attn..."; from_pretrained accepts both."""
    from safetensors.torch import save_file

    teacher = tmp_path / "teacher"
    tiny_model("gpt2").save_pretrained(teacher)
    state = tensors(teacher)
    save_file({k.removeprefix("transformer."): v for k, v in state.items()}, teacher / "model.safetensors")
    assert not any(k.startswith("transformer.") for k in CheckpointReader(teacher).names())
    plan = EXACT_CUTS["combined"]
    loaded, _ = load_model(teacher)
    save_model(apply_plan(loaded, plan), None, tmp_path / "mem", {})
    prune_checkpoint(teacher, plan, tmp_path / "ooc", {})
    assert_same_student(tmp_path / "mem", tmp_path / "ooc")


def mapped_bytes(paths) -> int:
    """Bytes of this process's address space mapped from any of `paths` (/proc/self/maps)."""
    names = {str(p) for p in paths}
    total = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in names:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            total += end - start
    return total


def raw(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def test_reads_own_their_memory_and_leave_no_map_of_the_shards(tmp_path):
    """Every tensor of a sharded checkpoint (several dtypes, a scalar, an empty one) read and held:
    bit-identical to safetensors' own read, and no map of any shard, however many tensors are held;
    safetensors' get_slice, which the reader used before, maps the whole shard once per read."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    shards = {
        "a.safetensors": {
            "w": torch.randn(64, 48, generator=generator).to(torch.bfloat16),
            "h": torch.randn(33, 7, generator=generator).to(torch.float16),
        },
        "b.safetensors": {
            "f": torch.randn(5, 4, 3, generator=generator),
            "i": torch.arange(-20, 20, dtype=torch.int64),
            "m": torch.rand(9, generator=generator) > 0.5,
            "s": torch.tensor(3.5, dtype=torch.float64),
            "e": torch.empty(0, 4),
        },
    }
    for file, content in shards.items():
        save_file(content, tmp_path / file)
    weight_map = {name: file for file, content in shards.items() for name in content}
    (tmp_path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    files = [(tmp_path / f).resolve() for f in shards]
    baseline = mapped_bytes(files)
    reader = CheckpointReader(tmp_path)
    held = [reader.read(name) for _ in range(5) for name in reader.names()]  # each tensor five times
    held.append(reader.read("w", ((1, 2, 3, 40), (0, 47))))
    assert mapped_bytes(files) == baseline  # no map per tensor, nor per shard
    for file, content in shards.items():
        with safe_open(str(tmp_path / file), "pt") as f:
            for name, expected in content.items():
                reference = f.get_tensor(name)
                got = held[reader.names().index(name)]
                assert got.dtype == reference.dtype and got.shape == reference.shape, name
                assert torch.equal(raw(got), raw(reference)), name  # bit for bit
                assert torch.equal(got, expected), name
                del reference
    assert torch.equal(held[-1], shards["a.safetensors"]["w"][[1, 2, 3, 40]][:, [0, 47]])
    del held
    assert mapped_bytes(files) == baseline
    # The old way: one whole-shard map per tensor held.
    with safe_open(str(files[0]), "pt") as f:
        kept = f.get_slice("w")[:]
    assert mapped_bytes(files) > baseline
    del kept


def test_big_reads_have_their_own_memory_which_goes_back_on_release(tmp_path):
    """A read of MMAP_MIN_BYTES or more sits in an anonymous map of its own, unmapped when the tensor
    dies (glibc's heap kept freed layer-sized blocks: a streamed pass's RSS grew by about a layer per
    load); small reads come from the allocator."""
    from safetensors.torch import save_file

    from worker.engine.checkpoint_reader import MMAP_MIN_BYTES

    big = torch.arange(MMAP_MIN_BYTES // 2, dtype=torch.float32).reshape(-1, 64)  # 2 MMAP_MIN_BYTES
    save_file({"big": big, "small": torch.ones(8)}, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path)

    def region(address: int) -> tuple[int, int] | None:
        for line in Path("/proc/self/maps").read_text().splitlines():
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return start, end
        return None

    tensor = reader.read("big")
    assert torch.equal(tensor, big)
    ptr, size = tensor.data_ptr(), 2 * MMAP_MIN_BYTES
    start, end = region(ptr)
    # A map of its own starts at the tensor, page-aligned (a heap or malloc'd block does not); the kernel
    # may merge it with an adjacent anonymous map, so the map can extend beyond it on either side.
    assert ptr % mmap.PAGESIZE == 0 and start <= ptr and end >= ptr + size
    rows = reader.read("big", ((3, 4, 5), None))  # a part: a small buffer
    assert torch.equal(rows, big[3:6])
    del tensor
    assert region(ptr) is None and region(ptr + size - 1) is None  # unmapped, every page of it
