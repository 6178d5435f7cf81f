"""Job sizes bounded by the server's settings: sequence length, batch size and the tokens one job may
process (a 10^7-step distillation at batch 4096 x 131,072 tokens is a typo, not a job to queue)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.deps import field_error
from backend.settings import Settings
from worker.engine.spec import spec_max_positions

# A job field -> the setting that bounds it and its variable; also what GET /config tells the dashboard,
# whose memory lines say a typed value is over a limit instead of sizing a job this check refuses.
FIELD_LIMITS = (
    ("seq_len", "max_seq_len", "PRUNESCOPE_MAX_SEQ_LEN"),
    ("batch_size", "max_batch_size", "PRUNESCOPE_MAX_BATCH_SIZE"),
)
JOB_TOKENS_VARIABLE = "PRUNESCOPE_MAX_JOB_TOKENS"


def job_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """{field: {"limit", "variable"}} of FIELD_LIMITS, plus "job_tokens" (GET /config `limits`)."""
    out = {name: {"limit": getattr(settings, key), "variable": var} for name, key, var in FIELD_LIMITS}
    out["job_tokens"] = {"limit": settings.max_job_tokens, "variable": JOB_TOKENS_VARIABLE}
    return out


def check_job_size(params, settings: Settings, loc: list) -> None:
    """422 naming the field (under `loc`) when `params` (a job model with `size_factors()`) is over a limit."""
    for name, key, variable in FIELD_LIMITS:
        limit = getattr(settings, key)
        value = getattr(params, name, None)
        if value is not None and value > limit:
            raise field_error([*loc, name], f"{value} is over this server's limit of {limit} ({variable})")
    excess = job_tokens_excess(params.size_factors(), settings.max_job_tokens)
    if excess:
        field, message = excess
        raise field_error([*loc, field], message)


def job_tokens_excess(factors: list[tuple[str, int]], limit: int) -> tuple[str, str] | None:
    """(the field to name, the message) when the job's tokens, the product of `factors` (a job model's
    `size_factors()`), are over `limit` per job; else None. frontend/js/serverconfig.js says the same."""
    tokens = 1
    for _, value in factors:
        tokens *= value
    if tokens <= limit:
        return None
    field, value = factors[0]
    per_unit = tokens // value
    product = " x ".join(f"{name} {v}" for name, v in factors)
    fits = f"; with these settings {field} can be at most {limit // per_unit}" if per_unit <= limit else ""
    return field, (
        f"{product} = {tokens:.3g} tokens is over this server's limit of {limit:.3g} tokens per job "
        f"({JOB_TOKENS_VARIABLE}){fits}"
    )


def check_positions(spec: Mapping[str, Any], seq_len: int, loc: list, model: str) -> None:
    """422 naming `loc` when `seq_len` is over the positions `model`'s stored spec knows of
    (worker.engine.spec.spec_max_positions, as the engine's checks; unknown: nothing to check)."""
    limit = spec_max_positions(spec)
    if limit and seq_len > limit:
        raise field_error(
            loc, f"{seq_len} is over the {limit} positions of {model}; at most {limit}", nearby=[limit]
        )
