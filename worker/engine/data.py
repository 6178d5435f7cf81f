"""Text sources, deterministic splits, calibration batches and packed training tokens.

One module for every place the engine reads text (importance calibration, distillation, evaluation,
teacher training), so the same split rules hold everywhere: calibration and evaluation text never overlap.

Sources accepted by `read_documents(source, split)`:

- ``"demo"``: the corpus shipped in ``worker/demo/corpus`` (fixed split files, see its LICENSE.md).
- a ``.txt`` file: documents are paragraphs separated by one or more blank lines.
- a ``.jsonl`` / ``.jsonl.gz`` file: one JSON object per line, the document in field ``"text"``.
- a ``.parquet`` file: the documents in column ``"text"``.
- a directory: every ``.txt``, ``.jsonl``, ``.jsonl.gz`` and ``.parquet`` file below it, in sorted path order.
- ``"hf:<dataset_id>[:<config>]"``: a Hugging Face dataset via ``datasets`` (needs internet); all of its
  splits are pooled and re-split by our own rule so the four splits never overlap.

For every source except the demo corpus a document's split is a pure function of its text (a SHA-256
bucket), so the same document always lands in the same split, whatever file it came from.

Corpora too large to hold in memory are read with `worker.engine.streaming.TokenStream` instead (the same
sources and split rule, documents read and tokenised lazily, an exact resumable position).

Torch is imported only inside the functions that return tensors, so torch-free callers may import
`read_documents` and `split_of`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from worker.engine import atomic
from worker.engine.hub import check_dataset_reachable, hf_dataset_ref
from worker.engine.shards import DATA_SUFFIXES, data_suffix

SPLITS = ("train", "validation", "calibration", "test")
# Fractions (out of 100 hash buckets) per split for sources without fixed split files.
SPLIT_BUCKETS = {
    "train": range(0, 85),
    "validation": range(85, 90),
    "calibration": range(90, 95),
    "test": range(95, 100),
}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def split_of(text: str) -> str:
    """The split a document belongs to (deterministic: SHA-256 of its UTF-8 text, 100 buckets)."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 100
    for name, buckets in SPLIT_BUCKETS.items():
        if bucket in buckets:
            return name
    raise AssertionError("SPLIT_BUCKETS must cover 0..99")


def read_documents(source: str, split: str) -> list[str]:
    """The documents of one split of a source, in a stable order (see the module docstring)."""
    check_split(split)
    source = str(source)
    if source == "demo":
        from worker.demo import read_demo_split

        return read_demo_split(split)
    if source.startswith("hf:"):
        documents = _read_hf(source[3:])
    else:
        documents = read_all_documents(source)
    chosen = [doc for doc in documents if split_of(doc) == split]
    if not chosen:
        raise ValueError(
            f"split {split!r} of {source} is empty ({len(documents)} documents in all; about "
            f"{len(SPLIT_BUCKETS[split])}% go to it): use a source with more documents"
        )
    return chosen


def read_all_documents(path: str | os.PathLike) -> list[str]:
    """Every non-empty document of a local file or directory, unsplit."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_suffix(p))
        if not files:
            raise ValueError(f"no {', '.join(DATA_SUFFIXES)} files in directory {path}")
        return [doc for f in files for doc in _read_file(f)]
    return _read_file(path)


def _read_file(path: Path) -> list[str]:
    suffix = data_suffix(path)
    if suffix == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:  # a binary file named .txt: say which, not the codec's words
            raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        documents = [p.strip("\n") for p in _PARAGRAPH_BREAK.split(text)]
    elif suffix in (".jsonl", ".jsonl.gz"):
        documents = read_jsonl(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ValueError(f"{path}: parquet file has no 'text' column (columns: {table.column_names})")
        documents = [t for t in table.column("text").to_pylist() if isinstance(t, str)]
    else:
        raise ValueError(f"unsupported data file {path}: expected one of {', '.join(DATA_SUFFIXES)}")
    return [doc for doc in documents if doc.strip()]


def read_jsonl(path: str | os.PathLike) -> list[str]:
    """The ``"text"`` field of every line of a .jsonl or .jsonl.gz file."""
    return [text for text, _ in jsonl_texts(path)]


def jsonl_texts(
    path: str | os.PathLike, start: int = 0, text_field: str = "text"
) -> Iterator[tuple[str, int]]:
    """(text, byte offset after its line) of every non-blank line of a .jsonl or .jsonl.gz file, from
    byte `start` (.gz: of the uncompressed bytes; a stream resumes there). The one JSONL reader: a line
    that is not an object with a string `text_field` is an error naming the line (from the start) or
    its byte offset (from `start`)."""
    path = Path(path)
    try:
        yield from _jsonl_records(path, start, text_field)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # not gzip, or cut short: name the file
        raise ValueError(f"{path}: damaged gzip file ({exc})") from None


def _jsonl_records(path: Path, start: int, text_field: str) -> Iterator[tuple[str, int]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        handle.seek(start)  # gzip: decompresses up to the offset (no index), still O(1) memory
        offset = start
        for number, line in enumerate(handle, 1):
            at, offset = offset, offset + len(line)
            if not line.strip():
                continue
            where = f"{path}:{number}" if start == 0 else f"{path} (byte {at})"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            except UnicodeDecodeError:  # bytes json.loads cannot decode: a binary file
                raise ValueError(f"{where}: not UTF-8 text") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{where}: expected an object with a string field {text_field!r}")
            yield text, offset


def write_jsonl_gz(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as gzip'd JSON lines, byte-for-byte reproducible (mtime 0), atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as text:
                for record in records:
                    text.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")

    atomic.write_file(Path(path), write)


def _read_hf(spec: str) -> list[str]:
    dataset_id, config = hf_dataset_ref(spec)
    check_dataset_reachable(spec, "load")
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, config)
    except Exception as exc:  # network, auth, missing dataset: all user-facing
        raise ValueError(f"cannot load hf:{spec} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    documents = []
    for split_name in sorted(loaded.keys()):
        part = loaded[split_name]
        if "text" not in part.column_names:
            raise ValueError(f"hf:{spec} split {split_name} has no 'text' column ({part.column_names})")
        documents.extend(t for t in part["text"] if isinstance(t, str) and t.strip())
    return documents


def token_ids(tokenizer, documents: Sequence[str]) -> list[list[int]]:
    """Token ids per document, no special tokens (packing adds EOS itself)."""
    if not documents:
        return []
    encoded = tokenizer(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
    return [list(ids) for ids in encoded]


def _tokenized(tokenizer, documents: Sequence[str]):
    """(ids, offsets) of every document (worker.engine.token_cache: tokenized once per text and tokenizer)."""
    from worker.engine.token_cache import tokenized

    return tokenized(tokenizer, documents, lambda docs: token_ids(tokenizer, docs))


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def calibration_batches(
    tokenizer,
    documents: Sequence[str],
    *,
    seq_len: int,
    num_samples: int,
    batch_size: int,
    seed: int,
    split: str = "calibration",
) -> list[dict]:
    """`num_samples` windows of at most `seq_len` tokens, in batches of `batch_size`.

    Every document is cut into consecutive windows of `seq_len` tokens (its last, shorter window kept);
    a seeded permutation picks `num_samples` of them. Short windows are right-padded with the pad id and
    their padding is 0 in `attention_mask`. Raises ValueError when fewer windows exist than requested,
    naming `split` (the documents' split: a search scores the validation one).
    """
    import numpy as np
    import torch

    if seq_len < 2 or num_samples < 1 or batch_size < 1:
        raise ValueError("seq_len must be >= 2 and num_samples, batch_size >= 1")
    ids, offsets = _tokenized(tokenizer, documents)
    windows = [
        ids[start : min(start + seq_len, end)].tolist()
        for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())
        for start in range(begin, end, seq_len)
        if end - start >= 2  # a one-token window has nothing to predict
    ]
    if len(windows) < num_samples:
        raise ValueError(
            f"only {len(windows)} {split} windows of {seq_len} tokens in {len(documents)} documents; "
            f"ask for at most {len(windows)} samples or use a shorter seq_len"
        )
    order = np.random.default_rng(seed).permutation(len(windows))[:num_samples]
    pad = _pad_id(tokenizer)
    batches = []
    for first in range(0, num_samples, batch_size):
        chosen = [windows[i] for i in order[first : first + batch_size]]
        width = max(len(w) for w in chosen)
        input_ids = torch.full((len(chosen), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, window in enumerate(chosen):
            input_ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
            attention_mask[row, : len(window)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return batches


class PackedTokens:
    """Documents tokenized, each followed by EOS, concatenated and cut into blocks of `seq_len`.

    The tail that does not fill a block is dropped. `batch(step, batch_size, seed)` is a pure function of
    its arguments: sample i = step * batch_size + j is block perm_e[i mod N] of epoch e = i // N, with a
    fresh seeded permutation per epoch, so training resumes exactly from any step.
    """

    def __init__(self, tokenizer, documents: Sequence[str], seq_len: int):
        import numpy as np

        if seq_len < 2:
            raise ValueError("seq_len must be >= 2")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token to separate packed documents")
        ids, offsets = _tokenized(tokenizer, documents)
        stream = np.insert(ids, offsets[1:], int(eos))  # each document followed by EOS
        self.seq_len = int(seq_len)
        self.num_documents = len(documents)
        count = len(stream) // self.seq_len
        if count == 0:
            raise ValueError(
                f"{len(stream)} tokens in {len(documents)} documents do not fill one block of {seq_len} tokens"
            )
        self.blocks = stream[: count * self.seq_len].reshape(count, self.seq_len)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_blocks(cls, blocks) -> PackedTokens:
        """Packed tokens over ready-made blocks [N, seq_len] (e.g. the first blocks of a `TokenStream`)."""
        import numpy as np

        blocks = np.asarray(blocks, dtype=np.int64)
        if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
            raise ValueError(f"expected a non-empty [N, seq_len >= 2] array of blocks, got {blocks.shape}")
        packed = cls.__new__(cls)
        packed.seq_len = int(blocks.shape[1])
        packed.num_documents = None  # unknown: the blocks came packed
        packed.blocks = blocks
        packed._permutations = {}
        return packed

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.blocks.size)

    def _permutation(self, seed: int, epoch: int):
        import numpy as np

        key = (int(seed), int(epoch))
        if key not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([int(seed), int(epoch)]).permutation(len(self))
        return self._permutations[key]

    def indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """Block indices of training batch `step` (see the class docstring)."""
        if step < 0 or batch_size < 1:
            raise ValueError("step must be >= 0 and batch_size >= 1")
        n = len(self)
        first = step * batch_size
        return [int(self._permutation(seed, i // n)[i % n]) for i in range(first, first + batch_size)]

    def batch(self, step: int, batch_size: int, seed: int = 0):
        """LongTensor [batch_size, seq_len] for training step `step`."""
        import torch

        return torch.from_numpy(self.blocks[self.indices(step, batch_size, seed)].copy())

    def sequential(self, batch_size: int, limit: int | None = None):
        """Blocks in order (for evaluation), as LongTensors of at most `batch_size` rows."""
        import torch

        total = len(self) if limit is None else min(int(limit), len(self))
        for first in range(0, total, batch_size):
            yield torch.from_numpy(self.blocks[first : min(first + batch_size, total)].copy())
