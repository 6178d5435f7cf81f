"""The workflow as the API returns it (GET /workflows/{id}; see /work/helper-notes/bakeoff-api.md and
backend/API.md): its job fields, and per branch the status, current step and each step's job."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from backend import serialize
from backend.models import Job
from backend.workflows.advance import definition_of, states_of, step_status
from worker.engine.distill_length import warmup_warning


def warnings(params: dict[str, Any]) -> list[str]:
    """What the workflow's settings make of its result, though accepted: a distillation that never
    leaves LR warm-up (a short bake-off that barely trains)."""
    return [w for w in (warmup_warning(params.get("distill") or {}),) if w]


def workflow(session: Session, job: Job) -> dict[str, Any]:
    states, steps = states_of(session, job)
    definition = definition_of(job)
    branches = []
    for index, state in enumerate(states):
        rows = []
        for step in definition.steps_of(state.branch, job.params):
            row = steps.latest(state.branch.key, step.name)
            child = steps.job_of(row)
            status, error = step_status(row, child)
            rows.append(
                {
                    "name": step.name,
                    "kind": step.kind,
                    "status": status,
                    "job_id": child.id if child is not None else None,
                    "tries": len(steps.tries(state.branch.key, step.name)),
                    "attempts": child.attempts if child is not None else 0,
                    "progress": child.progress if child is not None else 0.0,
                    "message": child.message if child is not None else None,
                    "error": error if status in ("failed", "cancelled") else None,
                }
            )
        cut = state.done.get("cut") or steps.job_of(steps.latest(state.branch.key, "cut"))
        branches.append(
            {
                "key": state.branch.key,
                "name": state.branch.name,
                "candidate_id": state.branch.spec.get("candidate_id"),
                "role": state.branch.role,
                "index": index,
                "plan_id": state.branch.spec.get("plan_id"),
                "student_id": cut.student_id if cut is not None else None,
                "status": state.status,
                "step": state.step,
                "error": state.error,
                "steps": rows,
            }
        )
    base = serialize.job(job)
    # The ranking: the final step's once the workflow finished, else the one the steps done so far give.
    standing = (job.result or {}) if (job.result or {}).get("ranking") else None
    if standing is None and definition.standing is not None:
        standing = definition.standing(session, job, {s.branch.key: s.done for s in states})
    return {
        **{k: base[k] for k in ("id", "status", "progress", "message", "error", "params", "result")},
        **{
            k: base[k] for k in ("teacher_id", "importance_run_id", "created_at", "started_at", "finished_at")
        },
        "definition": job.params.get("definition"),
        "name": job.params.get("name"),
        "warnings": warnings(job.params),
        "branches": branches,
        "ranking": standing,
    }
