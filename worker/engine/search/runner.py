"""`run_search`: enumerate the space, keep what meets every budget, score it, rank it.

Order of work, cheapest filter first: computed budgets (parameters, memory) on every architecture;
measured ones (latency, prefill, throughput) only on the shapes that passed, each distinct shape timed
once (latency.py's cache); the frontier (nothing that could grow one step and still fit); then the
held-out loss of what is left (scoring.py), grouped by width so depth variants share work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.engine.adapters import arch_spec
from worker.engine.plan import PrunePlan, resulting_spec
from worker.engine.search.budgets import Budget, computed_cost, measured_cost, parse_budget
from worker.engine.search.latency import LatencyCache
from worker.engine.search.scoring import WidthGroupScorer
from worker.engine.search.settings import SearchSettings
from worker.engine.search.space import (
    Architecture,
    ComputedCosts,
    axis_values,
    enumerate_architectures,
    frontier,
)

Progress = Callable[[int, int, str], None] | None
PARAMS = parse_budget("params=100%")  # prices the smallest architecture for the "nothing fits" note
MAX_ARCHITECTURES = 2_000_000  # enumerated (cheap, torch-free); what is scored is capped by max_candidates


@dataclass
class SearchReport:
    teacher: dict
    budgets: list[dict]
    settings: dict
    space: dict
    stats: dict
    candidates: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "teacher": self.teacher,
            "budgets": self.budgets,
            "settings": self.settings,
            "space": self.space,
            "stats": self.stats,
            "candidates": self.candidates,
        }


def heldout_batches(tokenizer, settings: SearchSettings) -> list[dict]:
    """The evaluation windows: `eval_samples` windows of the held-out split (never the calibration one
    the importance scores came from, by default)."""
    from worker.engine.data import calibration_batches, read_documents

    return calibration_batches(
        tokenizer,
        read_documents(settings.data, settings.split),
        seq_len=settings.eval_seq_len,
        num_samples=settings.eval_samples,
        batch_size=settings.eval_batch_size,
        seed=settings.seed,
    )


def run_search(
    model,
    tokenizer,
    importance,
    settings: SearchSettings,
    *,
    progress: Progress = None,
    latency_cache: str | None = None,
    batches: list[dict] | None = None,
) -> SearchReport:
    """Every architecture within the budgets, ranked by held-out LM loss (see the module note).

    `importance`: an ImportanceResult of this teacher; `batches`: evaluation batches to use instead of
    the settings' held-out split (tests)."""
    say = progress or (lambda done, total, message: None)
    started = time.perf_counter()
    spec = arch_spec(model)
    scores = importance.scores()
    budgets = [parse_budget(t, settings.latency_batch, settings.latency_context) for t in settings.budgets]
    architectures = enumerate_architectures(spec, scores, settings)
    if len(architectures) > MAX_ARCHITECTURES:
        raise ValueError(
            f"mlp_step: the space holds {len(architectures)} architectures, more than {MAX_ARCHITECTURES}; "
            f"use larger steps (mlp_step, hidden_step) or tighter cut limits"
        )
    cache = LatencyCache(latency_cache) if any(b.measured for b in budgets) else None
    teacher_arch = architectures[0]  # the uncut point of the space
    teacher_figures = {b.text: _cost(b, teacher_arch, spec, model, cache, settings) for b in budgets}
    limits = {b.text: b.limit(teacher_figures[b.text]) for b in budgets}

    fitting = architectures
    costs = ComputedCosts(spec)
    for b in budgets:
        if not b.measured:
            fitting = [a for a in fitting if b.fits(costs(b, a), limits[b.text], settings.tolerance)]
    measured = [b for b in budgets if b.measured]
    timings: dict[tuple, dict] = {}
    if measured:
        shapes = {a.shape_key(): a for a in fitting}
        for i, (key, a) in enumerate(shapes.items()):
            say(i, len(shapes), f"timing shape {i + 1}/{len(shapes)}")
            for b in measured:
                timings[(key, b.text)] = _timing(b, a, spec, model, cache, settings)
        fitting = [
            a
            for a in fitting
            if all(
                b.fits(measured_cost(b, timings[(a.shape_key(), b.text)]), limits[b.text], settings.tolerance)
                for b in measured
            )
        ]
    within_budget = len(fitting)
    note = None
    if not fitting:
        smallest = min(architectures, key=lambda a: costs(PARAMS, a))
        total = costs(PARAMS, smallest)
        note = (
            f"no architecture of the space meets {', '.join(settings.budgets)}; the smallest "
            f"({smallest.id}) keeps {total:,.0f} parameters ({100 * total / spec.param_count()['total']:.1f}% "
            f"of the teacher): loosen the cut limits (max_width_cut, max_depth_cut, max_cut) or the budgets"
        )
    listed = frontier(fitting, spec, settings) if settings.frontier_only else fitting
    listed = [a for a in listed if a.cut_kind(spec) != "none"] or listed  # the teacher is the reference
    if len(listed) > settings.max_candidates:
        raise ValueError(
            f"max_candidates: {len(listed)} candidates meet the budgets, more than max_candidates="
            f"{settings.max_candidates}; raise it, tighten the budgets or use larger steps"
        )

    if batches is None and tokenizer is None:
        raise ValueError("the held-out text needs the teacher's tokenizer (or pass batches)")
    eval_batches = batches if batches is not None else heldout_batches(tokenizer, settings)
    score_started = time.perf_counter()
    losses, layer_forwards, naive = _score(model, spec, scores, [teacher_arch, *listed], eval_batches, say)
    score_seconds = time.perf_counter() - score_started
    plans = {a.id: a.plan(spec, scores) for a in listed}

    teacher_params = spec.param_count()["total"]
    rows = []
    for a in listed:
        student = a.spec(spec)
        plan = plans[a.id]
        assert resulting_spec(plan, spec).param_count() == student.param_count()  # one cost model
        nll, tokens = losses[a.id]
        loss = nll / max(tokens, 1.0)
        row = {
            "id": a.id,
            "cut": a.cut_kind(spec),
            "axes": a.axes(),
            "plan": plan.model_dump(mode="json"),
            "params": student.param_count()["total"],
            "params_fraction": round(student.param_count()["total"] / teacher_params, 6),
            "params_non_embedding": student.param_count()["non_embedding"],
            "flops_per_token": student.flops_per_token(),
            "kv_cache_bytes_per_token": student.kv_cache_bytes_per_token(),
            "memory_bytes": None,
            "latency": None,
            "budgets": {},
            "loss": loss,
            "perplexity": math.exp(min(loss, 700)),
            "loss_tokens": tokens,
        }
        for b in budgets:
            if b.measured:
                timing = timings[(a.shape_key(), b.text)]
                value = measured_cost(b, timing)
                row["latency"] = row["latency"] or timing
            else:
                value = computed_cost(b, student)
                if b.kind == "memory" and row["memory_bytes"] is None:
                    row["memory_bytes"] = int(value)
            row["budgets"][b.text] = {
                "value": value,
                "limit": limits[b.text],
                "fits": b.fits(value, limits[b.text], settings.tolerance),
            }
        rows.append(row)
    rows.sort(key=lambda r: (r["loss"], -r["params"], r["id"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["lm_eval"] = None
    if settings.lm_eval_task:
        _lm_eval_top(model, tokenizer, rows[: settings.lm_eval_top], settings, say)
    seconds = time.perf_counter() - started
    t_nll, t_tokens = losses[teacher_arch.id]
    teacher = {
        "params": teacher_params,
        "loss": t_nll / max(t_tokens, 1.0),
        "arch": teacher_arch.axes(),
        "budgets": teacher_figures,
    }
    values = axis_values(spec, settings)
    space = {
        "num_layers": sorted({a.num_layers for a in architectures}, reverse=True),
        "heads": [{"heads_per_layer": h, "head_mode": m, "num_kv_heads": g} for h, m, g in values["heads"]],
        "intermediate_size": values["intermediate_size"],
        "hidden_size": {str(h): sizes for h, sizes in values["hidden_size"].items()},  # per head count
    }
    stats = {
        "enumerated": len(architectures),
        "within_budget": within_budget,
        "listed": len(rows),
        "evaluated": len(rows),
        "shapes_timed": cache.measured if cache else 0,
        "latency_cache_hits": cache.hits if cache else 0,
        "eval_tokens": t_tokens,
        "layer_forwards": layer_forwards,
        "naive_layer_forwards": naive,
        "seconds": round(seconds, 3),
        "scoring_seconds": round(score_seconds, 3),
        "candidates_per_minute": round(60.0 * len(rows) / score_seconds, 1)
        if rows and score_seconds > 0
        else None,
        "note": note,
    }
    budgets_json = [
        {
            "kind": b.kind,
            "text": b.text,
            "limit": limits[b.text],
            "batch": b.batch,
            "context": b.context,
            "minimum": b.is_minimum,
        }
        for b in budgets
    ]
    return SearchReport(teacher, budgets_json, settings.model_dump(), space, stats, rows)


def _lm_eval_top(model, tokenizer, rows: list[dict], settings: SearchSettings, say) -> None:
    """The optional lm-eval task on the best candidates, each really cut (lm-eval runs whole models)."""
    from worker.engine.evaluation.lm_eval_runner import run_lm_eval
    from worker.engine.search.scoring import cut_copy

    if tokenizer is None:
        raise ValueError("lm_eval_task: lm-eval needs the teacher's tokenizer")
    for i, row in enumerate(rows):
        say(i, len(rows), f"lm-eval {settings.lm_eval_task} on candidate {i + 1}/{len(rows)}")
        student = cut_copy(model, PrunePlan.model_validate(row["plan"]))
        row["lm_eval"] = run_lm_eval(
            student, tokenizer, [settings.lm_eval_task], limit=settings.lm_eval_limit, seed=settings.seed
        )
        del student


def _timing(b: Budget, a: Architecture, spec, model, cache: LatencyCache, settings: SearchSettings) -> dict:
    return cache.timing(
        model, a.spec(spec), batch=b.batch, context=b.context, new_tokens=settings.latency_new_tokens
    )


def _cost(b: Budget, a: Architecture, spec, model, cache, settings) -> float:
    if b.measured:
        return measured_cost(b, _timing(b, a, spec, model, cache, settings))
    return computed_cost(b, a.spec(spec))


def _score(model, spec, scores, archs: list[Architecture], batches, say) -> tuple[dict, int, int]:
    """{arch id: (summed NLL, tokens)} with one cut model per width setting."""
    groups: dict[tuple, list[Architecture]] = {}
    for a in archs:
        groups.setdefault(a.width_key(), []).append(a)
    out: dict[str, tuple[float, float]] = {}
    forwards = naive = 0
    done = 0
    for members in groups.values():
        first = members[0]
        width_plan = _width_plan(first, spec, scores)
        scorer = WidthGroupScorer(model, width_plan)
        kept = [tuple(i for i in range(spec.num_layers) if i not in a.drop_layers) for a in members]
        for a, result in zip(members, scorer.losses(kept, batches)):
            out[a.id] = result
        forwards += scorer.layer_forwards
        naive += scorer.naive_layer_forwards
        done += len(members)
        say(done, len(archs), f"scored {done}/{len(archs)} candidates")
    return out, forwards, naive


def _width_plan(a: Architecture, spec, scores) -> PrunePlan:
    """The width cuts of `a` in every layer (no layer dropped): the cut model its depth variants share."""
    full_depth = Architecture(
        spec.num_layers,
        (),
        "none",
        a.heads_per_layer,
        a.head_mode,
        a.num_kv_heads,
        a.intermediate_size,
        a.hidden_size,
    )
    return full_depth.plan(spec, scores)
