"""`prunescope distill --stream` and `prunescope importance --stream`: streamed corpora end to end."""

import json

import numpy as np
import pytest
import torch

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, tiny_llama
from worker.cli import main
from worker.engine.data import write_jsonl_gz
from worker.engine.importance import ImportanceResult, compute_importance
from worker.engine.loading import MANIFEST_FILE, load_model, save_model
from worker.engine.streaming import TokenStream, stream_calibration_batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Saved tiny teacher and student, and a folder of two shards whose text is in field 'content'."""
    root = tmp_path_factory.mktemp("stream_cli")
    tok = demo_tokenizer()
    save_model(tiny_llama(seed=1, layers=3), tok, root / "teacher", {"kind": "test-teacher"})
    save_model(tiny_llama(seed=2, layers=2), tok, root / "student", {"kind": "test-student"})
    lines = [ln for doc in demo_documents("train", 6) for ln in doc.split("\n") if len(ln.strip()) > 20]
    docs = ["\n".join(lines[i : i + 4]) for i in range(0, min(len(lines), 1600), 4)]
    shards = root / "shards"
    shards.mkdir()
    half = len(docs) // 2
    (shards / "part-0.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs[:half]))
    write_jsonl_gz(shards / "part-1.jsonl.gz", ({"content": d} for d in docs[half:]))
    return root, shards


STREAM = ["--stream", "--data-format", "jsonl", "--text-field", "content"]


def _distill(root, shards, out, *extra):
    return [
        "distill",
        str(root / "student"),
        "--teacher",
        str(root / "teacher"),
        "--data",
        str(shards),
        *STREAM,
        "-o",
        str(out),
        *("--steps 4 --batch-size 2 --grad-accum 2 --seq-len 32 --lr 1e-3 --warmup 1".split()),
        *("--val-every 2 --val-batches 1 --checkpoint-every 2".split()),
        *extra,
    ]


def test_distill_streams_and_resumes_from_the_saved_position(setup, capsys):
    root, shards = setup
    out, stop = root / "distilled", root / "STOP"
    stop.touch()
    assert main(_distill(root, shards, out, "--stop-file", str(stop))) == 3
    stop.unlink()
    assert main(_distill(root, shards, out, "--resume")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4
    saved = torch.load(root / "distilled.work" / "checkpoint.pt", weights_only=True)["data_position"][
        "stream"
    ]
    assert (saved["batches"], saved["blocks"], saved["fingerprint"]["text_field"]) == (8, 16, "content")
    result = json.loads((out / "distill_result.json").read_text())
    stream = result["manifest"]["data"]["stream"]
    assert (stream["split"], stream["text_field"], stream["shards"]) == ("train", "content", 2)
    assert json.loads((out / MANIFEST_FILE).read_text())["steps"] == 4

    # Other blocks of the same data: the checkpoint's position does not fit them, a one-line error.
    argv = _distill(root, shards, root / "again", "--resume", "--work-dir", str(root / "distilled.work"))
    argv[argv.index("--seq-len") + 1] = "24"
    assert main(argv) == 2
    assert "cannot resume the data stream: seq_len is 24 now but was 32" in capsys.readouterr().err


def test_importance_calibrates_on_the_first_streamed_blocks(setup, tmp_path, capsys):
    root, shards = setup
    out = tmp_path / "run"
    argv = ["importance", str(root / "teacher"), "--data", str(shards), *STREAM]
    argv += ["--samples", "6", "--seq-len", "24", "--batch-size", "4", "-o", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    result = ImportanceResult.load(out)
    assert result.samples == 6 and result.manifest["data_stream"]["split"] == "calibration"
    model, tok = load_model(root / "teacher")
    stream = TokenStream(tok, shards, seq_len=24, split="calibration", text_field="content", repeat=False)
    direct = compute_importance(model, stream_calibration_batches(stream, num_samples=6, batch_size=4))
    for name, array in direct.arrays.items():
        np.testing.assert_allclose(result.arrays[name], array, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text-field", "content"], "apply to streamed data: add --stream"),
        (["--hf-dataset", "wikitext", "--data", "{shards}"], "either --data or --hf-dataset"),
        (["--hf-dataset", "wikitext:wikitext-2-raw-v1"], "needs internet"),
        (["--data", "{shards}", "--stream", "--data-format", "parquet"], "no .parquet files"),
        (["--data", "{tmp}/missing", "--stream"], "data source not found"),
    ],
)
@pytest.mark.parametrize("command", ["importance", "distill"])
def test_bad_data_options_are_one_line_errors(setup, tmp_path, capsys, monkeypatch, command, extra, message):
    root, shards = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    extra = [a.format(shards=shards, tmp=tmp_path) for a in extra]
    out = tmp_path / "out"
    args = [command, str(root / ("teacher" if command == "importance" else "student"))]
    args += ["--teacher", str(root / "teacher")] if command == "distill" else []
    assert main([*args, *extra, "--seq-len", "24", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"prunescope {command}: error:") and message in err, err
    assert not out.exists()
