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
from worker.engine.memplan import dtype_bytes
from worker.engine.plan import PrunePlan, resulting_spec
from worker.engine.search.budgets import Budget, computed_cost, measured_cost, parse_budget
from worker.engine.search.feasible import LOOSEN, smallest
from worker.engine.search.latency import LatencyCache
from worker.engine.search.noise import paired_difference, within_noise
from worker.engine.search.rate import candidates_per_minute, no_rate_reason
from worker.engine.search.scoring import WidthGroupScorer, WindowLosses
from worker.engine.search.settings import SearchSettings
from worker.engine.search.space import (
    Architecture,
    ComputedCosts,
    axis_values,
    enumerate_architectures,
    frontier,
)

Progress = Callable[[int, int, str], None] | None
MAX_ARCHITECTURES = 2_000_000  # enumerated (cheap, torch-free); what is scored is capped by max_candidates


@dataclass
class SearchReport:
    teacher: dict
    budgets: list[dict]
    settings: dict
    space: dict
    stats: dict
    candidates: list[dict] = field(default_factory=list)
    basis: dict = field(default_factory=dict)  # what each figure is in: `cost_basis`

    def to_json(self) -> dict:
        return {
            "teacher": self.teacher,
            "budgets": self.budgets,
            "settings": self.settings,
            "space": self.space,
            "stats": self.stats,
            "candidates": self.candidates,
            "basis": self.basis,
        }


def heldout_batches(tokenizer, settings: SearchSettings) -> list[dict]:
    """The evaluation windows: `eval_samples` windows of the held-out split (never the calibration one
    the importance scores came from, by default)."""
    from worker.engine.data import calibration_batches, read_documents

    documents = read_documents(settings.data, settings.split)
    try:
        return calibration_batches(
            tokenizer,
            documents,
            seq_len=settings.eval_seq_len,
            num_samples=settings.eval_samples,
            batch_size=settings.eval_batch_size,
            seed=settings.seed,
            split=settings.split,
        )
    except ValueError as exc:  # too few windows: the setting to change is eval_samples (or eval_seq_len)
        raise ValueError(f"eval_samples: {settings.eval_samples} is too many; {exc}") from None


def run_search(
    model,
    tokenizer,
    importance,
    settings: SearchSettings,
    *,
    progress: Progress = None,
    latency_cache: str | None = None,
    batches: list[dict] | None = None,
    stored_dtype: str | None = None,
) -> SearchReport:
    """Every architecture within the budgets, ranked by held-out LM loss (see the module note).

    `importance`: an ImportanceResult of this teacher; `batches`: evaluation batches to use instead of
    the settings' held-out split (tests); `stored_dtype`: the dtype the teacher's checkpoint is in (and
    its students are saved in), which memory and KV cache are priced in whatever dtype it is scored in
    (`settings.dtype`); None: the model's own (loading.stored_dtype reads a checkpoint's)."""
    say = progress or (lambda done, total, message: None)
    started = time.perf_counter()
    loaded = arch_spec(model)
    spec = loaded.model_copy(update={"dtype": stored_dtype}) if stored_dtype else loaded
    scores = importance.scores()
    budgets = [parse_budget(t, settings.latency_batch, settings.latency_context) for t in settings.budgets]
    architectures = _enumerate(spec, scores, settings)
    cache = LatencyCache(latency_cache) if any(b.measured for b in budgets) else None
    teacher_arch = architectures[0]  # the uncut point of the space
    teacher_figures = {b.text: _cost(b, teacher_arch, spec, model, cache, settings) for b in budgets}
    limits = {b.text: b.limit(teacher_figures[b.text]) for b in budgets}

    costs = ComputedCosts(spec)
    computed = _within_computed_budgets(architectures, budgets, limits, costs, settings)
    fitting, timings = _within_measured_budgets(computed, budgets, limits, spec, model, cache, settings, say)
    note = None
    if not fitting:
        pools = _Pools(architectures, computed, costs, timings)
        note = _nothing_fits_note(pools, budgets, limits, teacher_figures, settings)
    listed = _candidates(fitting, spec, settings)

    eval_batches = _evaluation_batches(tokenizer, settings, batches)
    scoring = _score_timed(model, spec, scores, [teacher_arch, *listed], eval_batches, say)
    rows = _ranked_rows(listed, spec, scores, scoring.losses, budgets, limits, timings, settings)
    if settings.lm_eval_task:
        _lm_eval_top(model, tokenizer, rows[: settings.lm_eval_top], settings, say)
    seconds = time.perf_counter() - started

    teacher = _teacher_json(spec, teacher_arch, scoring.losses[teacher_arch.id].total, teacher_figures)
    t_tokens = scoring.losses[teacher_arch.id].total[1]
    stats = _stats(len(architectures), len(fitting), len(rows), cache, t_tokens, scoring, seconds, note)
    space = _space_json(architectures, spec, settings)
    basis = cost_basis(spec, loaded.dtype)
    return SearchReport(
        teacher, _budgets_json(budgets, limits), settings.model_dump(), space, stats, rows, basis
    )


def cost_basis(spec, scoring_dtype: str) -> dict:
    """What the report's figures are in: memory and KV cache in the teacher's stored dtype (a student is
    saved and deployed in it); losses and measured latencies in the dtype the teacher was loaded in for
    scoring (shapes are timed in it too: a CPU has no fast bfloat16 to time); FLOPs/token at the
    teacher's context (FLOPS_CONTEXT tokens, or its positions when fewer)."""
    return {
        "memory_dtype": spec.dtype,
        "kv_cache_dtype": spec.dtype,
        "loss_dtype": scoring_dtype,
        "latency_dtype": scoring_dtype,
        "flops_context": spec.flops_context(),
    }


def _enumerate(spec, scores, settings: SearchSettings) -> list[Architecture]:
    """The whole space, the teacher (its uncut point) first; a space past MAX_ARCHITECTURES is refused
    with the settings to change before any of it is priced (what is scored is capped by max_candidates)."""
    architectures = enumerate_architectures(spec, scores, settings)
    if len(architectures) > MAX_ARCHITECTURES:
        raise ValueError(
            f"mlp_step: the space holds {len(architectures)} architectures, more than {MAX_ARCHITECTURES}; "
            f"use larger steps (mlp_step, hidden_step) or tighter cut limits"
        )
    return architectures


def _within_computed_budgets(
    architectures: list[Architecture],
    budgets: list[Budget],
    limits: dict,
    costs: ComputedCosts,
    settings: SearchSettings,
) -> list[Architecture]:
    """The architectures every computed budget (parameters, memory) admits: the cheap filter, run first
    so that only these shapes are timed."""
    fitting = architectures
    for b in budgets:
        if not b.measured:
            fitting = [a for a in fitting if b.fits(costs(b, a), limits[b.text], settings.tolerance)]
    return fitting


def _within_measured_budgets(
    fitting: list[Architecture], budgets: list[Budget], limits: dict, spec, model, cache, settings, say
) -> tuple[list[Architecture], dict[tuple, dict]]:
    """Those of `fitting` every measured budget (latency, prefill, throughput) admits, and the timings by
    (shape, budget): each distinct shape is timed once, as timing is slow and many architectures share
    a shape."""
    measured = [b for b in budgets if b.measured]
    timings: dict[tuple, dict] = {}
    if not measured:
        return fitting, timings
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
    return fitting, timings


@dataclass
class _Pools:
    """What an empty search's note draws on: the whole space priced by the computed budgets, and the
    shapes within those that the measured budgets timed."""

    architectures: list[Architecture]
    computed: list[Architecture]
    costs: ComputedCosts
    timings: dict[tuple, dict]

    def values(self, b: Budget) -> list[tuple[float, Architecture]]:
        if b.measured:
            return [(measured_cost(b, self.timings[(a.shape_key(), b.text)]), a) for a in self.computed]
        return [(self.costs(b, a), a) for a in self.architectures]


def _nothing_fits_note(
    pools: _Pools, budgets: list[Budget], limits: dict, teacher_figures: dict, settings: SearchSettings
) -> str:
    """Why the report is empty, in the words of the budget's kind (the fewest parameters, the least
    memory, the fastest decode, the highest throughput): the first budget nothing meets on its own and
    how close the space gets, else that the budgets together rule everything out."""
    some_computed = any(not b.measured for b in budgets)
    for b in budgets:
        values = pools.values(b)
        if not values:
            continue
        value, arch = (max if b.is_minimum else min)(values, key=lambda va: va[0])
        if b.fits(value, limits[b.text], settings.tolerance):
            continue
        among = "any shape within the computed budgets" if b.measured and some_computed else None
        why = smallest(b, value, teacher_figures[b.text], arch.id, *([among] if among else []))
        return f"no architecture of the space meets {b.text}: {why}; {LOOSEN}"
    return (
        f"no architecture of the space meets {' and '.join(settings.budgets)} together (each alone is met "
        f"by some): {LOOSEN}s"
    )


def _candidates(fitting: list[Architecture], spec, settings: SearchSettings) -> list[Architecture]:
    """What gets scored: the frontier of `fitting` (or all of it), without the teacher, which is scored
    as the reference anyway; refused beyond max_candidates, as scoring is the expensive step."""
    listed = frontier(fitting, spec, settings) if settings.frontier_only else fitting
    listed = [a for a in listed if a.cut_kind(spec) != "none"] or listed  # the teacher is the reference
    if len(listed) > settings.max_candidates:
        raise ValueError(
            f"max_candidates: {len(listed)} candidates meet the budgets, more than max_candidates="
            f"{settings.max_candidates}; raise it, tighten the budgets or use larger steps"
        )
    return listed


def _evaluation_batches(tokenizer, settings: SearchSettings, batches: list[dict] | None) -> list[dict]:
    """The given batches (tests), else the held-out split, which needs the tokenizer."""
    if batches is None and tokenizer is None:
        raise ValueError("the held-out text needs the teacher's tokenizer (or pass batches)")
    return batches if batches is not None else heldout_batches(tokenizer, settings)


@dataclass
class _Scoring:
    """The held-out losses ({arch id: its per-window losses}) and what they cost, for the report's stats."""

    losses: dict[str, WindowLosses]
    layer_forwards: int
    naive_layer_forwards: int
    seconds: float


def _score_timed(model, spec, scores, archs: list[Architecture], batches, say) -> _Scoring:
    """`_score`, timed on its own: the report gives the scoring rate apart from enumeration and timing."""
    started = time.perf_counter()
    losses, layer_forwards, naive = _score(model, spec, scores, archs, batches, say)
    return _Scoring(losses, layer_forwards, naive, time.perf_counter() - started)


def _ranked_rows(
    listed: list[Architecture],
    spec,
    scores,
    losses: dict,
    budgets: list[Budget],
    limits: dict,
    timings: dict[tuple, dict],
    settings: SearchSettings,
) -> list[dict]:
    """The report's candidates, best held-out loss first (ties: more parameters, then id)."""
    plans = {a.id: a.plan(spec, scores) for a in listed}
    teacher_params = spec.param_count()["total"]
    rows = []
    for a in listed:
        student = a.spec(spec)
        assert resulting_spec(plans[a.id], spec).param_count() == student.param_count()  # one cost model
        row = _row(a, student, spec, plans[a.id], losses[a.id].total, teacher_params)
        _add_budgets(row, a, student, budgets, limits, timings, settings.tolerance)
        rows.append(row)
    rows.sort(key=lambda r: (r["loss"], -r["params"], r["id"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["lm_eval"] = None
    if rows:
        _add_noise(rows, losses)
    return rows


def _add_noise(rows: list[dict], losses: dict[str, WindowLosses]) -> None:
    """Each candidate's loss difference from rank 1 and its paired standard error over the held-out
    windows (noise.py), and whether the two are within noise of each other: a rank the sample cannot
    tell from #1 is not a finding. Rank 1 is the reference: 0, 0 and None."""
    best = losses[rows[0]["id"]]
    for row in rows:
        mine = losses[row["id"]]
        diff, se = paired_difference(mine.nll, best.nll, best.tokens)
        row["loss_diff_vs_best"] = diff
        row["loss_diff_se"] = se if row["rank"] > 1 else 0.0
        row["within_noise_of_best"] = within_noise(diff, se) if row["rank"] > 1 else None


def _row(a: Architecture, student, spec, plan: PrunePlan, loss_sums: tuple, teacher_params: int) -> dict:
    """One candidate's shape, computed costs and held-out loss (`_add_budgets` adds its budgets)."""
    nll, tokens = loss_sums
    loss = nll / max(tokens, 1.0)
    return {
        "id": a.id,
        "cut": a.cut_kind(spec),
        "axes": a.axes(),
        "plan": plan.model_dump(mode="json"),
        "params": student.param_count()["total"],
        "params_fraction": round(student.param_count()["total"] / teacher_params, 6),
        "params_non_embedding": student.param_count()["non_embedding"],
        "flops_per_token": student.flops_per_token(spec.flops_context()),  # the teacher's context
        "kv_cache_bytes_per_token": student.kv_cache_bytes_per_token(bytes_per_value=dtype_bytes(spec.dtype)),
        "memory_bytes": None,
        "latency": None,
        "budgets": {},
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "loss_tokens": tokens,
    }


def _add_budgets(
    row: dict, a: Architecture, student, budgets: list[Budget], limits: dict, timings: dict, tolerance: float
) -> None:
    """Each budget's value for the candidate, its limit and whether it fits, so the report shows how
    close each candidate is; the first measured budget's timing is the row's latency, the first memory
    budget's value its memory_bytes."""
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
            "fits": b.fits(value, limits[b.text], tolerance),
            "over_limit": b.over_limit(value, limits[b.text]),
        }


def _teacher_json(spec, teacher_arch: Architecture, loss_sums: tuple, figures: dict) -> dict:
    """The reference every candidate is compared with: the teacher's size, loss, shape and budget figures."""
    t_nll, t_tokens = loss_sums
    return {
        "params": spec.param_count()["total"],
        "flops_per_token": spec.flops_per_token(spec.flops_context()),
        "kv_cache_bytes_per_token": spec.kv_cache_bytes_per_token(bytes_per_value=dtype_bytes(spec.dtype)),
        "loss": t_nll / max(t_tokens, 1.0),
        "arch": teacher_arch.axes(),
        "budgets": figures,
    }


def _stats(
    enumerated: int,
    within_budget: int,
    rows: int,
    cache: LatencyCache | None,
    eval_tokens: float,
    scoring: _Scoring,
    seconds: float,
    note: str | None,
) -> dict:
    """What each step kept and what the search cost, so a report says where the space narrowed and
    where the time went."""
    return {
        "enumerated": enumerated,
        "within_budget": within_budget,
        "listed": rows,
        "evaluated": rows,
        "shapes_timed": cache.measured if cache else 0,
        "latency_cache_hits": cache.hits if cache else 0,
        "eval_tokens": eval_tokens,
        "layer_forwards": scoring.layer_forwards,
        "naive_layer_forwards": scoring.naive_layer_forwards,
        "seconds": round(seconds, 3),
        "scoring_seconds": round(scoring.seconds, 3),
        "candidates_per_minute": candidates_per_minute(rows, scoring.seconds),
        "rate_note": no_rate_reason(rows, scoring.seconds),
        "note": note,
    }


def _space_json(architectures: list[Architecture], spec, settings: SearchSettings) -> dict:
    """The values each axis of the space takes, so the report says what was searched, not only what won."""
    values = axis_values(spec, settings)
    return {
        "num_layers": sorted({a.num_layers for a in architectures}, reverse=True),
        "heads": [{"heads_per_layer": h, "head_mode": m, "num_kv_heads": g} for h, m, g in values["heads"]],
        "intermediate_size": values["intermediate_size"],
        "hidden_size": {str(h): sizes for h, sizes in values["hidden_size"].items()},  # per head count
    }


def _budgets_json(budgets: list[Budget], limits: dict) -> list[dict]:
    """The parsed budgets with their absolute limits (a `%` budget resolved against the teacher)."""
    return [
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
    """{arch id: its per-window losses} with one cut model per width setting. `archs[0]` is the teacher,
    scored as the reference: progress counts the candidates without it."""
    groups: dict[tuple, list[Architecture]] = {}
    for a in archs:
        groups.setdefault(a.width_key(), []).append(a)
    out: dict[str, WindowLosses] = {}
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
        done_, total = done - 1, len(archs) - 1
        say(done_, total, f"scored {done_}/{total} candidates (+ the teacher)")
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
