"""The evaluation protocol: what a perplexity was measured on, so two numbers are compared only when
they were measured alike.

A perplexity depends on the text (dataset and split), how much of it (documents or blocks), and the
window (context and stride). Each teacher keeps one `EvalProtocol` (`Teacher.eval_protocol`): the
default of its evaluate jobs and of the planner's preview, and what its own evaluation is run on. Every
perplexity the platform stores carries the `record` of the protocol it was measured with; the dashboard
marks a number whose protocol `id` differs from its teacher's as not comparable.

Two kinds:
- "documents": sliding-window perplexity of whole documents (`evaluation.perplexity` on a list of
  strings): the evaluate jobs, the preview.
- "blocks": packed blocks of `context` tokens, each scored on its own (`block_nll`): a distillation's
  validation curve, a preview run with explicit `samples` / `seq_len`.

Torch-free (the API imports it), outside `evaluation/` whose package loads torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.engine.distill_defaults import DEFAULTS as DISTILL

Split = Literal["train", "validation", "calibration", "test"]  # worker.engine.data.SPLITS
MAX_ID = 2**31 - 1


class EvalProtocol(BaseModel):
    """A teacher's evaluation protocol (documents kind): the defaults of the evaluate jobs of it and its
    students, and of the planner's preview."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: int | None = Field(None, ge=1, le=MAX_ID, description="null: the demo corpus")
    split: Split = "test"
    context: int = Field(
        128, ge=2, le=MAX_ID, description="tokens per window (at most PRUNESCOPE_MAX_SEQ_LEN)"
    )
    stride: int = Field(64, ge=1, le=MAX_ID, description="a window starts every `stride` tokens (< context)")
    max_documents: int = Field(64, ge=1, le=100_000, description="the first N documents of the split")

    @model_validator(mode="after")
    def _stride_below_context(self) -> EvalProtocol:
        if self.stride >= self.context:
            # A field-less ValueError would name the whole object; the API names `stride` (see schemas).
            raise ValueError(f"stride must be below context ({self.context})")
        return self

    @property
    def id(self) -> str:
        return documents_id(self.dataset_id, self.split, self.context, self.stride, self.max_documents)

    def record(self) -> dict[str, Any]:
        return documents_record(self.dataset_id, self.split, self.context, self.stride, self.max_documents)


DEFAULT = EvalProtocol()


def _data(dataset_id: int | None) -> str:
    return f"dataset {dataset_id}" if dataset_id else "demo"


def documents_id(dataset_id, split, context, stride, max_documents) -> str:
    return f"{_data(dataset_id)} · {split} · {max_documents} docs · ctx {context} / stride {stride}"


def documents_record(dataset_id, split, context, stride, max_documents) -> dict[str, Any]:
    return {
        "id": documents_id(dataset_id, split, context, stride, max_documents),
        "kind": "documents",
        "dataset_id": dataset_id,
        "split": split,
        "context": context,
        "stride": stride,
        "max_documents": max_documents,
        "description": (
            f"Perplexity of the first {max_documents} documents of the {split} split of the "
            f"{'demo corpus' if not dataset_id else f'dataset #{dataset_id}'}: each document read in "
            f"windows of {context} tokens starting every {stride} tokens (every token scored once, "
            f"from {context - stride} to {context} tokens of history); exp of the token-weighted mean NLL."
        ),
    }


def blocks_record(dataset_id, split: str, context: int, blocks: int) -> dict[str, Any]:
    return {
        "id": f"{_data(dataset_id)} · {split} · {blocks} blocks of {context}",
        "kind": "blocks",
        "dataset_id": dataset_id,
        "split": split,
        "context": context,
        "blocks": blocks,
        "description": (
            f"Perplexity of {blocks} packed blocks of {context} tokens of the {split} split of the "
            f"{'demo corpus' if not dataset_id else f'dataset #{dataset_id}'}, each block scored on its own "
            "(its first token is context only, documents run across blocks)."
        ),
    }


def sample_record(dataset_id, split: str, context: int, samples: int, seed: int) -> dict[str, Any]:
    """An architecture search's held-out score: a seeded sample of document windows (not a perplexity
    protocol: its teacher figure is measured on the same sample, and differs from the teacher's evaluation)."""
    return {
        "id": f"{_data(dataset_id)} · {split} · sample of {samples} × {context} tokens",
        "kind": "sample",
        "dataset_id": dataset_id,
        "split": split,
        "context": context,
        "samples": samples,
        "seed": seed,
        "description": (
            f"Mean token loss of {samples} windows of up to {context} tokens drawn (seed {seed}) from the "
            f"{split} split of the {'demo corpus' if not dataset_id else f'dataset #{dataset_id}'} (each "
            "document cut into consecutive windows, each window scored on its own): the search's quick "
            "score of every candidate and of the teacher, not the teacher's evaluation protocol."
        ),
    }


def of_teacher(stored: dict | None) -> EvalProtocol:
    """A teacher row's protocol (rows from before protocols existed: the default)."""
    return EvalProtocol.model_validate(stored) if stored else DEFAULT


def of_job(kind: str, params: dict) -> dict[str, Any] | None:
    """The protocol record of the perplexity a job measures (None: it measures none)."""
    if kind == "evaluate":
        context = params.get("seq_len", DEFAULT.context)
        stride = params.get("stride") or max(1, context // 2)
        return documents_record(
            params.get("dataset_id"),
            params.get("split", DEFAULT.split),
            context,
            stride,
            params.get("max_documents", DEFAULT.max_documents),
        )
    if kind == "preview":
        if params.get("protocol"):
            return of_teacher(params["protocol"]).record()
        return blocks_record(
            params.get("dataset_id"), "validation", params.get("seq_len", 128), params.get("samples", 16)
        )
    if kind == "distill":  # .get: rows written before a parameter existed take its default
        blocks = params.get("val_batches", DISTILL.val_batches) * params.get("batch_size", DISTILL.batch_size)
        return blocks_record(
            params.get("dataset_id"), "validation", params.get("seq_len", DISTILL.seq_len), blocks
        )
    if kind == "search":  # worker/engine/search/settings.py defaults
        settings = params.get("settings") or {}
        return sample_record(
            params.get("dataset_id"),
            settings.get("split", "validation"),
            settings.get("eval_seq_len", 128),
            settings.get("eval_samples", 16),
            settings.get("seed", 0),
        )
    return None
