"""The data options `prunescope distill` and `prunescope importance` share: in-memory or streamed text.

Without `--stream` a source is read whole (fine for the demo corpus and small files). With `--stream`
(implied by `--hf-dataset`) it is read lazily through `worker.engine.streaming.TokenStream`: memory
bounded whatever the corpus size, and a distillation's position in the data is part of its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from worker.cli import CliError
from worker.engine.shards import DATA_FORMATS


def add_data_options(parser) -> None:
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read --data lazily, packed on the fly (memory bounded; for large files and folders of shards)",
    )
    parser.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default="auto",
        help="with --stream: file format (auto: by suffix; a folder keeps only files of this format)",
    )
    parser.add_argument(
        "--text-field",
        default="text",
        help="with --stream: the JSONL field / parquet column holding the text",
    )
    parser.add_argument(
        "--hf-dataset",
        default=None,
        metavar="ID[:CONFIG]",
        help="stream a Hugging Face datasets id instead of --data (needs internet; implies --stream)",
    )
    parser.add_argument(
        "--hf-split", default="train", help="with --hf-dataset: the split read (default train)"
    )


def data_source(args) -> tuple[str, bool]:
    """(source, streamed) from the options, or a one-line error for a contradictory combination."""
    if args.hf_dataset:
        if args.data != "demo":
            raise CliError("--hf-dataset: give either --data or --hf-dataset, not both")
        return f"hf:{args.hf_dataset}", True
    if not args.stream and (args.data_format != "auto" or args.text_field != "text"):
        raise CliError("--data-format and --text-field apply to streamed data: add --stream")
    check_data_found(args.data)
    return args.data, args.stream


def check_data_found(source: str) -> None:
    """A local --data that is not there is refused before anything loads (and, under torchrun, before
    the ranks join: once per node, not once per rank after loading the models)."""
    if source == "demo" or source.startswith("hf:"):
        return
    if not Path(source).expanduser().exists():
        raise CliError(f"--data: data source not found: {source}")


def open_stream(
    args, tokenizer, source: str, split: str, *, repeat: bool, rank: int = 0, world_size: int = 1
):
    """A TokenStream of one split of `source` with the command's options (this rank's share of it)."""
    from worker.engine.streaming import TokenStream

    return TokenStream(
        tokenizer,
        source,
        seq_len=args.seq_len,
        split=split,
        text_field=args.text_field,
        data_format=args.data_format,
        repeat=repeat,
        hf_split=args.hf_split,
        rank=rank,
        world_size=world_size,
    )
