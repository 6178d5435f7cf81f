"""One set of distillation defaults (worker.engine.distill_defaults): the engine's `DistillConfig`, the
API's `DistillParams`, `prunescope distill`'s flags and the dashboard's form all start from it, read by
introspection, so a default changed in one place only fails here."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from backend.schemas import DistillParams
from worker.cli import build_parser
from worker.engine.distill.config import DistillConfig
from worker.engine.distill_defaults import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
SHARED = {f.name: getattr(DEFAULTS, f.name) for f in dataclasses.fields(DEFAULTS)}
# Where a name differs from the shared one: API and CLI say "warmup", the engine "warmup_steps".
RENAMED = {"warmup_steps": "warmup"}


def test_engine_config_defaults_are_the_shared_ones():
    config = DistillConfig().model_dump()
    assert {name: config[name] for name in SHARED if name != "seq_len"} == {
        k: v for k, v in SHARED.items() if k != "seq_len"
    }
    assert "seq_len" not in config  # the engine's data arrives as blocks: seq_len is the data's


def test_api_schema_defaults_are_the_shared_ones():
    api = DistillParams().model_dump()
    # The API has no per-run choice of these (the job runs one process, the loss weights are fixed).
    not_in_api = {"grad_accum", "kd_weight", "intermediate_weight", "teacher_placement"}
    assert {name: api[RENAMED.get(name, name)] for name in SHARED if name not in not_in_api} == {
        k: v for k, v in SHARED.items() if k not in not_in_api
    }


def test_cli_flag_defaults_are_the_shared_ones():
    args = vars(build_parser().parse_args(["distill", "student-dir", "-o", "out"]))
    assert {name: args[RENAMED.get(name, name)] for name in SHARED} == SHARED


def test_dashboard_form_defaults_are_the_api_ones():
    source = (ROOT / "frontend/js/components/distillform.js").read_text()
    literal = re.search(r"export const DISTILL_DEFAULTS = (\{.*?\});", source).group(1)
    form = json.loads(re.sub(r"(\w+):", r'"\1":', literal))
    api = DistillParams().model_dump()
    assert form == {name: api[name] for name in form}
