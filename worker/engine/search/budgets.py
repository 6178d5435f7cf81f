"""Budgets a searched architecture must meet, parsed from `KIND=VALUE[@BATCH,CONTEXT]` strings.

Torch-free. Kinds and the cost each one limits:
    params=60% | 5M | 5000000     total parameters (the cost model of worker/engine/spec.py)
    params_non_embedding=50%      parameters outside the embeddings and LM head (what the depth-vs-width
                                  study holds equal)
    memory=1.5GB@1,2048           weights + KV cache at batch 1 and context 2048, in the teacher's stored
                                  dtype (its checkpoint's, as its students are saved), not the scoring one
    latency=4ms@1,128             measured decode seconds per generated token (a maximum)
    prefill=20ms@1,512            measured seconds of one prefill over a batch x context prompt
    throughput=2000@8,128         measured decode tokens per second (a minimum)
A `%` value is relative to the teacher's own figure. Latency kinds are measured (worker/engine/search/
latency.py); params and memory are computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.engine.memplan import dtype_bytes
from worker.engine.spec import ArchSpec

KINDS = ("params", "params_non_embedding", "memory", "latency", "prefill", "throughput")
MEASURED = ("latency", "prefill", "throughput")  # need a timed shape
MINIMUM = ("throughput",)  # the others are maxima
_UNITS = {
    "params": {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9},
    "memory": {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30},
    "latency": {"": 1, "s": 1, "ms": 1e-3, "us": 1e-6},
    "throughput": {"": 1, "tok/s": 1},
}
_UNITS["prefill"] = _UNITS["latency"]
_UNITS["params_non_embedding"] = _UNITS["params"]
_PATTERN = re.compile(r"^\s*([a-z_]+)\s*=\s*([0-9.eE+-]+)\s*([a-zA-Z/%]*)\s*(?:@\s*(\d+)\s*,\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Budget:
    kind: str
    value: float  # in base units (parameters, bytes, seconds, tokens/s), or a percentage
    percent: bool
    text: str
    batch: int | None = None  # memory and measured kinds: the batch and context they are taken at
    context: int | None = None

    @property
    def is_minimum(self) -> bool:
        return self.kind in MINIMUM

    @property
    def measured(self) -> bool:
        return self.kind in MEASURED

    def limit(self, teacher_value: float) -> float:
        """The absolute limit (a `%` budget is a share of the teacher's figure)."""
        return self.value / 100.0 * teacher_value if self.percent else self.value

    def fits(self, value: float, limit: float, tolerance: float) -> bool:
        if self.is_minimum:
            return value >= limit * (1 - tolerance)
        return value <= limit * (1 + tolerance)

    def over_limit(self, value: float, limit: float) -> float:
        """How far past the bare limit `value` is, as a fraction of it (0 when within it): a candidate
        the tolerance lets in (`fits`) can still be over the stated budget, and the report says so."""
        if not limit > 0:
            return 0.0
        past = (limit - value) if self.is_minimum else (value - limit)
        return round(max(past, 0.0) / limit, 6)


def parse_budget(text: str, default_batch: int = 1, default_context: int = 128) -> Budget:
    """`KIND=VALUE[UNIT][@BATCH,CONTEXT]` -> Budget; ValueError with a sentence for anything else."""
    m = _PATTERN.match(text or "")
    if not m:
        raise ValueError(
            f"budget {text!r} is not KIND=VALUE[@BATCH,CONTEXT] (e.g. params=60%, memory=2GB@1,2048, "
            f"latency=5ms, throughput=1000@8,128)"
        )
    kind, number, unit, batch, context = m.groups()
    if kind not in KINDS:
        raise ValueError(f"budget {text!r}: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"budget {text!r}: {number!r} is not a number") from None
    percent = unit == "%"
    if not percent:
        units = _UNITS[kind]
        if unit.lower() not in units:
            raise ValueError(
                f"budget {text!r}: unknown unit {unit!r} for {kind}; valid: %, {', '.join(u for u in units if u)}"
            )
        value *= units[unit.lower()]
    if not value > 0:
        raise ValueError(f"budget {text!r}: the value must be positive")
    if kind.startswith("params") and batch is not None:
        raise ValueError(f"budget {text!r}: a parameter budget takes no @batch,context")
    if not kind.startswith("params"):
        batch = int(batch) if batch is not None else default_batch
        context = int(context) if context is not None else default_context
        if batch < 1 or context < 1:
            raise ValueError(f"budget {text!r}: batch and context must be >= 1")
    return Budget(kind=kind, value=value, percent=percent, text=text.strip(), batch=batch, context=context)


def memory_bytes(spec: ArchSpec, batch: int, context: int) -> int:
    """Weights + KV cache of `batch` sequences of `context` tokens, in `spec.dtype` (a search sets it to the
    teacher's stored dtype: run_search's `stored_dtype`)."""
    w = dtype_bytes(spec.dtype)
    return spec.param_count()["total"] * w + batch * context * spec.kv_cache_bytes_per_token(
        bytes_per_value=w
    )


def computed_cost(budget: Budget, spec: ArchSpec) -> float:
    """The cost a computed (not measured) budget limits, for a model of this shape."""
    if budget.kind == "params":
        return float(spec.param_count()["total"])
    if budget.kind == "params_non_embedding":
        return float(spec.param_count()["non_embedding"])
    if budget.kind == "memory":
        return float(memory_bytes(spec, budget.batch, budget.context))
    raise ValueError(f"{budget.kind} is measured, not computed")


def measured_cost(budget: Budget, timing: dict) -> float:
    """The figure of a latency measurement (latency.py's dict) a measured budget limits."""
    return {
        "latency": timing["decode_s_per_token"],
        "prefill": timing["prefill_s"],
        "throughput": timing["decode_tokens_per_s"],
    }[budget.kind]
