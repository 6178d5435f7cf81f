"""Refuse a job that fits no live worker's memory (409), naming the nearest setting that does.

The estimate is the memory planner's (worker/engine/memplan/, torch-free); the capacities come from
the worker registry (each entry's `memory`, refreshed with the worker's heartbeat; `host_memory`, the
host's RAM, where a job's tensors live outside the device; `spill_disk`, what a streamed importance
pass may write to disk). Only workers that consume the job's queue count, and only those that report
their memory: with none (no worker yet, or workers from before this field) nothing is refused and the
job waits as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sqlalchemy.orm import Session

from backend import fleet
from backend.errors import Conflict, Unavailable
from backend.models import Student, Teacher
from backend.routing import GPU
from backend.settings import Settings
from worker.engine import memplan
from worker.engine.spill_disk import DISK_RESERVE_BYTES, disk_tier_limit


def _workers(settings: Settings, queue: str) -> list[dict]:
    try:
        workers = fleet.live_workers(settings)
    except Exception as exc:
        raise Unavailable(f"could not read the worker registry: broker unreachable ({exc})") from exc
    return [w for w in workers if queue in w.get("queues", [])]


def device_count(worker: dict) -> int:
    """The ranks a worker offers one job (worker.device_inventory); entries from before the field: 1."""
    return int(worker.get("device_count") or 1)


def sized_workers(settings: Settings, queue: str, gpus: int = 1) -> list[dict]:
    """The live workers on `queue` that report their memory and have at least `gpus` devices, the most
    usable device memory first (ties: in the registry's order, as GET /workers lists them)."""
    able = [w for w in _workers(settings, queue) if w.get("memory") and device_count(w) >= gpus]
    return sorted(able, key=lambda w: memplan.usable_bytes(w["memory"]), reverse=True)


def worker_name(worker: dict) -> str:
    return f"{worker.get('hostname')} {worker.get('device')}"


def capacities(settings: Settings, queue: str, gpus: int = 1) -> list[tuple[int, str]]:
    """(usable bytes, "host device") of each live worker on `queue` that reports its memory and has at
    least `gpus` devices."""
    return sorted(
        ((memplan.usable_bytes(w["memory"]), worker_name(w)) for w in sized_workers(settings, queue, gpus)),
        reverse=True,
    )


def check_devices(settings: Settings, queue: str, what: str, gpus: int, nodes: int = 1) -> None:
    """409 when no live worker on `queue` has `gpus` devices (a node's ranks all run on the worker that
    takes it), or when fewer than `nodes` such workers are live (a gang needs that many distinct
    workers, worker.gang). With no live worker at all the job waits, as for memory."""
    if gpus <= 1 and nodes <= 1:
        return
    workers = _workers(settings, queue)
    if not workers:
        return
    best = max(workers, key=device_count)
    able = [w for w in workers if device_count(w) >= gpus]
    if able and len(able) < nodes:
        names = ", ".join(f"{w.get('hostname')}:{w.get('pid')}" for w in able)
        raise Conflict(
            f"this {what} asks for {nodes} workers with {gpus} device(s) each, but the {queue!r} "
            f"queue has {len(able)} live ({names}); use nodes <= {len(able)} or start more workers",
            field=("nodes",),
            nearby=list(range(1, len(able) + 1))[-3:],
        )
    if able:
        return
    raise Conflict(
        f"this {what} asks for {gpus} devices on one worker, more than any live worker on the "
        f"{queue!r} queue has (largest: {device_count(best)} on {best.get('hostname')} {best.get('device')}); "
        f"use gpus <= {device_count(best)}",
        field=("gpus",),
        nearby=[device_count(best)],
    )


def refuse_unless_fits(
    settings: Settings,
    queue: str,
    what: str,
    need: Callable[[dict], int],
    params: dict,
    candidates: list[dict],
) -> None:
    caps = capacities(settings, queue, int(params.get("gpus", 1)))
    if not caps:
        return
    # A job over `nodes` workers needs that many able to hold it: the nodes-th largest capacity counts
    # (check_devices has refused fewer live workers than nodes; fewer reporting memory: the smallest).
    nodes = int(params.get("nodes", 1))
    best, where = caps[min(nodes, len(caps)) - 1]
    needed = need(params)
    if needed <= best:
        return
    if nodes > 1:
        message = (
            f"this {what} needs {memplan.format_bytes(needed)} per device on each of {nodes} workers, but "
            f"only {sum(c >= needed for c, _ in caps)} live worker(s) on the {queue!r} queue can give that "
            f"(the smallest of the {nodes} largest: {memplan.format_bytes(best)} on {where})"
        )
    else:
        message = (
            f"this {what} needs {memplan.format_bytes(needed)} per device, more than any live worker "
            f"on the {queue!r} queue can give (largest: {memplan.format_bytes(best)} on {where})"
        )
    for change in candidates:
        smaller = need({**params, **change})
        if smaller <= best:
            # The field to change first, with the value that fits (a change may touch two fields).
            field, value = next(iter(change.items()))
            raise Conflict(
                f"{message}; nearest setting that fits: {memplan.describe_change(change)} "
                f"({memplan.format_bytes(smaller)})",
                field=(field,),
                nearby=[value],
            )
    raise Conflict(f"{message}; no smaller setting fits either")


def check_job(
    settings: Settings,
    db: Session,
    kind: str,
    params: dict,
    queue: str,
    student_id: int | None,
    teacher_id: int,
) -> None:
    """409 when a distill, evaluate or benchmark job fits no live worker on its queue (by its number of
    devices, then by memory: `distill_need` for a distillation)."""
    what = {"distill": "distillation", "evaluate": "evaluation"}.get(kind, kind)
    if kind in ("distill", "evaluate"):  # a benchmark runs on one device (it has no gpus field)
        check_devices(settings, queue, what, int(params.get("gpus", 1)), int(params.get("nodes", 1)))
    student = db.get(Student, student_id) if student_id is not None else None
    teacher = db.get(Teacher, teacher_id)
    if not (teacher and teacher.spec) or (student_id is not None and not (student and student.spec)):
        return
    t_spec = memplan.spec_from_summary(teacher.spec)
    s_spec = memplan.spec_from_summary(student.spec) if student is not None else None
    device = "cuda" if queue == GPU else "cpu"
    if kind == "distill" and s_spec is not None:

        def need(p: dict) -> int:
            return distill_need(s_spec, t_spec, p, device)

        candidates = memplan.distill_candidates(params)
    elif kind == "evaluate":  # perplexity of one model at its default batch of windows

        def need(p: dict) -> int:
            return memplan.evaluation_memory(
                s_spec or t_spec, batch_size=memplan.EVAL_BATCH_SIZE, seq_len=p["seq_len"], device=device
            )["total"]

        candidates = []
    elif kind == "benchmark":  # teacher and student are loaded together, measured one after the other

        def need(p: dict) -> int:
            runs = [
                memplan.evaluation_memory(
                    spec,
                    batch_size=p["batch_size"],
                    seq_len=p["seq_len"],
                    new_tokens=p["new_tokens"],
                    device=device,  # the LM-head chunk is larger on CUDA (memplan.auto_chunk_tokens)
                )
                for spec in ([t_spec, s_spec] if s_spec is not None else [t_spec])
            ]
            weights = sum(r["parts"]["weights"] for r in runs)
            return weights + max(r["total"] - r["parts"]["weights"] for r in runs)

        candidates = _halved_batches(params["batch_size"])
    else:
        return
    refuse_unless_fits(settings, queue, what, need, params, candidates)


PRUNE_LAYOUTS = {"never": ("in_memory",), "always": ("out_of_core",), "auto": ("in_memory", "out_of_core")}


def prune_need(t_spec, s_spec, p: dict) -> int:
    """A prune job's peak (memplan.prune_memory) in the mode it can run: `out_of_core` "never" cuts in
    memory (teacher + cut copy), "always" tensor by tensor (about one tensor); with "auto" the worker
    goes out of core when the teacher does not fit, so the smaller counts."""
    modes = PRUNE_LAYOUTS.get(p.get("out_of_core", "auto"), PRUNE_LAYOUTS["auto"])
    return min(memplan.prune_memory(t_spec, s_spec, mode=m)["total"] for m in modes)


def prune_memory_of(worker: dict, mode: str) -> tuple[int, str]:
    """(usable bytes, where) a cut in `mode` may use on `worker`. The out-of-core cut reads and cuts
    tensor by tensor in host RAM on every worker (out_of_core.prune_checkpoint never touches the
    device), so its entry's `host_memory` counts; the in-memory cut loads the teacher onto the worker's
    device and cuts it there (worker/handlers/prune_job.py): `memory` (a CPU worker's is its RAM). An
    entry from before `host_memory`: `memory`, as before. jobmemory.pruneMemoryOf mirrors it."""
    host = worker.get("host_memory") if mode == "out_of_core" else None
    if host:
        return memplan.usable_bytes(host), f"{worker.get('hostname')} host RAM"
    return memplan.usable_bytes(worker["memory"]), worker_name(worker)


def prune_threshold(worker: dict) -> int | None:
    """The teacher size (bytes) above which `worker` cuts an "auto" prune job out of core, as the
    worker resolves it (out_of_core.choose_mode): its own PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB (the
    entry's `out_of_core_threshold_bytes`: the worker's setting decides, not the API's), else half its
    host's available RAM (`host_memory`); None: unknown (an entry without either).
    jobmemory.pruneThreshold mirrors it."""
    threshold = worker.get("out_of_core_threshold_bytes")
    if threshold is not None:
        return int(threshold)
    host = worker.get("host_memory")
    if host:
        return int(int(host.get("free_bytes") or 0) * memplan.AUTO_OUT_OF_CORE_RAM_FRACTION)
    return None


def prune_modes_on(worker: dict, requested: str, teacher_bytes: int) -> tuple[str, ...]:
    """The modes a prune job may run in on `worker`: the requested one, or with "auto" out of core when
    the loaded teacher exceeds the worker's `prune_threshold`, else in memory; either when that is
    unknown. jobmemory.pruneModesOn mirrors it."""
    modes = PRUNE_LAYOUTS.get(requested, PRUNE_LAYOUTS["auto"])
    threshold = prune_threshold(worker) if len(modes) > 1 else None
    if threshold is None:
        return modes
    return ("out_of_core",) if teacher_bytes > threshold else ("in_memory",)


def prune_where(mode: str) -> str:
    """What a cut in `mode` is compared with, in the 409's words (and the dashboard's line)."""
    return "of host RAM (out of core)" if mode == "out_of_core" else "per device (in memory)"


def prune_fit(need: dict, teacher_bytes: int, workers: list[dict], requested: str) -> dict:
    """Where a prune job fits, per worker in the mode it would run there (`prune_modes_on`), each mode
    against the memory it runs in (`prune_memory_of`). `need`: bytes per mode (memplan.prune_memory);
    `workers`: most device memory first (`sized_workers`), at least one. Returns
    `fitting`: [{name, bytes, mode}] of each worker that fits (in its smallest fitting mode);
    `mode`, `need`: the mode the largest worker would run and what it needs; `largest`: [bytes, name]
    the most memory any worker gives that mode; `nearest`: when none fits, the other `out_of_core`
    setting that fits some worker ({out_of_core, mode, need}), else None.
    jobmemory.pruneFit mirrors it (the dashboard's "Create student" line)."""

    def fits(worker: dict, mode: str) -> bool:
        return need[mode] <= prune_memory_of(worker, mode)[0]

    fitting = []
    for w in workers:
        modes = [m for m in prune_modes_on(w, requested, teacher_bytes) if fits(w, m)]
        if modes:
            mode = min(modes, key=need.get)
            cap, name = prune_memory_of(w, mode)
            fitting.append({"name": name, "bytes": cap, "mode": mode})
    # the mode the largest worker would run (with auto known per worker) and how far it is
    mode = min(prune_modes_on(workers[0], requested, teacher_bytes), key=need.get)
    best, name = max((prune_memory_of(w, mode) for w in workers), key=lambda c: c[0])
    nearest = None
    if not fitting:
        for other, value in (("out_of_core", "always"), ("in_memory", "never")):
            if requested != value and any(fits(w, other) for w in workers):
                nearest = {"out_of_core": value, "mode": other, "need": need[other]}
                break
    return {"fitting": fitting, "mode": mode, "need": need[mode], "largest": [best, name], "nearest": nearest}


def check_prune(
    settings: Settings, teacher_spec: dict | None, plan_stats: dict | None, params: dict, queue: str
):
    """409 when a prune job fits no live worker on its queue in the mode it would run there
    (`prune_fit`: an out-of-core cut in host RAM, on a GPU worker too; "auto" resolved by each worker's
    own threshold), naming `out_of_core` when the other mode fits ("always": out of core; "never": in
    memory on the device). The student's spec is the plan's (`plan_stats["spec"]`); without one the
    teacher's stands in (an upper bound)."""
    if not teacher_spec:
        return
    workers = sized_workers(settings, queue)
    if not workers:
        return
    t_spec = memplan.spec_from_summary(teacher_spec)
    s_summary = (plan_stats or {}).get("spec")
    s_spec = memplan.spec_from_summary(s_summary) if s_summary else None
    runs = {m: memplan.prune_memory(t_spec, s_spec, mode=m) for m in ("in_memory", "out_of_core")}
    need = {m: r["total"] for m, r in runs.items()}
    teacher_bytes = runs["in_memory"]["parts"]["teacher_weights"]
    fit = prune_fit(need, teacher_bytes, workers, params.get("out_of_core", "auto"))
    if fit["fitting"]:
        return
    best, name = fit["largest"]
    message = (
        f"this prune job needs {memplan.format_bytes(fit['need'])} {prune_where(fit['mode'])}, more than "
        f"any live worker on the {queue!r} queue can give (largest: {memplan.format_bytes(best)} on {name})"
    )
    nearest = fit["nearest"]
    if nearest is None:
        raise Conflict(f"{message}; no smaller setting fits either")
    raise Conflict(
        f"{message}; nearest setting that fits: out_of_core={nearest['out_of_core']} "
        f"({memplan.format_bytes(nearest['need'])} {prune_where(nearest['mode'])})",
        field=("out_of_core",),
        nearby=[nearest["out_of_core"]],
    )


def distill_need(s_spec, t_spec, p: dict, device: str) -> int:
    """Bytes a distillation needs of each worker's device: over gpus x nodes ranks the planner's sharded
    step (each rank its shard of the student and the teacher; the worker replicates the teacher only when
    that fits too), per GPU on CUDA and times a node's ranks on a CPU host, whose memory they share. With
    teacher correction, the larger of that and memplan.teacher_correction_memory."""
    gpus = int(p.get("gpus", 1))
    teacher = None if p.get("baseline") else t_spec
    options = dict(
        batch_size=p["batch_size"],
        seq_len=p["seq_len"],
        weights_dtype=p.get("weights_dtype", "float32"),
        gradient_checkpointing=bool(p.get("gradient_checkpointing")),
        device=device,
        num_gpus=gpus * int(p.get("nodes", 1)),
    )
    total = memplan.distill_memory(s_spec, teacher, **options)["total"]
    if teacher is not None and p.get("teacher_correction_steps"):
        total = max(total, memplan.teacher_correction_memory(s_spec, teacher, **options)["total"])
    return total * (gpus if device == "cpu" else 1)


def _halved_batches(batch_size: int) -> list[dict]:
    out, b = [], batch_size // 2
    while b >= 1:
        out.append({"batch_size": b})
        b //= 2
    return out


def spill_limit(settings: Settings, params: dict) -> int | None:
    """The disk tier's limit in bytes a streamed pass will get: the job's `spill_limit_gb`, else
    PRUNESCOPE_SPILL_LIMIT_GB; None: the worker's own (`spill_disk_limit`)."""
    return memplan.spill_limit_bytes(
        params.get("spill_limit_gb") or getattr(settings, "spill_limit_gb", None)
    )


def spill_disk_limit(worker: dict) -> int | None:
    """The disk tier's limit a worker gives a run without a spill limit, from its entry's `spill_disk`
    (worker.engine.spill_disk: its spill directory's free space less a 2 GiB reserve, or its own
    PRUNESCOPE_SPILL_LIMIT_GB); None: not reported (entries from before the field)."""
    limit = (worker.get("spill_disk") or {}).get("limit_bytes")
    return None if limit is None else int(limit)


def disk_budget(worker: dict, limit: int | None) -> int | None:
    """The disk tier a streamed pass gets on `worker` (activation_store.StoreBudget.disk_tier): the spill
    limit `limit` (None: the worker's own, `spill_disk_limit`), never more than its spill disk's free
    space less the reserve (the entry's `spill_disk.free_bytes`; a larger limit would fill the disk, so
    the worker caps it: spill_disk.disk_tier_limit). None: not reported. jobmemory.diskBudget mirrors it."""
    if limit is None:
        return spill_disk_limit(worker)
    free = (worker.get("spill_disk") or {}).get("free_bytes")
    return limit if free is None else disk_tier_limit(int(free), limit)


def pinned_budget(worker: dict, device: str) -> int:
    """The pinned-RAM tier of a streamed pass on a CUDA worker: its host's available RAM less the
    reserve (activation_store.StoreBudget.measure), from the entry's `host_memory`; 0 on a CPU worker
    (its device is that RAM: the device tier) or when not reported."""
    host = worker.get("host_memory")
    if device != "cuda" or not host:
        return 0
    return max(0, memplan.usable_bytes(host) - memplan.HOST_RESERVE_BYTES)


def importance_layout(
    spec: memplan.ArchSpec,
    params: dict,
    device: str = "cpu",
    capacity: int | None = None,
    disk_budget: int | None = None,
    host_budget: int = 0,
) -> dict:
    """The layout a one-process importance run will take, as the worker chooses it: streamed with
    `offload` "always", or "auto" when the whole teacher exceeds `capacity` (bytes; None: unknown).
    `spill`: a streamed pass's activation stores outside the device (pinned RAM, disk); `passes` over
    the checkpoint (memplan.streamed_passes): the stores get what `capacity` leaves of the device
    (less the host reserve on a CPU), `host_budget` of pinned RAM (CUDA) and `disk_budget` of disk;
    None: not even one pass fits. frontend/js/jobmemory.js's importanceLayout mirrors it."""
    opts = memplan.importance_options(params, device)
    offload = params.get("offload", "auto")
    whole = memplan.importance_memory(spec, **opts, streamed=False)["total"]
    streamed = offload == "always" or (offload == "auto" and memplan.importance_streams(whole, capacity))
    if not streamed:
        return {"streamed": False, "spill": 0, "passes": 1}
    layered = memplan.importance_memory(spec, **opts, streamed=True, device_budget=0)
    passes = 1
    if disk_budget is not None:
        reserve = memplan.HOST_RESERVE_BYTES if device == "cpu" else 0
        room = 0 if capacity is None else max(0, capacity - layered["total"] - reserve)
        capped = memplan.importance_memory(
            spec, **opts, streamed=True, device_budget=room, host_budget=host_budget, disk_budget=disk_budget
        )
        passes = capped["settings"]["passes"]
    return {
        "streamed": True,
        "spill": layered["host_total"] + layered["disk"],
        "passes": passes,
        "store_bytes": layered["settings"]["store_bytes"],
    }


def worker_layout(spec: memplan.ArchSpec, params: dict, device: str, worker: dict, disk: int | None) -> dict:
    """`importance_layout` on one worker: its device memory, its pinned RAM (CUDA) and the spill limit
    `disk` capped at its free spill disk, else the disk tier the worker itself reports (`disk_budget`)."""
    return importance_layout(
        spec,
        params,
        device,
        memplan.usable_bytes(worker["memory"]),
        disk_budget(worker, disk),
        pinned_budget(worker, device),
    )


def best_layout(
    spec: memplan.ArchSpec, params: dict, device: str, workers: list[dict], disk: int | None
) -> tuple[dict, dict]:
    """(layout, worker): on the first of `workers` (most memory first, `sized_workers`) where one pass
    fits, else on the first. frontend/js/jobmemory.js's bestLayout mirrors it."""
    layouts = [(worker_layout(spec, params, device, w, disk), w) for w in workers]
    return next((pair for pair in layouts if pair[0]["passes"] is not None), layouts[0])


def check_importance(settings: Settings, teacher_spec: dict, params: dict, queue: str) -> dict:
    """409 when an importance run fits no live worker on its queue. With `offload` "auto" the worker
    streams the teacher layer by layer when it does not fit, so the smaller of the two layouts counts.
    A streamed pass spills the activation stores its device budget does not admit (pinned RAM, disk),
    so only its weights and one batch's working set must fit the device (`device_budget=0`).
    A streamed run whose stores cannot fit even one pass within the spill limit (`spill_limit_gb`, else
    PRUNESCOPE_SPILL_LIMIT_GB, else the disk tier each worker reports), its pinned RAM (CUDA) and the
    device room it leaves, on any worker, is a 409 naming `spill_limit_gb`. Returns the layout on the
    largest worker where one pass fits (`best_layout`; `passes` 1 when no worker reports its memory)."""
    spec = memplan.spec_from_summary(teacher_spec)
    device = "cuda" if queue == GPU else "cpu"
    offload = params.get("offload", "auto")
    ranks, nodes = int(params.get("gpus", 1)), int(params.get("nodes", 1))
    # N data-parallel ranks each load the teacher whole (a streamed pass runs in one process); on a CPU
    # worker they share one host memory, so it must hold N of them. Over M nodes, M workers must.
    one = ranks == 1 and nodes == 1
    layouts = {"never": (False,), "always": (True,)}.get(offload, (False, True)) if one else (False,)
    copies = ranks if device == "cpu" else 1
    check_devices(settings, queue, "importance run", ranks, nodes)

    def need(p: dict) -> int:
        opts = memplan.importance_options(p, device)
        return copies * min(
            memplan.importance_memory(spec, **opts, streamed=streamed, device_budget=0 if streamed else None)[
                "total"
            ]
            for streamed in layouts
        )

    refuse_unless_fits(settings, queue, "importance run", need, params, _halved_batches(params["batch_size"]))
    workers = sized_workers(settings, queue, ranks)
    if not (one and workers):
        return {"streamed": offload == "always", "spill": 0, "passes": 1}
    limit = spill_limit(settings, params)
    layout, worker = best_layout(spec, params, device, workers, limit)
    if layout["passes"] is None:  # on every worker; a disk budget is known (else one pass counts)
        capacity, pinned = memplan.usable_bytes(worker["memory"]), pinned_budget(worker, device)
        disk = disk_budget(worker, limit)
        fits = _smallest_spill_limit(spec, params, device, capacity, disk, pinned)
        # Figures in binary units (memplan.format_bytes); the limit to set is in the setting's own GB.
        fmt = memplan.format_bytes
        pinned_text = f", {fmt(pinned)} of pinned RAM" if pinned else ""
        if limit is not None and disk == limit:  # not capped by the worker's free disk
            room = f"the spill limit of {disk / 1e9:.4g} GB ({fmt(disk)})"  # as set (in GB), then in GiB
            fix = f"raise spill_limit_gb (or PRUNESCOPE_SPILL_LIMIT_GB) to at least {fits:g} (GB)"
        else:  # the worker's own disk (or it capped the job's limit): a larger spill_limit_gb would fill it
            room = f"the {fmt(disk)} its spill disk has free (beyond a {fmt(DISK_RESERVE_BYTES)} reserve)"
            fix = (
                f"free at least {fmt(fits * 1e9)} on the worker's spill disk or point PRUNESCOPE_SPILL_DIR to a "
                "larger one (spill_limit_gb can only lower the disk tier)"
            )
        raise Conflict(
            f"this importance run streams the teacher layer by layer, and its activation stores "
            f"({fmt(layout['store_bytes'])} each: every sample's hidden states) do not fit "
            f"even one pass in {room}{pinned_text} plus the memory the largest worker leaves "
            f"({worker_name(worker)}); {fix}, or use fewer samples or a shorter seq_len",
            field=("spill_limit_gb",),
            nearby=[fits],
        )
    return layout


def _smallest_spill_limit(
    spec, params: dict, device: str, capacity: int, disk: int, host_budget: int = 0
) -> float:
    """The smallest disk tier (GB, 2 decimals) with which the stores fit one pass."""

    def fits(gb: float) -> bool:
        limit = memplan.spill_limit_bytes(gb)
        return importance_layout(spec, params, device, capacity, limit, host_budget)["passes"] is not None

    gb = max(0.01, disk / 1e9)
    while not fits(gb):
        gb *= 2
    lo, hi = 0, math.ceil(gb * 100)  # hundredths of a GB: lo does not fit, hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid / 100) else (mid, hi)
    return hi / 100
