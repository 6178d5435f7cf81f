"""TokenStream: lazy reading of txt / jsonl(.gz) / parquet shards, packing, exact resume, rank sharding,
streamed calibration, and distillation that resumes exactly on streamed data."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, packed, tiny_llama
from worker.engine import streaming
from worker.engine.data import (
    PackedTokens,
    jsonl_texts,
    read_all_documents,
    read_documents,
    split_of,
    write_jsonl_gz,
)
from worker.engine.distill import DistillConfig, distill
from worker.engine.streaming import TokenStream, is_token_stream, stream_calibration_batches


@pytest.fixture(scope="module")
def docs():
    # Short documents cut from demo text, plus a long one (many blocks from one document) and unicode.
    lines = [ln for doc in demo_documents("train", 4) for ln in doc.split("\n") if len(ln.strip()) > 10]
    short = ["\n".join(lines[i : i + 3]) for i in range(0, min(len(lines), 600), 3)]
    return short[:40] + [" ".join(lines[:120]), "naïve ünïcode → 😀"] + short[40:]


def _write(path, docs, field="text"):
    """One corpus in the format the file name asks for."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        write_jsonl_gz(path, ({field: d} for d in docs))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs), encoding="utf-8")
    elif name.endswith(".txt"):
        path.write_text("\n\n  \n".join(docs) + "\n", encoding="utf-8")
    else:  # small row groups, so resuming skips whole groups and starts inside one
        pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path, row_group_size=7)
    return path


FORMATS = ["c.jsonl", "c.jsonl.gz", "c.txt", "c.parquet"]


@pytest.mark.parametrize("name", FORMATS)
def test_stream_packs_like_the_in_memory_reader(tmp_path, docs, name):
    """Every block, in order, equals PackedTokens over the same documents (split filter included)."""
    path = _write(tmp_path / name, docs)
    tok = demo_tokenizer()
    for split in (None, "train"):
        chosen = read_all_documents(path) if split is None else read_documents(str(path), split)
        reference = PackedTokens(tok, chosen, 16).blocks
        stream = TokenStream(tok, path, seq_len=16, split=split, repeat=False)
        assert np.array_equal(stream.take(len(reference)), reference)
        with pytest.raises(ValueError, match="blocks of 16 tokens"):
            stream.take(2)  # at most the dropped tail (< 1 block) is left
    # The one question distillation asks of its training data (no duck typing by attribute).
    assert is_token_stream(stream) and not is_token_stream(PackedTokens(tok, chosen, 16))


def test_folder_of_shards_is_read_in_sorted_order_with_a_chosen_field(tmp_path, docs):
    folder = tmp_path / "shards"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "b.jsonl", docs[:10], field="content")
    _write(folder / "a.parquet", docs[10:20], field="content")
    _write(folder / "sub" / "c.jsonl.gz", docs[20:30], field="content")
    (folder / "notes.md").write_text("not data")
    tok = demo_tokenizer()
    expected = PackedTokens(tok, docs[10:20] + docs[:10] + docs[20:30], 16).blocks
    stream = TokenStream(tok, folder, seq_len=16, split=None, text_field="content", repeat=False)
    assert np.array_equal(stream.take(len(expected)), expected)
    only_jsonl = TokenStream(tok, folder, seq_len=16, split=None, text_field="content", data_format="jsonl")
    assert [p.name for p in only_jsonl.shards] == ["b.jsonl", "c.jsonl.gz"]


@pytest.mark.parametrize("fmt,name", [("txt", "notes.md"), ("jsonl", "dump.json"), ("parquet", "table.pq")])
def test_a_named_format_reads_a_lone_file_whatever_its_suffix(tmp_path, docs, fmt, name):
    """`data_format` names how to read a file whose suffix says nothing (it was read as JSONL)."""
    tok = demo_tokenizer()
    usual = _write(tmp_path / f"c.{fmt}", docs[:20])
    odd = tmp_path / name
    odd.write_bytes(usual.read_bytes())
    expected = TokenStream(tok, usual, seq_len=16, split=None, repeat=False)
    stream = TokenStream(tok, odd, seq_len=16, split=None, data_format=fmt, repeat=False)
    blocks = len(PackedTokens(tok, docs[:20], 16))
    assert np.array_equal(stream.take(blocks), expected.take(blocks))
    with pytest.raises(ValueError, match="unsupported data file"):
        TokenStream(tok, odd, seq_len=16, split=None)  # "auto" still goes by the suffix


@pytest.mark.parametrize("name", FORMATS)
def test_saved_position_resumes_exactly_across_documents_shards_and_epochs(tmp_path, docs, name):
    folder = tmp_path / "corpus"
    folder.mkdir()
    _write(folder / ("0" + name), docs[:30])
    _write(folder / ("1" + name), docs[30:])
    tok = demo_tokenizer()
    straight = TokenStream(tok, folder, seq_len=24, split=None)
    total = len(PackedTokens(tok, read_all_documents(folder), 24))
    expected = straight.take(2 * total + 5)  # more than two epochs
    assert straight.state_dict()["epoch"] >= 2
    for cut in (1, 3, total // 2, total + 2):  # inside the long document, in shard 1, in epoch 1
        first = TokenStream(tok, folder, seq_len=24, split=None)
        head = first.take(cut)
        saved = json.loads(json.dumps(first.state_dict()))  # JSON-able, as the checkpoint keeps it
        resumed = TokenStream(tok, folder, seq_len=24, split=None)
        resumed.load_state_dict(saved)
        assert np.array_equal(np.concatenate([head, resumed.take(len(expected) - cut)]), expected)


def test_ranks_take_disjoint_interleaved_blocks(tmp_path, docs):
    path = _write(tmp_path / "c.jsonl", docs)
    tok = demo_tokenizer()
    whole = TokenStream(tok, path, seq_len=16, split=None).take(30)
    parts = [TokenStream(tok, path, seq_len=16, split=None, rank=r, world_size=3).take(10) for r in range(3)]
    for rank, part in enumerate(parts):
        assert np.array_equal(part, whole[rank::3])
    with pytest.raises(ValueError, match="rank"):
        TokenStream(tok, path, seq_len=16, rank=3, world_size=3)


def test_position_of_other_data_or_settings_is_refused(tmp_path, docs):
    path = _write(tmp_path / "c.jsonl", docs)
    tok = demo_tokenizer()
    stream = TokenStream(tok, path, seq_len=16, split=None)
    stream.take(3)
    saved = stream.state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        TokenStream(tok, path, seq_len=32, split=None).load_state_dict(saved)
    with path.open("a") as handle:  # the file changed: offsets no longer mean the same place
        handle.write(json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(ValueError, match="shards"):
        TokenStream(tok, path, seq_len=16, split=None).load_state_dict(saved)


def test_batches_are_served_in_order_only(tmp_path, docs):
    path = _write(tmp_path / "c.jsonl", docs)
    stream = TokenStream(demo_tokenizer(), path, seq_len=16, split=None)
    assert stream.batch(0, 2).shape == (2, 16) and stream.batch(1, 2).dtype == torch.long
    with pytest.raises(ValueError, match="in order"):
        stream.batch(5, 2)


def test_bad_sources_fail_clearly(tmp_path, docs, monkeypatch):
    tok = demo_tokenizer()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        TokenStream(tok, bad, seq_len=16, split=None).take(1)
    with pytest.raises(ValueError, match=r"bad.jsonl \(byte 17\): not valid JSON"):  # a resumed read
        list(jsonl_texts(bad, start=17))
    with pytest.raises(ValueError, match="string field 'body'"):
        TokenStream(tok, _write(tmp_path / "c.jsonl", docs), seq_len=16, split=None, text_field="body").take(
            1
        )
    with pytest.raises(ValueError, match="no 'body' column"):
        TokenStream(tok, _write(tmp_path / "c.parquet", docs), seq_len=16, text_field="body").take(1)
    with pytest.raises(FileNotFoundError, match="not found"):
        TokenStream(tok, tmp_path / "missing", seq_len=16)
    with pytest.raises(ValueError, match="unknown data format 'csv'"):
        TokenStream(tok, tmp_path, seq_len=16, data_format="csv")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no documents in .*empty.jsonl: its files hold no text"):
        TokenStream(tok, empty, seq_len=16, split=None).take(1)
    with pytest.raises(ValueError, match="its files hold no text"):  # a split asked of an empty file too
        TokenStream(tok, empty, seq_len=16, split="calibration").take(1)
    one = _write(tmp_path / "one.jsonl", docs[:1])  # too few documents for every split to get one
    missing = next(s for s in ("train", "validation", "calibration", "test") if s != split_of(docs[0]))
    with pytest.raises(
        ValueError,
        match=rf"no documents of split '{missing}' among the 1 document\(s\) of .*a hash of its text, about",
    ):
        TokenStream(tok, one, seq_len=16, split=missing).take(1)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="needs internet"):
        TokenStream(tok, "hf:wikitext:wikitext-2-raw-v1", seq_len=16).take(1)


def test_an_unreachable_hub_fails_an_hf_source_at_once(monkeypatch):
    """No offline flag set and no network: `datasets` retried for ~30 s before failing; the hub's probe
    (the one a hub model id gets) answers at once. Port 9 on localhost refuses the connection."""
    import time

    from tests.engine.offline_hub import hub_refusing_connections
    from worker.engine import hub

    hub_refusing_connections(monkeypatch)
    began = time.monotonic()
    with pytest.raises(ValueError, match=r"the hub cannot be reached \(127.0.0.1:9 did not answer"):
        TokenStream(demo_tokenizer(), "hf:wikitext:wikitext-2-raw-v1", seq_len=16).take(1)
    assert time.monotonic() - began < hub.PROBE_TIMEOUT_S + 2


def test_streamed_calibration_is_the_first_blocks_of_the_split(tmp_path, docs):
    path = _write(tmp_path / "c.jsonl", docs * 20)  # every document 20 times: the split gets enough
    tok = demo_tokenizer()
    first = TokenStream(tok, path, seq_len=16, split="calibration", repeat=False).take(10)
    batches = stream_calibration_batches(
        TokenStream(tok, path, seq_len=16, split="calibration", repeat=False), num_samples=10, batch_size=4
    )
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), torch.from_numpy(first))
    assert all(bool(b["attention_mask"].all()) for b in batches)
    with pytest.raises(ValueError, match="10000 needed"):
        stream_calibration_batches(
            TokenStream(tok, path, seq_len=16, split="calibration", repeat=False),
            num_samples=10000,
            batch_size=4,
        )


def test_distillation_on_a_stream_resumes_exactly(tmp_path, docs):
    """20 steps straight == 10 + resume + 10 on streamed data (weights to 1e-6, identical batches)."""
    path = _write(tmp_path / "c.jsonl", docs)
    teacher = tiny_llama(seed=1, layers=3)
    config = DistillConfig(
        steps=20, batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=2, val_every=0, val_batches=1, seed=3
    )
    config = config.model_copy(update={"teacher_correction_steps": 2})
    val = packed("validation", seq_len=16, docs=2)

    def stream():
        return TokenStream(demo_tokenizer(), path, seq_len=16, split=None)

    straight = tiny_llama(seed=2)
    full = distill(straight, teacher, stream(), val, config, checkpoint_dir=tmp_path / "a")

    calls = {"n": 0}

    def stop_at_half() -> bool:  # polled before each of the 2 correction steps, then each training step
        calls["n"] += 1
        return calls["n"] > 2 + 10

    halves = tiny_llama(seed=2)
    first = distill(
        halves, teacher, stream(), val, config, checkpoint_dir=tmp_path / "b", should_stop=stop_at_half
    )
    assert first.stopped and first.steps_completed == 10
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["data_position"]["stream"]
    assert saved["batches"] == 20 and saved["blocks"] == 40  # 10 steps x 2 micro-batches x 2 blocks
    resumed_student = tiny_llama(seed=99)  # weights come from the checkpoint
    second = distill(
        resumed_student, teacher, stream(), val, config, checkpoint_dir=tmp_path / "b", resume=True
    )
    assert second.steps_completed == 20 and not second.stopped
    for a, b in zip(full.history, second.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for (name, p), q in zip(straight.state_dict().items(), resumed_student.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(ValueError, match="in-memory data"):
        distill(
            tiny_llama(seed=2),
            teacher,
            packed(seq_len=16),
            val,
            config,
            checkpoint_dir=tmp_path / "b",
            resume=True,
        )


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_txt_paragraphs_split_alike_at_any_read_chunk(tmp_path, monkeypatch, chunk):
    """Paragraph breaks cut by a read boundary (newline runs, blank lines of spaces) split as read_documents."""

    text = "first para\nline two\n \t \n\n\nsecond é\n\n  indented\n\n\n\nthird\n \n\n \nlast 😀 line\n\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(streaming, "_TXT_CHUNK", chunk)
    read = list(streaming.txt_documents(path, 0))
    assert [doc for doc, _ in read] == read_all_documents(path)
    for index, (_, after) in enumerate(read):  # each saved offset restarts at the next paragraph
        assert [doc for doc, _ in streaming.txt_documents(path, after)] == [
            doc for doc, _ in read[index + 1 :]
        ]


def test_txt_errors_name_the_byte_and_the_paragraph_rule(tmp_path, monkeypatch):
    """A .txt shard: bad bytes are named where they are in the file (it said "near byte 20" of a file
    damaged at byte 526988: the offset within the paragraph); a file with no blank line (one document per
    line) is one document, refused past MAX_TXT_PARAGRAPH instead of held whole; a split with none of it
    says how .txt documents are split (outside big-teacher audit 5-7)."""
    tok = demo_tokenizer()
    good = "".join(f"paragraph {i} with some words in it\n\n" for i in range(2000))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(good.encode() + b"a paragraph with \xff\xfe bytes\n\nand after\n")
    at = len(good.encode()) + len(b"a paragraph with ")
    monkeypatch.setattr(streaming, "_TXT_CHUNK", 4096)
    with pytest.raises(ValueError, match=rf"bad.txt: not UTF-8 text \(near byte {at}\)"):
        list(streaming.txt_documents(bad, 0))

    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"document {i} on one line\n" for i in range(20000)))
    monkeypatch.setattr(streaming, "MAX_TXT_PARAGRAPH", 100_000)
    with pytest.raises(ValueError, match=r"lines.txt: no blank line in .* a .txt document is a paragraph"):
        TokenStream(tok, lines, seq_len=16, split="calibration").take(1)
    monkeypatch.setattr(streaming, "MAX_TXT_PARAGRAPH", 64 << 20)
    missing = next(
        s
        for s in ("train", "validation", "calibration", "test")
        if s != split_of(lines.read_text().strip("\n"))
    )
    with pytest.raises(
        ValueError, match=r"among the 1 document\(s\) .*in a .txt file a document is a paragraph"
    ):
        TokenStream(tok, lines, seq_len=16, split=missing).take(1)


def test_one_list_of_data_formats():
    from typing import get_args

    from backend.data_reading import DataFormat
    from worker.cli import data_options

    assert data_options.DATA_FORMATS == streaming.DATA_FORMATS == get_args(DataFormat)  # shards' tuple
