"""What POST /datasets checks of a local source before it registers it: that it holds data a job can
read, judged from the data files' sizes and first bytes (a registration reads no whole corpus: the
first 64 KiB of the first 32 files of a folder).

A folder needs a data file (.txt, .jsonl, .jsonl.gz, .parquet, worker.engine.shards.DATA_SUFFIXES, searched as
jobs search it) that is not empty; each data file read must be what its suffix says: .txt and .jsonl UTF-8
text without NUL bytes (a .jsonl's first line a JSON object), .jsonl.gz gzip, .parquet Parquet. A single
file of another suffix (a job may stream it with an explicit `data_format`) only needs to be non-empty.
Before, such a source was registered and every job on it failed at its worker, minutes later.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from backend.paths import PathNotAllowed

HEAD_BYTES = 64 * 1024
SNIFFED_FILES = 32  # of a folder of many shards, the first ones are read (the rest only sized)
MAGIC = {".jsonl.gz": b"\x1f\x8b", ".parquet": b"PAR1"}
TEXT_SUFFIXES = (".txt", ".jsonl")


def dataset_problem(path: Path, roots: list[Path]) -> str | None:
    """Why the local dataset at `path` (resolved, existing) cannot be read, or None when it looks usable.
    Raises PathNotAllowed when one of its data files is a link out of `roots` (none of it is read then)."""
    from worker.engine.roots import OutsideRoots
    from worker.engine.shards import data_suffix, list_shards

    if not (path.is_dir() or path.is_file()):  # a FIFO or device: reading it could block the request
        return f"{path} is not a regular file or folder"
    try:
        files = list_shards(path, roots=roots) if path.is_dir() else [path]
    except OutsideRoots as exc:
        raise PathNotAllowed(str(exc)) from None
    except (ValueError, OSError) as exc:
        return str(exc)
    filled = 0
    for file in files[:SNIFFED_FILES]:
        try:
            problem = _file_problem(file, data_suffix(file))
        except OSError as exc:
            return f"{file} cannot be read ({exc.strerror or exc})"
        if problem == "":
            continue  # empty: no documents, but no harm beside other files
        if problem is not None:
            return f"{file}: {problem}"
        filled += 1
    filled += sum(1 for file in files[SNIFFED_FILES:] if file.stat().st_size > 0)
    if not filled:
        where = f"every data file in {path}" if path.is_dir() else str(path)
        return f"{where} is empty: a dataset needs text"
    return None


def _file_problem(file: Path, suffix: str | None) -> str | None:
    """None when the file looks like its format, "" when it is empty, else what is wrong."""
    with open(file, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        whole = len(head) < HEAD_BYTES or not handle.read(1)
    if not head.strip() and whole:
        return ""
    if suffix in MAGIC:
        return (
            None
            if head.startswith(MAGIC[suffix])
            else f"not a {suffix} file (its first bytes are not {suffix}'s)"
        )
    if suffix not in TEXT_SUFFIXES:
        return None
    if b"\x00" in head:
        return "not text (it holds NUL bytes): a binary file?"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start} cannot be decoded)"
    if suffix == ".jsonl":
        first = next((line for line in text.splitlines() if line.strip()), "")
        if len(first) < len(text) or whole:  # a whole first line to judge
            try:
                ok = isinstance(json.loads(first), dict)
            except ValueError:
                ok = False
            if not ok:
                return "not JSON lines: its first line is not a JSON object"
    return None
