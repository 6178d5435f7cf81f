"""Token ids of a corpus, tokenized once: every distillation, evaluation and bake-off branch on the same
data with the same tokenizer reads them back instead of tokenizing again (the 6 MB demo corpus takes
2.5-6 s of CPU each time on a 2-core machine; a user's corpus of a few hundred MB, minutes).

Tokenizing is a pure function of the tokenizer and the text, so the key is a hash of both: the fast
tokenizer's whole definition (vocabulary, merges, normalizer, pre-tokenizer, added tokens) and every
document; a changed file, another tokenizer or another split is another key, and nothing goes stale.
A tokenizer without a Rust definition (a "slow" one) is not cached. Entries are written atomically
(temp file, then rename), a damaged one is tokenized again, and the oldest are removed once the cache
holds more than `MAX_BYTES`. `PRUNESCOPE_TOKEN_CACHE` moves it, `off` turns it off (worker.engine.env).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.engine import atomic, env

log = logging.getLogger(__name__)

MAX_BYTES = 4 << 30  # the cache's size cap: entries beyond it are removed oldest first
VERSION = b"prunescope-token-cache-1"


def tokenizer_key(tokenizer) -> bytes | None:
    """What decides a tokenizer's output without special tokens; None: not a fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return f"{type(tokenizer).__name__}\0".encode() + backend.to_str().encode()


def corpus_key(tokenizer, documents: Sequence[str]) -> str | None:
    definition = tokenizer_key(tokenizer)
    if definition is None:
        return None
    digest = hashlib.sha256(VERSION)
    digest.update(hashlib.sha256(definition).digest())
    for text in documents:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def tokenized(tokenizer, documents: Sequence[str], encode) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets): every document's ids one after another (int64), document i at
    ids[offsets[i]:offsets[i + 1]]. `encode(documents)` tokenizes (a list of id lists per document)
    when the cache has no entry."""
    directory = env.token_cache()
    key = corpus_key(tokenizer, documents) if directory is not None else None
    path = directory / f"{key}.npz" if key is not None else None
    if path is not None:
        hit = _read(path, len(documents))
        if hit is not None:
            return hit
    per_document = encode(documents)
    offsets = np.zeros(len(per_document) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in per_document], out=offsets[1:])
    ids = np.fromiter((t for doc in per_document for t in doc), dtype=np.int64, count=int(offsets[-1]))
    if path is not None:
        _write(path, ids, offsets)
    return ids, offsets


def _read(path: Path, documents: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as entry:
            ids, offsets = entry["ids"].astype(np.int64), entry["offsets"].astype(np.int64)
    except FileNotFoundError:
        return None
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ):  # damaged or from another version: tokenize again
        path.unlink(missing_ok=True)
        return None
    if len(offsets) != documents + 1 or offsets[-1] != len(ids):
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # recently used: kept longest
    return ids, offsets


def _write(path: Path, ids: np.ndarray, offsets: np.ndarray) -> None:
    """Best effort: a full or read-only disk costs the next job a tokenization, never this one."""
    narrow = ids.astype(np.uint32) if len(ids) == 0 or (ids.min() >= 0 and ids.max() < 2**32) else ids
    try:
        path.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                np.savez(out, ids=narrow, offsets=offsets)

        atomic.write_file(path, save)
        _evict(path.parent, keep=path)
    except OSError as exc:  # a cache must not fail the job; logged so a cache that never fills can be found
        log.debug("token cache entry %s not written: %s", path, exc)


def _evict(directory: Path, keep: Path, max_bytes: int = MAX_BYTES) -> None:
    entries = []
    for entry in directory.glob("*.npz"):
        try:
            stat = entry.stat()
        except FileNotFoundError:  # another process removed it
            continue
        entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if entry != keep:
            entry.unlink(missing_ok=True)
            total -= size


__all__ = ["MAX_BYTES", "corpus_key", "tokenized", "tokenizer_key"]
