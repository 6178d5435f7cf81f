"""A large JSONL streams through calibration and distillation with memory bounded whatever its size, and
distillation resumes exactly.

Two corpora, 32 MiB and 512 MiB (16 x more), each of one repeated ~64 KB training document followed by
a few hundred short varied documents; calibration and validation blocks come only from those at the very
end, so both streams read every byte of each file. One subprocess streams the small corpus, then the
large one, and reports its peak RSS (ru_maxrss) after each against its own baseline taken after imports
and model construction: streaming 16 x the data may not raise the peak measurably (memory independent of
the corpus size; measured: both peaks 2 MB above baseline), and no peak, distillation included, may come
near the large file's size (measured: about 70 MB above baseline). Distillation (straight, stopped and
resumed) streams the large corpus. One 2 GiB corpus proved the same in about 3 x the suite's time.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from worker.engine.data import split_of

ROOT = Path(__file__).resolve().parents[2]
SMALL_BYTES, LARGE_BYTES = 32 << 20, 512 << 20
RSS_BOUND_MB = 256  # far below the 512 MB the large file holds (measured: about 60 MB)
GROWTH_BOUND_MB = 16  # what 16 x the data may add to the peak (reading a file whole would add >= 480)

WORKER = r"""
import json, resource, sys, time
import torch
from tests.engine.distill_helpers import demo_tokenizer, tiny_llama
from worker.engine.data import PackedTokens
from worker.engine.distill import DistillConfig, distill
from worker.engine.streaming import TokenStream, stream_calibration_batches

small, large, work = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(1)


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def calibration_and_validation(path):
    calibration = stream_calibration_batches(
        TokenStream(tok, path, seq_len=32, split="calibration", repeat=False), num_samples=8, batch_size=4
    )
    val = PackedTokens.from_blocks(TokenStream(tok, path, seq_len=32, split="validation", repeat=False).take(2))
    return sum(int(b["input_ids"].shape[0]) for b in calibration), val


tok = demo_tokenizer()
teacher, students = tiny_llama(seed=1, layers=2), [tiny_llama(seed=2) for _ in range(2)]
baseline = peak_mb()
began = time.perf_counter()
small_samples, small_val = calibration_and_validation(small)
small_peak = peak_mb()
samples, val = calibration_and_validation(large)
large_peak = peak_mb()
config = DistillConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, val_every=0, val_batches=1)
straight = distill(students[0], teacher, TokenStream(tok, large, seq_len=32), val, config)
calls = []
first = distill(
    students[1], teacher, TokenStream(tok, large, seq_len=32), val, config,
    checkpoint_dir=work, should_stop=lambda: calls.append(1) or len(calls) > 2,
)
resumed = tiny_llama(seed=7)
second = distill(resumed, teacher, TokenStream(tok, large, seq_len=32), val, config, checkpoint_dir=work, resume=True)
drift = max(
    float((p - q).abs().max()) for p, q in zip(students[0].state_dict().values(), resumed.state_dict().values())
)
print(json.dumps({
    "baseline_mb": baseline,
    "small_peak_mb": small_peak,
    "large_peak_mb": large_peak,
    "peak_mb": peak_mb(),
    "seconds": time.perf_counter() - began,
    "calibration_samples": [small_samples, samples],
    "val_blocks": [len(small_val), len(val)],
    "steps": [straight.steps_completed, first.steps_completed, second.steps_completed],
    "losses": [[m["loss"] for m in straight.history], [m["loss"] for m in second.history]],
    "max_weight_drift": drift,
}))
"""


def _write_corpus(path: Path, size: int) -> None:
    """At least `size` bytes of one repeated training document (written in 16 MB chunks), then varied
    short documents."""
    body = "The quick brown fox jumps over the lazy dog while the compiler warns about it. " * 800
    serial = next(i for i in range(1000) if split_of(f"{i} {body}") == "train")
    line = (json.dumps({"text": f"{serial} {body}"}) + "\n").encode()
    lines = -(-size // len(line))
    per_chunk = (16 << 20) // len(line)
    with path.open("wb") as handle:
        for start in range(0, lines, per_chunk):
            handle.write(line * min(per_chunk, lines - start))
        tail = (
            f"Document {i}: the {i % 7}th fox met {i * 3} lazy dogs near river {i % 11}." for i in range(600)
        )
        handle.write("".join(json.dumps({"text": t}) + "\n" for t in tail).encode())


def _corpus_dir(tmp_path: Path) -> Path:
    """/dev/shm when it has room (writing 560 MB to disk took seconds of the test), else `tmp_path`. Pages
    of a file are not the RSS of a process that reads it, wherever the file lives."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * LARGE_BYTES:
        return Path(tempfile.mkdtemp(dir=shm, prefix="prunescope-stream-"))
    return tmp_path


def test_large_jsonl_streams_with_rss_independent_of_its_size_and_resumes_exactly(tmp_path):
    folder = _corpus_dir(tmp_path)
    small, large = folder / "small.jsonl", folder / "large.jsonl"
    try:
        _write_corpus(small, SMALL_BYTES)
        _write_corpus(large, LARGE_BYTES)
        sizes_mb = [small.stat().st_size / 2**20, large.stat().st_size / 2**20]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        run = subprocess.run(
            [sys.executable, "-c", WORKER, str(small), str(large), str(tmp_path / "work")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        small.unlink(missing_ok=True)
        large.unlink(missing_ok=True)
        if folder != tmp_path:
            folder.rmdir()
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\n{sizes_mb[0]:.0f} MB then {sizes_mb[1]:.0f} MB corpus: {report}")
    assert sizes_mb[0] >= 32 and sizes_mb[1] >= 512
    assert report["calibration_samples"] == [8, 8] and report["val_blocks"] == [2, 2]
    assert report["small_peak_mb"] - report["baseline_mb"] < RSS_BOUND_MB
    assert report["large_peak_mb"] - report["small_peak_mb"] < GROWTH_BOUND_MB  # streaming: same memory
    assert report["peak_mb"] - report["baseline_mb"] < RSS_BOUND_MB  # distillation included
    assert report["steps"] == [4, 2, 4]
    straight, resumed = report["losses"]
    assert resumed == pytest.approx(straight, abs=1e-6)
    assert report["max_weight_drift"] <= 1e-6
