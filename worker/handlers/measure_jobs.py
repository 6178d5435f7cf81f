"""The `evaluate` and `benchmark` jobs: perplexity (and lm-eval tasks) and decode throughput of a
teacher or a student's pruned or distilled weights, each stored as a result row."""

from __future__ import annotations

import time
from typing import Any

from backend.models import Job, Teacher
from worker.job_io import documents, fetch_rows, job_dataset, json_safe, load, model_source
from worker.measurements import LmEvalCount, save_measurement, subject
from worker.runtime import JobRuntime


def run_evaluate(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine import eval_protocol, evaluation

    p = job.params
    if p.get("tasks"):  # an unknown name fails the job now, not after the perplexity pass
        evaluation.check_tasks(p["tasks"])
    if p.get("gpus", 1) > 1 or p.get("nodes", 1) > 1:  # data-parallel under torchrun, lm-eval too
        from worker.evaluate_ranks import run_evaluate_ranks

        return run_evaluate_ranks(rt, job)
    from worker.teacher_perplexity import weights_stamp

    dataset = job_dataset(rt, p)
    source, trc = subject(rt, job)
    rt.progress(0.0, "loading model", force=True)
    model_dir = model_source(source)
    model, tokenizer = load(rt, model_dir, trc, bar=(0.0, 0.05))
    docs = documents(dataset, p["split"])[: p["max_documents"]]
    t0 = time.perf_counter()
    share = 0.45 if p.get("tasks") else 0.9  # of the bar: lm-eval tasks take the rest
    rt.progress(0.05, f"perplexity: 0 of {len(docs)} documents", force=True, phase="perplexity")

    def scored(done: int, total: int) -> None:
        where = f"{done}/{total} windows of {len(docs)} documents"
        rt.progress(0.05 + share * done / total, f"perplexity: {where}", phase="perplexity")
        rt.raise_if_cancelled()

    def tasks_next() -> None:
        rt.raise_if_cancelled()
        rt.progress(0.5, f"lm-eval tasks: building the requests of {', '.join(p['tasks'])}", force=True)

    measured = evaluation.evaluate_model(
        model,
        tokenizer,
        docs,
        context=p["seq_len"],
        stride=p.get("stride"),
        tasks=p.get("tasks") or (),
        limit=p.get("limit"),
        cache_root=rt.settings.cache,
        scored=scored,
        before_tasks=tasks_next,
        answered=LmEvalCount(rt, p.get("tasks") or (), (0.5, 0.95)),
    )
    result: dict[str, Any] = {
        **json_safe(measured),  # the engine's evaluation dict, as `prunescope evaluate` prints it
        "protocol": eval_protocol.of_job("evaluate", p),  # what the dashboard compares numbers by
        "seconds": None,
        "weights_stamp": weights_stamp(model_dir, rt.device, measured["dtype"]),  # a preview may reuse it
        "device": rt.device,  # where it ran (the compare table shows it beside each model's numbers)
    }
    rt.raise_if_cancelled()
    result["seconds"] = time.perf_counter() - t0
    return save_measurement(rt, job, "evaluate", result)


def run_benchmark(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine import evaluation

    p = job.params
    (teacher,) = fetch_rows(rt, (Teacher, job.teacher_id))
    rt.progress(0.0, "loading models", force=True)
    bar = (0.0, 0.03) if job.student_id else (0.0, 0.05)
    teacher_model, tokenizer = load(
        rt, teacher.source, teacher.trust_remote_code, bar=bar, what="teacher weights"
    )

    def ran(done: int, total: int, what: str) -> None:
        message = f"benchmark: {done}/{total} runs ({what})"
        rt.progress(0.05 + 0.9 * done / total, message, phase="benchmark", force=done == 0)
        rt.raise_if_cancelled()

    kwargs = dict(
        batch_sizes=(p["batch_size"],),
        prompt_len=p["seq_len"],
        new_tokens=p["new_tokens"],
        repeats=p["repeats"],
        progress=ran,
    )
    if job.student_id:
        source, _ = subject(rt, job)
        student_model, _ = load(rt, source, bar=(0.03, 0.05), what="student weights")
        result = json_safe(evaluation.throughput(teacher_model, student_model, **kwargs))
    else:
        result = {"teacher": json_safe(evaluation.measure_model(teacher_model, **kwargs))}
    result.update(rt.device_use)  # measured alone on the device (worker.device_lock), after how long a wait
    return save_measurement(rt, job, "benchmark", result)
