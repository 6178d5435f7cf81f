"""The evaluation protocol's one definition (worker/engine/eval_protocol.py): what makes two perplexities
comparable, and the protocol every kind of job records (no torch, no database)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.engine import eval_protocol
from worker.engine.eval_protocol import DEFAULT, EvalProtocol


def test_every_field_of_the_protocol_changes_its_id():
    base = DEFAULT.record()
    for change in (
        {"dataset_id": 3},
        {"split": "validation"},
        {"context": 256, "stride": 128},
        {"stride": 32},
        {"max_documents": 8},
    ):
        assert EvalProtocol(**{**DEFAULT.model_dump(), **change}).id != base["id"], change
    assert EvalProtocol(**DEFAULT.model_dump()).id == base["id"]


def test_a_default_evaluation_is_on_the_default_protocol_and_a_distillation_is_not():
    params = {"split": "test", "max_documents": 64, "seq_len": 128}  # an evaluate job's defaults
    assert eval_protocol.of_job("evaluate", params) == DEFAULT.record()
    assert eval_protocol.of_job("evaluate", {**params, "stride": 32})["id"] != DEFAULT.id
    distill = eval_protocol.of_job("distill", {"seq_len": 64, "batch_size": 4, "val_batches": 2})
    assert distill["kind"] == "blocks" and distill["blocks"] == 8 and distill["id"] != DEFAULT.id
    # Rows from before a parameter existed still have a protocol (the defaults).
    assert eval_protocol.of_job("distill", {})["kind"] == "blocks"
    assert eval_protocol.of_job("preview", {"protocol": DEFAULT.model_dump()}) == DEFAULT.record()
    assert eval_protocol.of_job("benchmark", {}) is None


def test_a_search_is_measured_on_its_own_sample_named_by_data_split_and_size():
    params = {"dataset_id": 3, "settings": {"split": "validation", "eval_samples": 4, "eval_seq_len": 32}}
    record = eval_protocol.of_job("search", params)
    assert record["kind"] == "sample" and (record["samples"], record["context"]) == (4, 32)
    assert record["id"] == "dataset 3 · validation · sample of 4 × 32 tokens"
    assert "not the teacher's evaluation protocol" in record["description"]
    # Another sample size is another figure: its id says so.
    bigger = {**params, "settings": {**params["settings"], "eval_samples": 16}}
    assert eval_protocol.of_job("search", bigger)["id"] != record["id"]


def test_a_stride_must_be_below_the_context():
    with pytest.raises(ValidationError, match="stride must be below context"):
        EvalProtocol(context=64, stride=64)
    assert eval_protocol.of_teacher(None) == DEFAULT
    description = eval_protocol.of_teacher({"context": 64, "stride": 16}).record()["description"]
    assert "windows of 64 tokens starting every 16 tokens" in description and "from 48 to 64" in description
