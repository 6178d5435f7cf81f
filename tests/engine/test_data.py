"""Data sources, splits, calibration batches and packed tokens (worker/engine/data.py)."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from worker.demo import build_corpus, corpus_manifest, demo_corpus_path, demo_tokenizer_path
from worker.engine.data import (
    SPLITS,
    PackedTokens,
    calibration_batches,
    read_all_documents,
    read_documents,
    split_of,
)

DOCS = [f"def function_{i}(x):\n    return x * {i} + {i * i}  # document {i}" for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(demo_tokenizer_path())


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d, "other": 1}) + "\n" for d in docs))
    return path


# --- demo corpus ---------------------------------------------------------------------------------


def test_demo_splits_are_disjoint_nonempty_and_match_the_manifest():
    manifest = corpus_manifest()
    seen: dict[str, str] = {}
    records = {}
    for split in SPLITS:
        docs = read_documents("demo", split)
        assert len(docs) == manifest["splits"][split]["documents"] > 0
        for doc in docs:
            assert doc not in seen, f"document in both {seen[doc]} and {split}"
            seen[doc] = split
            assert split_of(doc) == split  # the one split rule, shared with other sources
        with gzip.open(demo_corpus_path(split), "rt", encoding="utf-8") as handle:
            records[split] = [json.loads(line) for line in handle]
    # The shipped files still hash to the recorded corpus hash (what the teacher's card cites).
    assert build_corpus.corpus_hash(records) == manifest["corpus_hash"]
    total = sum(p.stat().st_size for p in demo_corpus_path("train").parent.glob("*.jsonl.gz"))
    assert total <= 10 * 1024 * 1024


def test_corpus_build_is_deterministic_and_filters(tmp_path):
    stdlib = tmp_path / "Lib"
    (stdlib / "pkg").mkdir(parents=True)
    (stdlib / "test").mkdir()
    (stdlib / "encodings").mkdir()
    for i in range(60):
        (stdlib / "pkg" / f"mod_{i}.py").write_text(f'"""Module {i}."""\n' + "x = 1\n" * (40 + i))
    (stdlib / "pkg" / "zz_copy_of_0.py").write_text((stdlib / "pkg" / "mod_0.py").read_text())  # duplicate
    (stdlib / "tiny.py").write_text("x = 1\n")  # under MIN_BYTES
    (stdlib / "test" / "big_test.py").write_text("assert True\n" * 100)
    (stdlib / "encodings" / "cp999.py").write_text("table = 1\n" * 100)
    first = build_corpus.build(stdlib, tmp_path / "a", tokenizer=False)
    second = build_corpus.build(stdlib, tmp_path / "b", tokenizer=False)
    assert first["corpus_hash"] == second["corpus_hash"]
    for split in SPLITS:
        name = f"{split}.jsonl.gz"
        assert (tmp_path / "a/corpus" / name).read_bytes() == (tmp_path / "b/corpus" / name).read_bytes()
    ids = [
        json.loads(line)["id"]
        for split in SPLITS
        for line in gzip.open(tmp_path / "a/corpus" / f"{split}.jsonl.gz", "rt")
    ]
    assert sorted(ids) == sorted(f"pkg/mod_{i}.py" for i in range(60))  # filters and dedup applied


# --- generic sources -----------------------------------------------------------------------------


def test_hash_splits_partition_a_source_and_are_stable(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    parts = {split: read_documents(str(path), split) for split in SPLITS}
    assert sorted(d for docs in parts.values() for d in docs) == sorted(DOCS)
    assert sum(len(docs) for docs in parts.values()) == len(DOCS)  # no document in two splits
    assert len(parts["train"]) > len(parts["test"]) > 0
    # A document's split does not depend on its neighbours or the file it is in.
    shuffled = write_jsonl(tmp_path / "other.jsonl", list(reversed(DOCS)) + ["an extra document"])
    assert set(read_documents(str(shuffled), "test")) - {"an extra document"} == set(parts["test"])


def test_readers_txt_jsonl_gz_parquet_and_directory(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond\n   \n\n\nthird\n")
    assert read_all_documents(txt) == ["first paragraph\nstill first", "second", "third"]

    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "from gz"}) + "\n\n")
    assert read_all_documents(gz) == ["from gz"]

    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["from parquet", None, ""], "n": [1, 2, 3]}), parquet)
    assert read_all_documents(parquet) == ["from parquet"]

    write_jsonl(tmp_path / "d.jsonl", ["from jsonl"])
    (tmp_path / "ignored.csv").write_text("text\nnot read\n")
    assert read_all_documents(tmp_path) == [
        "first paragraph\nstill first",
        "second",
        "third",
        "from gz",
        "from parquet",
        "from jsonl",
    ]


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_documents(str(tmp_path / "missing.jsonl"), "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        read_documents("demo", "dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        read_all_documents(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        read_all_documents(bad)
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_text)
    with pytest.raises(ValueError, match="no 'text' column"):
        read_all_documents(no_text)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported data file"):
        read_all_documents(tmp_path / "x.csv")
    one = write_jsonl(tmp_path / "one.jsonl", ["a single document"])
    empty_split = next(s for s in SPLITS if s != split_of("a single document"))
    with pytest.raises(ValueError, match=f"split '{empty_split}' of .* is empty"):
        read_documents(str(one), empty_split)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no .* files in directory"):
        read_documents(str(empty_dir), "train")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"cannot load hf:wikitext:wikitext-2-raw-v1: .*\(offline mode"):
        read_documents("hf:wikitext:wikitext-2-raw-v1", "calibration")
    with pytest.raises(ValueError, match="needs a dataset id"):
        read_documents("hf::wikitext-2-raw-v1", "calibration")


def test_an_unreachable_hub_fails_an_in_memory_hf_source_at_once(monkeypatch):
    """As the streamed reader (test_streaming's test_an_unreachable_hub_fails_an_hf_source_at_once): no
    offline flag set, no network; the hub's probe answers at once where `datasets` retried ~30 s. Port 9
    on localhost refuses the connection."""
    import time

    from tests.engine.offline_hub import hub_refusing_connections
    from worker.engine import hub

    hub_refusing_connections(monkeypatch)
    began = time.monotonic()
    with pytest.raises(
        ValueError, match=r"cannot load .*the hub cannot be reached \(127.0.0.1:9 did not answer"
    ):
        read_documents("hf:wikitext:wikitext-2-raw-v1", "calibration")
    assert time.monotonic() - began < hub.PROBE_TIMEOUT_S + 2


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", " On "])
def test_an_offline_flag_means_what_hugging_face_reads_it_as(monkeypatch, value):
    """env.flag is the one truthy reading: hub.py's own list accepted "on", env.flag did not."""
    from worker.engine import env, hub

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert env.flag("HF_HUB_OFFLINE") and env.datasets_offline()
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not env.flag("HF_HUB_OFFLINE")


# --- calibration batches -------------------------------------------------------------------------


def test_calibration_batches_are_seeded_and_mask_padding(tokenizer):
    docs = ["x = 1", "def f():\n    return 2\n" * 30, "import os\nprint(os.sep)\n" * 12]
    lengths = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    seq_len = 32
    windows = sum((n + seq_len - 1) // seq_len for n in lengths)
    batches = calibration_batches(tokenizer, docs, seq_len=seq_len, num_samples=windows, batch_size=4, seed=3)
    again = calibration_batches(tokenizer, docs, seq_len=seq_len, num_samples=windows, batch_size=4, seed=3)
    other = calibration_batches(tokenizer, docs, seq_len=seq_len, num_samples=windows, batch_size=4, seed=4)
    ids = torch.cat([b["input_ids"] for b in batches if b["input_ids"].shape[1] == seq_len])
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    assert not all(
        a["input_ids"].shape == b["input_ids"].shape and torch.equal(a["input_ids"], b["input_ids"])
        for a, b in zip(batches, other)
    )
    assert [len(b["input_ids"]) for b in batches] == [4] * (windows // 4) + (
        [windows % 4] if windows % 4 else []
    )
    # Every window appears once; real tokens == sum of document lengths; padding is the pad id, masked.
    mask_total = sum(int(b["attention_mask"].sum()) for b in batches)
    assert mask_total == sum(lengths)
    for batch in batches:
        assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
        padded = batch["attention_mask"] == 0
        assert torch.all(batch["input_ids"][padded] == tokenizer.pad_token_id)
        # Right padding: once a row is padded it stays padded.
        assert torch.all(batch["attention_mask"][:, :-1] >= batch["attention_mask"][:, 1:])
    assert (
        int(
            (batches[0]["attention_mask"] == 0).sum()
            + sum((b["attention_mask"] == 0).sum() for b in batches[1:])
        )
        > 0
    )
    assert ids.shape[1] == seq_len
    with pytest.raises(ValueError, match=f"only {windows} calibration windows"):
        calibration_batches(tokenizer, docs, seq_len=seq_len, num_samples=windows + 1, batch_size=4, seed=0)


# --- packed tokens -------------------------------------------------------------------------------


def test_packed_tokens_layout(tokenizer):
    docs = DOCS[:50]
    packed = PackedTokens(tokenizer, docs, seq_len=16)
    stream = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(packed) == len(stream) // 16 and packed.num_tokens == len(packed) * 16
    assert packed.blocks.flatten().tolist() == stream[: len(packed) * 16]
    with pytest.raises(ValueError, match="do not fill one block"):
        PackedTokens(tokenizer, ["x"], seq_len=64)


def test_packed_batches_are_deterministic_cover_each_epoch_and_resume_exactly(tokenizer):
    packed = PackedTokens(tokenizer, DOCS[:60], seq_len=16)
    n = len(packed)
    batch_size = 3
    straight = [packed.batch(step, batch_size, seed=7) for step in range(2 * n // batch_size + 2)]
    assert all(b.shape == (batch_size, 16) and b.dtype == torch.long for b in straight)
    # A fresh object (a resumed run) asked for step k gives exactly the straight run's batch k.
    resumed = PackedTokens(tokenizer, DOCS[:60], seq_len=16)
    for step in (len(straight) - 1, 5, 0, n // batch_size):
        assert torch.equal(resumed.batch(step, batch_size, seed=7), straight[step])
    # Each epoch visits every block exactly once, in a different order per epoch and per seed.
    flat = [i for step in range(len(straight)) for i in packed.indices(step, batch_size, 7)]
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n : 2 * n]) == list(range(n))
    assert flat[:n] != flat[n : 2 * n]
    assert packed.indices(0, n, 7) != packed.indices(0, n, 8)
    assert sum(len(b) for b in packed.sequential(4)) == n
    assert torch.equal(next(packed.sequential(2, limit=2)), torch.from_numpy(packed.blocks[:2]))


def test_demo_tokenizer_is_lossless_and_its_training_deterministic(tokenizer, tmp_path):
    assert len(tokenizer) == build_corpus.VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for doc in read_documents("demo", "test")[:3] + ["naïve ünïcode → 😀\n\ttabs\r\n"]:
        assert tokenizer.decode(tokenizer(doc, add_special_tokens=False)["input_ids"]) == doc
    for name in ("a", "b"):
        build_corpus.train_tokenizer(DOCS * 3, tmp_path / name)
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    small = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert small.eos_token == "<|eos|>" and small.decode(small("def f(x):")["input_ids"]) == "def f(x):"
