"""The offline demo: a small corpus, its tokenizer and a teacher trained on it, all shipped in the repo.

The app, the CLI and the examples default to these so that everything works with no internet.
`build_corpus.py` rebuilds the corpus and tokenizer; `prunescope train-teacher` retrains the teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
CORPUS_DIR = DEMO_DIR / "corpus"
TOKENIZER_DIR = DEMO_DIR / "tokenizer"
TEACHER_DIR = DEMO_DIR / "teacher"


def demo_corpus_path(split: str) -> Path:
    """The compressed JSON-lines file of one split of the demo corpus."""
    from worker.engine.data import check_split

    return CORPUS_DIR / f"{check_split(split)}.jsonl.gz"


def read_demo_split(split: str) -> list[str]:
    """The documents (one stdlib source file each) of one split of the demo corpus."""
    from worker.engine.data import read_jsonl

    path = demo_corpus_path(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"demo corpus split missing: {path} (rebuild with python -m worker.demo.build_corpus)"
        )
    return read_jsonl(path)


def corpus_manifest() -> dict:
    """Counts, sizes and the content hash of the demo corpus (written by build_corpus)."""
    return json.loads((CORPUS_DIR / "MANIFEST.json").read_text())


def demo_tokenizer_path() -> Path:
    """Directory of the demo byte-level BPE tokenizer (loadable with `AutoTokenizer.from_pretrained`)."""
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"demo tokenizer missing: {TOKENIZER_DIR} (rebuild with python -m worker.demo.build_corpus)"
        )
    return TOKENIZER_DIR


def demo_teacher_path() -> Path:
    """Directory of the demo teacher (vanilla `AutoModelForCausalLM.from_pretrained`, tokenizer included)."""
    if not (TEACHER_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"demo teacher missing: {TEACHER_DIR} (train it with prunescope train-teacher)"
        )
    return TEACHER_DIR
