"""Which files a local data source is: its data files by suffix (a file, or the matching files below a
folder, in sorted order), each inside the allowed roots. Torch-free (stdlib only), so the API checks a
dataset's files with the readers' own rules (`worker.engine.data` reads them whole, `streaming` lazily).
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.engine.roots import check_inside_roots

DATA_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
DATA_FORMATS = ("auto", "txt", "jsonl", "parquet")  # jsonl covers .jsonl.gz
FORMAT_SUFFIXES = {"txt": (".txt",), "jsonl": (".jsonl", ".jsonl.gz"), "parquet": (".parquet",)}


def data_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in DATA_SUFFIXES if name.endswith(s)), None)


def format_of(path: Path) -> str:
    suffix = data_suffix(path)
    return "jsonl" if suffix == ".jsonl.gz" else (suffix or "").lstrip(".")


def _data_files_below(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and any(p.name.lower().endswith(s) for s in suffixes)
    )


def list_shards(
    source: str | os.PathLike, data_format: str = "auto", *, roots: list[Path] | None = None
) -> list[Path]:
    """The data files of a local source (a file, or the matching files below a folder, sorted); with
    `roots`, each must resolve inside them (else OutsideRoots)."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}")
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    suffixes = DATA_SUFFIXES if data_format == "auto" else FORMAT_SUFFIXES[data_format]
    if path.is_dir():
        files = _data_files_below(path, suffixes)
        if not files:
            raise ValueError(f"no {', '.join(suffixes)} files in directory {path}")
        check_inside_roots(files, roots)
        return files
    if data_format == "auto" and data_suffix(path) is None:
        raise ValueError(f"unsupported data file {path}: expected one of {', '.join(DATA_SUFFIXES)}")
    check_inside_roots([path], roots)
    return [path]


def check_source_inside(source: str | os.PathLike, roots: list[Path]) -> None:
    """Before a job reads a local source: it, and every data file below it that any reader (whole or
    streamed, any format) would open, resolves inside `roots`. A link added after registration, or the
    folder itself swapped for a link, is refused here (OutsideRoots) instead of read."""
    path = Path(source).expanduser()
    check_inside_roots([path], roots)
    if path.is_dir():
        check_inside_roots(_data_files_below(path.resolve(), DATA_SUFFIXES), roots)


__all__ = [
    "DATA_FORMATS",
    "DATA_SUFFIXES",
    "FORMAT_SUFFIXES",
    "check_source_inside",
    "data_suffix",
    "format_of",
    "list_shards",
]
