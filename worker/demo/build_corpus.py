"""Build the demo corpus and its tokenizer from the CPython standard library sources (PSF-2.0).

Deterministic: the same stdlib tree gives byte-identical split files and the same corpus hash.
One document = one source file. Test suites, generated tables (encodings, pydoc_data) and a few large
GUI/legacy packages are left out so the corpus is a few MB of ordinary library code. A document's split
is `worker.engine.data.split_of(text)`, the same rule as for every other source.

    python -m worker.demo.build_corpus [--stdlib DIR] [--out worker/demo]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import sysconfig
from pathlib import Path

from worker.engine.data import SPLITS, split_of, write_jsonl_gz

EXCLUDED_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "__pycache__",
    "encodings",  # generated codec tables
    "pydoc_data",  # generated help text
    "idlelib",
    "turtledemo",
    "lib2to3",
    "tkinter",
    "distutils",
    "ensurepip",
    "__phello__",
}
MIN_BYTES = 200  # skip near-empty __init__ files
MAX_BYTES = 120_000  # skip the few huge modules so no single file dominates
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")  # ids 0, 1, 2
MODEL_MAX_LENGTH = 512


def select_files(stdlib: Path) -> list[Path]:
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in relative.parts[:-1]):
            continue
        if path.name.startswith("test_") or not MIN_BYTES <= path.stat().st_size <= MAX_BYTES:
            continue
        files.append(path)
    return files


def build_records(stdlib: Path) -> dict[str, list[dict]]:
    """{split: [{"id": relative path, "text": source}]}, duplicates (same text) kept once."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for path in select_files(stdlib):
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        splits[split_of(text)].append({"id": path.relative_to(stdlib).as_posix(), "text": text})
    return splits


def corpus_hash(splits: dict[str, list[dict]]) -> str:
    """SHA-256 over every split's canonical JSON lines (independent of gzip's byte output)."""
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(f"[{name}]\n".encode())
        for record in splits[name]:
            digest.update((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return digest.hexdigest()


def train_tokenizer(documents: list[str], out_dir: Path) -> None:
    """Byte-level BPE trained on the train split only, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def build(stdlib: Path, out: Path, *, tokenizer: bool = True) -> dict:
    splits = build_records(stdlib)
    corpus_dir = out / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl_gz(corpus_dir / f"{name}.jsonl.gz", splits[name])
    manifest = {
        "source": "CPython standard library sources (*.py), PSF-2.0",
        "python_version": sys.version.split()[0],
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "min_bytes": MIN_BYTES,
        "max_bytes": MAX_BYTES,
        "split_rule": "worker.engine.data.split_of: sha256(text) % 100 -> train 0-84, validation 85-89, "
        "calibration 90-94, test 95-99",
        "corpus_hash": corpus_hash(splits),
        "splits": {
            name: {
                "documents": len(records),
                "characters": sum(len(r["text"]) for r in records),
                "compressed_bytes": (corpus_dir / f"{name}.jsonl.gz").stat().st_size,
            }
            for name, records in splits.items()
        },
    }
    (corpus_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if tokenizer:
        train_tokenizer([r["text"] for r in splits["train"]], out / "tokenizer")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-tokenizer", action="store_true", help="only rewrite the corpus files")
    args = parser.parse_args(argv)
    manifest = build(args.stdlib, args.out, tokenizer=not args.no_tokenizer)
    print(json.dumps(manifest["splits"], indent=2))
    print("corpus_hash", manifest["corpus_hash"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
