"""Calibration from a large JSONL: whole-corpus reading (read_documents) against TokenStream, one run.

Writes a corpus of `--mb` MB of varied short documents, then runs each side in its own subprocess (so each
peak is its own) and prints peak RSS above the subprocess's baseline (ru_maxrss after imports and the
tokenizer) and seconds, side by side:

- in memory: `read_documents(path, "calibration")` (every document read, the calibration split kept) and
  `calibration_batches` (the path `prunescope importance --data FILE` takes);
- streamed: `stream_calibration_batches` over `TokenStream(..., split="calibration")`, the first blocks of
  the same split (`--stream`); it stops reading once it has them, so `--tail` puts the calibration-split
  documents only at the end to make it read the whole file too.

Usage:
    python bench/streaming_data_bench.py                 # 400 MB corpus, 64 samples x 256 tokens
    python bench/streaming_data_bench.py --mb 2000 --tail
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIDE = r"""
import json, resource, sys, time
from transformers import AutoTokenizer
from worker.demo import demo_tokenizer_path
from worker.engine.data import calibration_batches, read_documents
from worker.engine.streaming import TokenStream, stream_calibration_batches

side, path, samples, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(str(demo_tokenizer_path()))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if side == "in-memory":
    docs = read_documents(path, "calibration")
    batches = calibration_batches(tok, docs, seq_len=seq_len, num_samples=samples, batch_size=8, seed=0)
else:
    stream = TokenStream(tok, path, seq_len=seq_len, split="calibration", repeat=False)
    batches = stream_calibration_batches(stream, num_samples=samples, batch_size=8)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024, "samples": sum(len(b["input_ids"]) for b in batches)}))
"""


def write_corpus(path: Path, megabytes: int, tail: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from worker.engine.data import split_of

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    target = megabytes << 20
    written, i = 0, 0
    held_back = []
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            text = f"Record {i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(120))
            line = json.dumps({"text": text}) + "\n"
            if tail and split_of(text) == "calibration":
                if len(held_back) < 2000:
                    held_back.append(line)
            else:
                out.write(line)
                written += len(line)
            i += 1
        out.writelines(held_back)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=400)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tail", action="store_true", help="calibration documents only at the end of the file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, args.mb, args.tail)
        size = corpus.stat().st_size / 2**20
        results = {}
        for side in ("in-memory", "streamed"):
            run = subprocess.run(
                [sys.executable, "-c", SIDE, side, str(corpus), str(args.samples), str(args.seq_len)],
                cwd=ROOT,
                env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=True,
            )
            results[side] = json.loads(run.stdout.strip().splitlines()[-1])
    mem, st = results["in-memory"], results["streamed"]
    print(f"corpus {size:.0f} MB JSONL, {args.samples} calibration samples x {args.seq_len} tokens")
    print(f"{'':12}{'peak RSS above baseline':>26}{'seconds':>10}")
    for side, r in results.items():
        print(f"{side:12}{r['peak_mb']:>23.0f} MB{r['seconds']:>10.1f}")
    print(
        f"ratio (in-memory / streamed): memory x{mem['peak_mb'] / max(st['peak_mb'], 1):.1f}, "
        f"time x{mem['seconds'] / max(st['seconds'], 1e-9):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
