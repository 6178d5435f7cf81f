"""Token streams: documents read lazily from corpora of any size, tokenised on the fly, packed into blocks.

`TokenStream(tokenizer, source, seq_len=..., split=...)` reads one document at a time (a line of JSONL, a
paragraph of text, a row of parquet, a record of a streamed `datasets` dataset), tokenises small groups of
them, appends EOS after each document and cuts the concatenation into blocks of `seq_len` tokens. Memory
is bounded by one read-ahead group of documents plus the token buffer, whatever the corpus size.

Sources (the same spellings as `worker.engine.data.read_documents`):

- ``"demo"``: the split file of the shipped demo corpus (its own fixed splits).
- a file or a folder of shards: ``.txt`` (paragraphs), ``.jsonl`` / ``.jsonl.gz`` (field `text_field`),
  ``.parquet`` (column `text_field`); a folder is read in sorted path order. Documents are kept when
  `split_of(text) == split` (the same hash rule as the in-memory reader), or all of them with split=None.
- ``"hf:<dataset_id>[:<config>]"``: ``datasets.load_dataset(..., streaming=True)`` (needs internet; a clear
  error offline), filtered by the same hash rule.

The position in the stream (`state_dict()`: epoch, shard index, byte offset / row index within the shard,
the tokens read but not yet emitted, the count of blocks and batches served) is a small JSON-able dict,
so a distillation checkpoint stores it and a resumed run continues exactly where it stopped.

Blocks come in file order (no shuffling: shuffle shards beforehand if the corpus is sorted). With
`world_size > 1` a stream keeps every world_size-th block, starting at `rank`, so ranks never overlap.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worker.engine.data import SPLIT_BUCKETS, check_split, jsonl_texts, split_of, token_ids
from worker.engine.hub import check_dataset_reachable, hf_dataset_ref
from worker.engine.shards import DATA_FORMATS, format_of, list_shards

# Documents tokenised per tokenizer call (one call per document is several times slower), capped in
# characters too, since a tokenizer's per-call working memory grows with the text it is given.
READ_AHEAD = 32
READ_AHEAD_CHARS = 1 << 18
_PARAGRAPH_BREAK = re.compile(rb"\n[ \t]*\n+")  # data.py's paragraph rule, on bytes so offsets are bytes
_TXT_CHUNK = 1 << 20


# ---- documents of one shard, from a position, each with the position just after it ---------------------


# A .txt document is a paragraph: one larger than this is a file without blank lines (one document per
# line reads as one huge document), refused rather than held whole in memory.
MAX_TXT_PARAGRAPH = 64 << 20


class _NotUtf8(Exception):
    def __init__(self, offset: int):
        self.offset = offset  # in the file


def txt_documents(path: Path, start: int) -> Iterator[tuple[str, int]]:
    """Paragraphs (split as `data.read_documents` splits .txt files) and the byte offset after each."""
    try:
        yield from _txt_paragraphs(path, start)
    except _NotUtf8 as exc:  # a binary file named .txt: say which, not the codec's words
        raise ValueError(f"{path}: not UTF-8 text (near byte {exc.offset})") from None


def _txt_paragraphs(path: Path, start: int) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as handle:
        handle.seek(start)
        base, pending = start, b""  # `pending` starts at file offset `base`
        while True:
            chunk = handle.read(_TXT_CHUNK)
            # Only the new bytes (and the whitespace before them, where a break may have begun) are
            # searched again: rescanning the whole pending paragraph made a long one quadratic.
            scan = len(pending.rstrip(b" \t\n"))
            pending += chunk
            cut = 0
            for match in _PARAGRAPH_BREAK.finditer(pending, scan):
                if chunk and match.end() == len(pending):
                    break  # the break may go on in the next chunk
                yield from _paragraph(pending[cut : match.start()], base + cut, base + match.end())
                cut = match.end()
            if not chunk:
                yield from _paragraph(pending[cut:], base + cut, base + len(pending))
                return
            base, pending = base + cut, pending[cut:]
            if len(pending) > MAX_TXT_PARAGRAPH:
                raise ValueError(
                    f"{path}: no blank line in the {len(pending) >> 20} MiB from byte {base}: a .txt document "
                    "is a paragraph (text between blank lines), so a file of one document per line is one "
                    'huge document; separate documents by blank lines, or write them as .jsonl ({"text": ...})'
                )


def _paragraph(raw: bytes, begin: int, after: int) -> Iterator[tuple[str, int]]:
    """The paragraph `raw` (file bytes `begin` to `after`, its break included) as text, if not blank."""
    try:
        text = raw.decode("utf-8").strip("\n")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(begin + exc.start) from None
    if text.strip():
        yield text, after


def parquet_documents(path: Path, start: int, text_field: str) -> Iterator[tuple[str, int]]:
    """(text, row index after it) from row `start`, read in record batches (never the whole table)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError; it names no file
        raise ValueError(f"{path}: not a parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path}: parquet file has no {text_field!r} column (columns: {names})")
    first_group, row = 0, 0
    while first_group < parquet.num_row_groups:  # skip whole row groups before `start`
        rows = parquet.metadata.row_group(first_group).num_rows
        if row + rows > start:
            break
        first_group, row = first_group + 1, row + rows
    groups = list(range(first_group, parquet.num_row_groups))
    if not groups:
        return
    for batch in parquet.iter_batches(batch_size=256, row_groups=groups, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if row > start and isinstance(value, str) and value.strip():
                yield value, row


def hf_documents(spec: str, start: int, text_field: str, hf_split: str) -> Iterator[tuple[str, int]]:
    """(text, record index after it) of a `datasets` dataset read with streaming=True (online only)."""
    dataset_id, config = hf_dataset_ref(spec)
    check_dataset_reachable(spec, "stream")
    import datasets

    try:
        stream = datasets.load_dataset(dataset_id, config, split=hf_split, streaming=True)
        if start:
            stream = stream.skip(start)
        records = iter(stream)
        first = next(records, None)
    except Exception as exc:  # network, auth, missing dataset or split: all user-facing
        raise ValueError(f"cannot stream hf:{spec} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    index = start
    for record in itertools.chain([] if first is None else [first], records):
        index += 1
        text = record.get(text_field)
        if isinstance(text, str) and text.strip():
            yield text, index


# ---- the stream -----------------------------------------------------------------------------------------


def is_token_stream(data) -> bool:
    """Whether training data is a `TokenStream` (read lazily, with a position to save and restore and
    sharded by rank) rather than in-memory blocks (`data.PackedTokens`)."""
    return isinstance(data, TokenStream)


class EndOfStream(Exception):
    """A non-repeating stream has no more documents."""


class TokenStream:
    """Packed blocks of `seq_len` tokens read lazily from `source` (see the module docstring).

    `take(n)` returns the next n blocks of this rank as an int64 array; `batch(index, batch_size)` the
    next batch as a LongTensor, with `index` checked against the batches already served (the distillation
    loop asks for batch step * grad_accum + micro: a stream serves them in order only). With
    `repeat=True` the stream starts over (epoch + 1) at the end of the data, the token buffer carried on.
    """

    def __init__(
        self,
        tokenizer,
        source: str | os.PathLike,
        *,
        seq_len: int,
        split: str | None = "train",
        text_field: str = "text",
        data_format: str = "auto",
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = True,
        hf_split: str = "train",
    ):
        if seq_len < 2:
            raise ValueError("seq_len must be >= 2")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank {rank}, world_size {world_size}")
        if not text_field:
            raise ValueError("text_field must not be empty")
        if split is not None:
            check_split(split)
        if data_format not in DATA_FORMATS:
            raise ValueError(
                f"unknown data format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to separate packed documents")
        self._init = dict(
            source=source,
            seq_len=seq_len,
            split=split,
            text_field=text_field,
            data_format=data_format,
            rank=rank,
            world_size=world_size,
            repeat=repeat,
            hf_split=hf_split,
        )
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.source = str(source)
        self.seq_len, self.split, self.text_field = int(seq_len), split, text_field
        self.rank, self.world_size, self.repeat, self.hf_split = rank, world_size, repeat, hf_split
        if self.source == "demo":
            from worker.demo import demo_corpus_path

            if split is None:
                raise ValueError("the demo corpus is read one split at a time: give a split")
            self.shards: list[str | Path] = [demo_corpus_path(split)]
            self._keep = None  # the demo corpus ships its own split files
        elif self.source.startswith("hf:"):
            self.shards = [self.source]  # records, not files: data_format does not apply
            self._keep = split
        else:
            self.shards = list_shards(self.source, data_format)
            self._keep = split
        # A format named by the user reads every shard as it, whatever a lone file's suffix (notes.md
        # as txt); "auto" goes by each file's suffix.
        self._format = None if data_format == "auto" or self.source == "demo" else data_format
        self._fingerprint = self._make_fingerprint()
        self._reset({"epoch": 0, "shard": 0, "position": 0, "buffer": [], "blocks": 0, "batches": 0})

    # -- position ------------------------------------------------------------------------------------

    def _make_fingerprint(self) -> dict:
        """What must be unchanged for a saved position to mean the same place in the data."""
        shards = [[str(s), s.stat().st_size] if isinstance(s, Path) else [str(s), None] for s in self.shards]
        return {
            "source": self.source,
            "shards": shards,
            "split": self.split,
            "text_field": self.text_field,
            "seq_len": self.seq_len,
            "rank": self.rank,
            "world_size": self.world_size,
            "eos": self.eos,
        }

    def _reset(self, state: dict) -> None:
        self._epoch, self._shard, self._position = state["epoch"], state["shard"], state["position"]
        self._buffer, self._head = list(state["buffer"]), 0
        self.blocks_read, self.batches_served = state["blocks"], state["batches"]
        self._documents = None  # reopened lazily from the position
        self._pending: deque = deque()

    def state_dict(self) -> dict:
        """The position in the stream: plain ints, strings and lists (JSON-able)."""
        return {
            "epoch": self._epoch,
            "shard": self._shard,
            "position": self._position,
            "buffer": [int(t) for t in self._buffer[self._head :]],
            "blocks": self.blocks_read,
            "batches": self.batches_served,
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by `state_dict` (of a stream over the same data and settings)."""
        saved = state.get("fingerprint", {})
        for key, value in self._fingerprint.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"cannot resume the data stream: {key} is {_short(value)} now but was {_short(saved.get(key))} "
                    "when the position was saved"
                )
        self._reset(state)

    def restarted(self) -> TokenStream:
        """A new stream over the same data and settings, at the beginning."""
        return TokenStream(self.tokenizer, **self._init)

    def describe(self) -> dict:
        return {k: (str(v) if k == "source" else v) for k, v in self._init.items()} | {
            "shards": len(self.shards)
        }

    # -- reading -------------------------------------------------------------------------------------

    def _read_shard(self, index: int, start: int) -> Iterator[tuple[str, int]]:
        shard = self.shards[index]
        if isinstance(shard, str):
            return hf_documents(shard[3:], start, self.text_field, self.hf_split)
        kind = self._format or format_of(shard)
        if kind == "txt":
            return txt_documents(shard, start)
        if kind == "parquet":
            return parquet_documents(shard, start, self.text_field)
        return ((t, after) for t, after in jsonl_texts(shard, start, self.text_field) if t.strip())

    def _iter_documents(self, epoch: int, shard: int, position: int):
        """(text, epoch, shard, position after it) from a position on, over epochs when repeating."""
        from_start = shard == 0 and position == 0
        while True:
            found = seen = 0
            for index in range(shard, len(self.shards)):
                for text, after in self._read_shard(index, position if index == shard else 0):
                    seen += 1
                    if self._keep is None or split_of(text) == self._keep:
                        found += 1
                        yield text, epoch, index, after
            if from_start and not found:
                raise ValueError(self._nothing_read(seen))
            if not self.repeat:
                return
            epoch, shard, position, from_start = epoch + 1, 0, 0, True

    def _nothing_read(self, seen: int) -> str:
        """Why a whole pass over the source gave no document of this stream's split (`seen`: documents
        of any split)."""
        if not seen:
            return f"no documents in {self.source}: its files hold no text"
        share = len(SPLIT_BUCKETS[self._keep])  # as read_documents says it, unstreamed
        txt = any(not isinstance(s, str) and (self._format or format_of(s)) == "txt" for s in self.shards)
        paragraphs = "; in a .txt file a document is a paragraph, text between blank lines" if txt else ""
        return (
            f"no documents of split {self._keep!r} among the {seen} document(s) of {self.source} (each document "
            f"goes to a split by a hash of its text, about {share}% to this one{paragraphs}): use a source with "
            "more documents"
        )

    def _next_document(self) -> tuple[list[int], int, int, int]:
        if not self._pending:
            if self._documents is None:
                self._documents = self._iter_documents(self._epoch, self._shard, self._position)
            group, chars = [], 0
            for document in self._documents:
                group.append(document)
                chars += len(document[0])
                if len(group) == READ_AHEAD or chars >= READ_AHEAD_CHARS:
                    break
            if not group:
                raise EndOfStream
            ids = token_ids(self.tokenizer, [text for text, *_ in group])
            self._pending.extend((tokens, *where) for tokens, (_, *where) in zip(ids, group))
        return self._pending.popleft()

    def _next_global_block(self) -> list[int]:
        while len(self._buffer) - self._head < self.seq_len:
            tokens, self._epoch, self._shard, self._position = self._next_document()
            if self._head:  # drop what was emitted before growing the buffer
                del self._buffer[: self._head]
                self._head = 0
            self._buffer.extend(tokens)
            self._buffer.append(self.eos)
        block = self._buffer[self._head : self._head + self.seq_len]
        self._head += self.seq_len
        return block

    def _next_block(self) -> list[int]:
        while True:
            block = self._next_global_block()
            index, self.blocks_read = self.blocks_read, self.blocks_read + 1
            if index % self.world_size == self.rank:
                return block

    def take(self, count: int, *, allow_fewer: bool = False) -> np.ndarray:
        """The next `count` blocks of this rank, int64 [count, seq_len] (fewer only if allow_fewer)."""
        rows = []
        try:
            for _ in range(count):
                rows.append(self._next_block())
        except EndOfStream:
            if not allow_fewer or not rows:
                raise ValueError(
                    f"{self.source}: only {len(rows)} blocks of {self.seq_len} tokens in "
                    f"{'all documents' if self.split is None else f'split {self.split!r}'}, {count} needed; "
                    "use more data or a shorter seq_len"
                ) from None
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.seq_len)

    def batch(self, index: int, batch_size: int, seed: int = 0):
        """LongTensor [batch_size, seq_len]: the next batch, which must be batch number `index`.

        `seed` is accepted for the `PackedTokens` interface and unused: a stream's order is the file order.
        """
        import torch

        if index != self.batches_served:
            raise ValueError(
                f"a token stream serves batches in order: batch {index} was asked for, the next is "
                f"{self.batches_served} (restore its state_dict to resume)"
            )
        blocks = self.take(batch_size)
        self.batches_served += 1
        return torch.from_numpy(blocks)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def stream_calibration_batches(stream: TokenStream, *, num_samples: int, batch_size: int) -> list[dict]:
    """The first `num_samples` blocks of a stream as calibration batches (full blocks, mask all ones)."""
    import torch

    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be >= 1")
    blocks = torch.from_numpy(stream.take(num_samples))
    return [
        {"input_ids": part, "attention_mask": torch.ones_like(part)}
        for part in torch.split(blocks, batch_size)
    ]
