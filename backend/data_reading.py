"""How a job reads its dataset: whole (the default) or streamed, memory bounded whatever the corpus size.

`DataReading` is mixed into the params of the jobs that read training / calibration text (importance
runs, distillation); `check_data_reading` checks them against the chosen dataset at submit time, so a
format that matches none of its files is a 422 naming `data_format`, not a failed job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from worker.engine.shards import DATA_FORMATS

DataFormat = Literal[DATA_FORMATS]


class DataReading(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: bool = Field(
        False,
        description="read the dataset lazily, packed into blocks on the fly (memory bounded; the position is "
        "part of a distillation's checkpoint); calibration then uses the first blocks of the calibration split",
    )
    data_format: DataFormat = Field(
        "auto", description="with stream: auto (by file suffix), txt, jsonl, parquet"
    )
    text_field: str = Field(
        "text",
        min_length=1,
        max_length=200,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",  # no spaces, no control characters (NUL...)
        description="with stream: the JSONL field / parquet column holding the text",
    )

    @field_validator("data_format", "text_field")
    @classmethod
    def _needs_stream(cls, value: str, info: ValidationInfo) -> str:
        default = "auto" if info.field_name == "data_format" else "text"
        if value != default and not info.data.get("stream"):
            raise ValueError(f"{info.field_name} applies to streamed data: set stream to true")
        return value


def check_data_reading(params: DataReading, dataset_source: str | None, loc: list, roots: list) -> None:
    """A 422 at `loc + ["data_format"]` when streaming would find no file of the format in the dataset; a
    403 at `loc + ["dataset_id"]` when one of its files now links out of the allowed `roots` (the worker
    would refuse it at the job's start)."""
    if not params.stream:
        return
    from backend.deps import field_error  # here: deps imports the schemas, which import this module

    if dataset_source in (None, "demo"):  # the built-in corpus: no files whose format or field to name
        for name, default in (("data_format", "auto"), ("text_field", "text")):
            if getattr(params, name) != default:
                raise field_error(
                    [*loc, name],
                    f"the demo corpus is built in: {name} applies to a dataset's files",
                    nearby=[default],
                )
        return
    from backend.errors import Forbidden
    from worker.engine.roots import OutsideRoots  # torch-free, like the shard list
    from worker.engine.shards import list_shards

    try:
        list_shards(dataset_source, params.data_format, roots=roots)
    except OutsideRoots as exc:
        raise Forbidden(str(exc), field=(*loc, "dataset_id")) from None
    except (ValueError, FileNotFoundError) as exc:
        raise field_error([*loc, "data_format"], str(exc)) from None
