"""GET /compare lists a student's 5 newest evaluations / benchmarks plus the newest one of each measured
weights ("pruned", "distilled") when older, so the compare table can show perplexity before and after
distillation however many evaluations ran since; the teacher's stay the 5 newest."""

from __future__ import annotations

import pytest

from backend.db import session_scope
from backend.models import BenchmarkResult, Job, Student
from tests.platform.helpers import student_rows


@pytest.fixture
def rows(api_env):
    """A teacher and two students, with ids of the jobs of their results (rows only)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        t, made = student_rows(s, (("a", "ready"), ("b", "ready"), ("c", "ready")))
        a, b, c = made.values()

        def result(kind: str, student: Student | None, weights: str | None, ppl: float) -> int:
            job = Job(
                kind=kind, params={}, queue="cpu", status="succeeded", student_id=student and student.id
            )
            s.add(job)
            s.flush()
            body = {"perplexity": {"perplexity": ppl}}
            if weights:
                body |= {"weights": weights, "distill_job_id": None if weights == "pruned" else 1}
            s.add(
                BenchmarkResult(
                    job_id=job.id,
                    kind=kind,
                    teacher_id=t.id if student is None else None,
                    student_id=student and student.id,
                    result=body,
                )
            )
            s.flush()
            return job.id

        jobs = {
            # a: pruned evaluated first, then 6 evaluations of distilled weights (and a benchmark).
            "a_pruned": result("evaluate", a, "pruned", 900.0),
            "a_distilled": [result("evaluate", a, "distilled", 100.0 - i) for i in range(6)],
            "a_bench": result("benchmark", a, "pruned", 0.0),
            # b: one distilled evaluation, then 6 of the pruned weights, then a legacy one (no weights).
            "b_distilled": result("evaluate", b, "distilled", 50.0),
            "b_pruned": [result("evaluate", b, "pruned", 800.0 + i) for i in range(6)],
            "b_legacy": result("evaluate", b, None, 70.0),
            # c: both weights among its 5 newest, and an older pruned one.
            "c": [result("evaluate", c, w, 1.0) for w in ["pruned", "distilled", "pruned"] * 2],
            "teacher": [result("evaluate", None, None, 10.0 + i) for i in range(7)],
        }
        return t.id, a.id, b.id, c.id, jobs


def test_compare_keeps_the_newest_pruned_and_distilled_results(client, rows):
    teacher_id, a, b, _, jobs = rows
    r = client.get(f"/api/v1/compare?teacher={teacher_id}&students={a},{b}")
    assert r.status_code == 200, r.text
    teacher, sa, sb = r.json()["models"]
    ids = lambda results: [x["job_id"] for x in results]  # noqa: E731

    # The teacher: its 5 newest, newest first.
    assert ids(teacher["evaluations"]) == jobs["teacher"][::-1][:5]

    # a: 5 newest distilled ones, then the older pruned one; its benchmark stays apart.
    assert ids(sa["evaluations"]) == [*jobs["a_distilled"][::-1][:5], jobs["a_pruned"]]
    assert sa["evaluations"][-1]["weights"] == "pruned"
    assert sa["evaluations"][-1]["perplexity"]["perplexity"] == 900.0
    assert ids(sa["benchmarks"]) == [jobs["a_bench"]]

    # b: the legacy one and 4 newest pruned ones, then the older distilled one.
    assert ids(sb["evaluations"]) == [jobs["b_legacy"], *jobs["b_pruned"][::-1][:4], jobs["b_distilled"]]
    assert sb["evaluations"][-1]["weights"] == "distilled"
    assert sb["evaluations"][-1]["perplexity"]["perplexity"] == 50.0


def test_compare_adds_nothing_when_the_newest_five_hold_both_weights(client, rows):
    *_, c, jobs = rows
    r = client.get(f"/api/v1/compare?students={c}")
    assert r.status_code == 200, r.text
    assert [x["job_id"] for x in r.json()["models"][0]["evaluations"]] == jobs["c"][::-1][:5]
