"""The `preview` job: the teacher's and the masked teacher's perplexity, a quick what-if of a plan before
any weight is cut."""

from __future__ import annotations

import math
from typing import Any

from backend.models import Dataset, Job, Plan, Teacher
from worker.job_io import (
    documents,
    fetch_rows,
    job_dataset,
    load,
    model_source,
)
from worker.runtime import JobRuntime


def run_preview(rt: JobRuntime, job: Job) -> dict[str, Any]:
    """Teacher and masked-teacher perplexity: on the teacher's evaluation protocol (`params.protocol`,
    the same numbers as its evaluate jobs), or on `samples` packed validation blocks when asked for."""
    import torch

    from worker.engine import eval_protocol
    from worker.engine.dtypes import model_dtype_name
    from worker.engine.evaluation.perplexity import block_nll, perplexity
    from worker.engine.masking import masked
    from worker.engine.plan import PrunePlan
    from worker.teacher_perplexity import known, weights_stamp

    plan_row, teacher = fetch_rows(rt, (Plan, job.plan_id), (Teacher, job.teacher_id))
    p = job.params
    rt.progress(0.0, "loading model", force=True)
    model_dir = model_source(teacher.source)
    model, tokenizer = load(rt, model_dir, teacher.trust_remote_code, bar=(0.0, 0.05))
    model.eval()
    protocol = eval_protocol.of_job("preview", p)
    stamp = weights_stamp(model_dir, rt.device, model_dtype_name(model))
    measured = known(rt.url, teacher.id, protocol["id"], stamp)
    if p.get("protocol"):
        proto = eval_protocol.of_teacher(p["protocol"])
        dataset = fetch_rows(rt, (Dataset, proto.dataset_id))[0] if proto.dataset_id else None
        docs = documents(dataset, proto.split)[: proto.max_documents]

        unit = "windows"

        def measure(progress) -> tuple[float, int]:
            r = perplexity(
                model, docs, tokenizer, context=proto.context, stride=proto.stride, progress=progress
            )
            return r["loss"], r["tokens"]
    else:
        from worker.engine.data import PackedTokens

        packed = PackedTokens(tokenizer, documents(job_dataset(rt, p), "validation"), p["seq_len"])
        limit = min(p["samples"], len(packed))

        unit = "blocks"

        def measure(progress) -> tuple[float, int]:
            return block_nll(model, packed, limit=limit, progress=progress)

    def stage(name: str, start: float, share: float):
        """Progress of one pass: `start` .. `start` + `share` of the bar, its own ETA."""
        rt.progress(start, f"{name}: starting", force=True, phase=name)

        def report(done: int, total: int) -> None:
            rt.progress(start + share * done / total, f"{name}: {done}/{total} {unit}", phase=name)
            rt.raise_if_cancelled()

        return report

    with torch.no_grad():
        if measured is None:
            nll, tokens = measure(stage("teacher perplexity", 0.05, 0.45))
        else:
            nll, tokens = measured.loss, measured.tokens
            rt.log(
                f"teacher perplexity {math.exp(nll):.4g}: measured by job {measured.job_id} on the same "
                "weights and protocol, not measured again"
            )
        with masked(model, PrunePlan.model_validate(plan_row.plan)):
            nll_m, _ = measure(
                stage("masked perplexity", 0.05 if measured else 0.5, 0.9 if measured else 0.45)
            )
    ppl_teacher, ppl_masked = math.exp(nll), math.exp(nll_m)
    return {
        "ppl_teacher": ppl_teacher,
        "ppl_masked": ppl_masked,
        "ratio": ppl_masked / ppl_teacher,
        "tokens": tokens,
        "protocol": protocol,
        "teacher_loss": nll,
        "teacher_from_job": measured.job_id if measured else None,
        "weights_stamp": stamp,
    }
