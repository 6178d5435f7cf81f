"""The live memory line of every job form (frontend/js/jobmemory.js) says what the API's 409 check
(backend/memcheck.py) will say: for evaluate, benchmark and importance (every offload layout, scans,
samples) the JS need equals the smallest capacity the real check accepts, found by bisection."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from backend import memcheck
from backend.errors import Conflict
from tests.tiny_models import tiny_model
from tests.ui.dashboard_js import run_dashboard_js
from tests.ui.test_costmodel import llama8b
from worker.engine.adapters import arch_spec

DRIVER = """
import * as jm from "./js/jobmemory.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(({ fn, t, s, p, device }) => {
  if (fn === "distill") return jm.distillNeed(s, t, p, device);
  if (fn === "evaluate") return jm.evaluateNeed(s || t, { ...p, device });
  if (fn === "benchmark") return jm.benchmarkNeed(t, s, { ...p, device });
  if (fn === "importance") return jm.importanceNeed(t, p, device);
  if (fn === "prune") return jm.pruneNeed(t, s, p);
  throw new Error(fn);
})));
"""


def one_worker(free: int) -> dict:
    """A registry entry with `free` bytes of usable memory (its device and, unreported, its host) and
    devices enough for every case's ranks."""
    return {
        "hostname": "w",
        "device": "cpu",
        "queues": ["cpu", "gpu"],
        "memory": {"kind": "cpu", "free_bytes": free},
        "device_count": 64,
    }


def accepted_need(monkeypatch, check) -> int:
    """The smallest single-worker capacity `check()` accepts: what the API thinks the job needs."""
    box = {}
    monkeypatch.setattr(memcheck, "_workers", lambda *a, **k: [one_worker(box["cap"])])
    monkeypatch.setattr(memcheck, "check_devices", lambda *a, **k: None)

    def fits(cap: int) -> bool:
        box["cap"] = cap
        try:
            check()
        except (HTTPException, Conflict):  # the 409 (a domain error once memcheck raises those)
            return False
        return True

    lo, hi = 0, 1 << 50
    assert fits(hi) and not fits(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_forms_estimate_equals_the_api_check(tmp_path: Path, monkeypatch, device):
    teacher = arch_spec(tiny_model("llama")).summary()
    big = llama8b().summary()
    student = arch_spec(tiny_model("qwen3")).summary()
    queue = "gpu" if device == "cuda" else "cpu"
    settings = SimpleNamespace()
    rows = {1: SimpleNamespace(spec=teacher), 2: SimpleNamespace(spec=student), 3: SimpleNamespace(spec=big)}
    db = SimpleNamespace(get=lambda model, pk: rows.get(pk))
    cases, expected = [], []

    def job(kind, params, student_id, teacher_id):
        cases.append(
            {
                "fn": kind,
                "t": rows[teacher_id].spec,
                "s": rows[student_id].spec if student_id else None,
                "p": params,
                "device": device,
            }
        )
        expected.append(
            accepted_need(
                monkeypatch,
                lambda: memcheck.check_job(settings, db, kind, params, queue, student_id, teacher_id),
            )
        )

    job("evaluate", {"seq_len": 128}, 2, 1)
    for weights_dtype in ("float32", "bfloat16"):  # teacher correction: its phase, or the run's + a teacher
        correction = {"batch_size": 8, "seq_len": 256, "teacher_correction_steps": 5}
        job("distill", {**correction, "weights_dtype": weights_dtype, "gradient_checkpointing": False}, 2, 1)
    # Over ranks: the sharded step per GPU (per CPU host: times its ranks), with and without correction.
    for extra in (
        {"gpus": 2},
        {"gpus": 2, "nodes": 2, "teacher_correction_steps": 3},
        {"gpus": 4, "baseline": True},
    ):
        job("distill", {"batch_size": 8, "seq_len": 128, "gradient_checkpointing": True, **extra}, 2, 1)
    job("evaluate", {"seq_len": 512}, None, 3)
    job("benchmark", {"batch_size": 1, "seq_len": 128, "new_tokens": 32}, 2, 1)
    job("benchmark", {"batch_size": 4, "seq_len": 256, "new_tokens": 64}, None, 3)
    for params in [
        {"batch_size": 8, "seq_len": 128, "samples": 64, "scans": ["bi", "drop", "block"], "block_size": 2},
        {"batch_size": 4, "seq_len": 64, "samples": 16, "scans": [], "block_size": 2, "offload": "never"},
        {
            "batch_size": 2,
            "seq_len": 4096,
            "samples": 1024,
            "scans": ["bi", "angular"],
            "block_size": 4,
            "offload": "always",
        },
        {"batch_size": 2, "seq_len": 4096, "samples": 1024, "scans": ["drop", "block"], "block_size": 8},
        # packed blocks (stream): no padding mask; the others are documents, padded
        {"batch_size": 4, "seq_len": 512, "samples": 64, "scans": ["bi"], "stream": True, "offload": "never"},
    ]:
        for tid in (1, 3):
            cases.append({"fn": "importance", "t": rows[tid].spec, "p": params, "device": device})
            expected.append(
                accepted_need(
                    monkeypatch,
                    lambda t=tid, p=params: memcheck.check_importance(settings, rows[t].spec, p, queue),
                )
            )
    # Prune: in memory, out of core, auto (the smaller), with the plan's student spec or none.
    for mode in ("never", "always", "auto"):
        for tid, stats in ((1, {"spec": student}), (3, None)):
            params = {"out_of_core": mode}
            cases.append(
                {
                    "fn": "prune",
                    "t": rows[tid].spec,
                    "s": stats and stats["spec"],
                    "p": params,
                    "device": device,
                }
            )
            expected.append(
                accepted_need(
                    monkeypatch,
                    lambda t=tid, st=stats, p=params: memcheck.check_prune(
                        settings, rows[t].spec, st, p, queue
                    ),
                )
            )
    got = run_dashboard_js(tmp_path, DRIVER % json.dumps(cases))
    assert got == expected


def test_prune_refused_names_out_of_core(monkeypatch):
    """A prune job that fits no worker in memory is a 409 naming out_of_core=always when cutting out of
    core fits; auto is accepted (the worker goes out of core); one that fits in neither mode is refused."""
    from worker.engine import memplan

    big = llama8b().summary()
    spec = memplan.spec_from_summary(big)
    in_memory = memplan.prune_memory(spec, None, mode="in_memory")["total"]
    out_of_core = memplan.prune_memory(spec, None, mode="out_of_core")["total"]
    assert out_of_core < in_memory / 10
    cap = out_of_core + (1 << 20)
    monkeypatch.setattr(memcheck, "_workers", lambda *a, **k: [one_worker(cap)])
    with pytest.raises(Conflict) as err:
        memcheck.check_prune(SimpleNamespace(), big, None, {"out_of_core": "never"}, "cpu")
    assert tuple(err.value.field) == ("out_of_core",) and tuple(err.value.nearby) == ("always",)
    assert "prune job needs" in str(err.value) and "out_of_core=always" in str(err.value)
    memcheck.check_prune(SimpleNamespace(), big, None, {"out_of_core": "auto"}, "cpu")
    cap = out_of_core - 1
    with pytest.raises(Conflict, match="no smaller setting fits"):
        memcheck.check_prune(SimpleNamespace(), big, None, {"out_of_core": "auto"}, "cpu")


LAYOUT_DRIVER = """
import * as jm from "./js/jobmemory.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(({ t, p, device, capacity, disk, host }) =>
  jm.importanceLayout(t, p, device, capacity, disk, host))));
"""


def test_importance_layout_and_passes_equal_the_api_check(tmp_path: Path):
    """jobmemory.importanceLayout == memcheck.importance_layout: the layout, the spill and the passes
    over the checkpoint under a spill limit (several, and None: not even one pass fits), with the
    pinned-RAM tier of a CUDA worker (fewer passes) and without (a CPU's RAM is its device)."""
    from worker.engine import memplan

    big = llama8b().summary()
    spec = memplan.spec_from_summary(big)
    GB = 10**9
    base = {
        "batch_size": 2,
        "seq_len": 4096,
        "samples": 1024,
        "scans": ["bi", "drop", "block"],
        "block_size": 2,
    }
    cases = []
    for device, capacity, disk, extra in [
        ("cpu", None, None, {"offload": "always"}),
        ("cpu", 10 * GB, None, {}),  # auto, the whole 8B does not fit: streamed, one pass
        ("cpu", 200 * GB, 50 * GB, {}),  # auto, it fits: in memory
        ("cpu", 20 * GB, 300 * GB, {"offload": "always"}),  # several passes
        ("cuda", 80 * GB, 300 * GB, {"offload": "always", "scans": ["bi", "drop", "block", "angular"]}),
        ("cuda", 80 * GB, 10 * GB, {"offload": "always", "scans": ["bi", "angular"], "block_size": 4}),
        ("cpu", 20 * GB, 20 * GB, {"offload": "always"}),  # not even one pass: None
        ("cpu", 20 * GB, 300 * GB, {"offload": "always", "stream": True}),
    ]:
        cases.append(
            {
                "t": big,
                "p": {**base, **extra},
                "device": device,
                "capacity": capacity,
                "disk": disk,
                "host": 0,
            }
        )
    pinned = {**base, "offload": "always"}
    for device, host in [("cuda", 0), ("cuda", 150 * GB), ("cuda", 400 * GB), ("cpu", 400 * GB)]:
        cases.append(
            {"t": big, "p": pinned, "device": device, "capacity": 80 * GB, "disk": 100 * GB, "host": host}
        )
    expected = [
        memcheck.importance_layout(spec, c["p"], c["device"], c["capacity"], c["disk"], c["host"])
        for c in cases
    ]
    passes = [e["passes"] for e in expected]
    assert any(n is not None and n > 1 for n in passes) and None in passes and 1 in passes, passes
    assert [e["streamed"] for e in expected][:3] == [True, True, False]
    # pinned RAM holds stores on CUDA only: more of it, fewer passes; a CPU worker ignores it
    assert passes[-4] > passes[-3] > passes[-2] > 1 and passes[-1] == passes[-4], passes
    got = run_dashboard_js(tmp_path, LAYOUT_DRIVER % json.dumps(cases))
    assert got == expected


BEST_DRIVER = """
import * as jm from "./js/jobmemory.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(({ t, p, device, workers, disk }) => {
  const best = jm.bestLayout(t, p, device, workers, disk);
  return [best.layout, best.worker.pid];
})));
"""


def test_the_layout_on_the_workers_equals_the_api_check(tmp_path: Path):
    """jobmemory.bestLayout == memcheck.best_layout over the registry's entries: each worker's device
    memory, pinned RAM (its `host_memory`, CUDA) and the disk tier it reports (`spill_disk`) unless the
    job sets a spill limit; the first worker (most memory) where one pass fits, else the largest."""
    from worker.engine import memplan

    big = llama8b().summary()
    spec = memplan.spec_from_summary(big)
    GB = 10**9
    p = {"batch_size": 2, "seq_len": 4096, "samples": 1024, "scans": ["bi", "drop", "block"], "block_size": 2}

    def entry(pid, kind, memory, host=None, disk=None):
        w = {
            "hostname": f"h{pid}",
            "device": "cuda:0" if kind == "cuda" else "cpu",
            "pid": pid,
            "queues": ["gpu", "cpu"],
        }
        w["memory"] = {"kind": kind, "total_bytes": memory, "free_bytes": memory}
        if host is not None:
            w["host_memory"] = {"kind": "cpu", "total_bytes": host, "free_bytes": host}
        if disk is not None:
            w["spill_disk"] = {"path": "/tmp", "free_bytes": disk + (2 << 30), "limit_bytes": disk}
        return w

    cases = [
        # the bigger GPU with a tiny disk fits no pass; the smaller one with a big disk does, in passes
        (
            "cuda",
            [entry(1, "cuda", 40 << 30, 0, 10 * GB), entry(2, "cuda", 24 << 30, 30 * GB, 300 * GB)],
            None,
        ),
        # no worker reports its disk: one pass; the largest's layout
        ("cuda", [entry(1, "cuda", 80 << 30), entry(2, "cuda", 141 << 30)], None),
        # none fits a pass: the largest's, passes None
        (
            "cpu",
            [entry(1, "cpu", 40 * GB, 40 * GB, 20 * GB), entry(2, "cpu", 30 * GB, 30 * GB, 50 * GB)],
            None,
        ),
        # the job's spill limit overrides every worker's disk, within its free space
        ("cpu", [entry(1, "cpu", 40 * GB, 40 * GB, 400 * GB)], 300 * GB),
        # beyond it the worker caps the limit at the free space less 2 GiB: no pass fits its 20 GB
        ("cpu", [entry(1, "cpu", 40 * GB, 40 * GB, 20 * GB)], 300 * GB),
        # equal memory: the registry's order
        (
            "cuda",
            [entry(3, "cuda", 80 << 30, 0, 200 * GB), entry(4, "cuda", 80 << 30, 300 * GB, 200 * GB)],
            None,
        ),
    ]
    js_cases, expected = [], []
    for device, workers, disk in cases:
        params = {**p, "offload": "always"}
        layout, worker = memcheck.best_layout(spec, params, device, memcheck_order(workers), disk)
        expected.append([layout, worker["pid"]])
        js_cases.append({"t": big, "p": params, "device": device, "workers": workers, "disk": disk})
    passes = [e[0]["passes"] for e in expected]
    assert [e[1] for e in expected] == [2, 2, 1, 1, 1, 3], expected
    assert passes[0] > 1 and passes[1] == 1 and passes[2] is None and passes[3] > 1, passes
    assert passes[4] is None, passes
    got = run_dashboard_js(tmp_path, BEST_DRIVER % json.dumps(js_cases))
    assert got == expected


def memcheck_order(workers: list[dict]) -> list[dict]:
    """The order memcheck.sized_workers gives the registry's entries (most usable memory first)."""
    return sorted(workers, key=lambda w: memplan_usable(w["memory"]), reverse=True)


def memplan_usable(memory: dict) -> int:
    from worker.engine.memplan import usable_bytes

    return usable_bytes(memory)


PRUNE_FIT_DRIVER = """
import * as jm from "./js/jobmemory.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(({ t, s, workers, queue, mode }) => {
  const both = jm.pruneModes(t, s);
  return jm.pruneFit(both, both.teacher_bytes, jm.sizedWorkers(workers, queue), mode);
})));
"""


def test_the_prune_decision_per_worker_equals_the_api_check(tmp_path: Path, monkeypatch):
    """jobmemory.pruneFit == memcheck.prune_fit (and what check_prune accepts or names in its 409) over a
    grid of registry entries x out_of_core: a CPU worker; a GPU worker with a small GPU and much RAM,
    little RAM, or no `host_memory`; with the worker's own threshold (`out_of_core_threshold_bytes`) or
    without (half its free RAM). Each worker in the mode it would run the cut (auto resolved per worker),
    against the memory that mode uses (host RAM out of core), the nearest out_of_core when none fits."""
    from worker.engine import memplan

    big = llama8b().summary()  # 16.1 GB loaded (bf16); in memory 30.9 GiB, out of core 2.0 GiB
    student = llama8b().summary() | {"num_layers": 8}
    student = {k: v for k, v in student.items() if k != "layers"}
    GB = 10**9

    def entry(pid, kind, memory, host=None, threshold="unset"):
        w = {
            "hostname": f"h{pid}",
            "device": "cuda:0" if kind == "cuda" else "cpu",
            "pid": pid,
            "queues": ["gpu"] if kind == "cuda" else ["cpu"],
            "memory": {"kind": kind, "total_bytes": memory, "free_bytes": memory},
        }
        if host is not None:
            w["host_memory"] = {"kind": "cpu", "total_bytes": 2 * host, "free_bytes": host}
        if threshold != "unset":
            w["out_of_core_threshold_bytes"] = threshold
        return w

    fleets = {
        "cpu, 20 GiB free": ("cpu", [entry(1, "cpu", 20 << 30, 20 << 30)]),
        "cpu, 200 GiB free": ("cpu", [entry(1, "cpu", 200 << 30, 200 << 30)]),
        "cpu, 200 GiB, threshold 10 GB": ("cpu", [entry(1, "cpu", 200 << 30, 200 << 30, 10 * GB)]),
        "cpu, 1 GiB free": ("cpu", [entry(1, "cpu", 1 << 30, 1 << 30)]),
        "small gpu, big ram": ("gpu", [entry(2, "cuda", 4 << 30, 500 << 30)]),
        "small gpu, big ram, threshold 1 GB": ("gpu", [entry(2, "cuda", 4 << 30, 500 << 30, 1 * GB)]),
        "small gpu, big ram, threshold null": ("gpu", [entry(2, "cuda", 4 << 30, 500 << 30, None)]),
        "small gpu, 20 GiB ram": ("gpu", [entry(2, "cuda", 4 << 30, 20 << 30)]),
        "small gpu, 1 GiB ram": ("gpu", [entry(2, "cuda", 4 << 30, 1 << 30)]),
        "small gpu, no host_memory": ("gpu", [entry(2, "cuda", 4 << 30)]),
        "big gpu, 20 GiB ram": ("gpu", [entry(3, "cuda", 80 << 30, 20 << 30)]),
        "big gpu, 1 GiB ram": ("gpu", [entry(3, "cuda", 80 << 30, 1 << 30)]),
        "big gpu, 1 GiB ram, threshold 100 GB": ("gpu", [entry(3, "cuda", 80 << 30, 1 << 30, 100 * GB)]),
        "big gpu, no host_memory": ("gpu", [entry(3, "cuda", 80 << 30)]),
        "two gpus": ("gpu", [entry(2, "cuda", 4 << 30, 20 << 30), entry(3, "cuda", 80 << 30, 1 << 30)]),
    }
    cases, expected = [], []
    for label, (queue, workers) in fleets.items():
        for t, s in ((big, None), (big, student)):
            t_spec = memplan.spec_from_summary(t)
            s_spec = memplan.spec_from_summary(s) if s else None
            runs = {m: memplan.prune_memory(t_spec, s_spec, mode=m) for m in ("in_memory", "out_of_core")}
            need = {m: r["total"] for m, r in runs.items()}
            teacher_bytes = runs["in_memory"]["parts"]["teacher_weights"]
            monkeypatch.setattr(memcheck, "_workers", lambda *a, ws=workers, q=queue: ws)
            sized = memcheck.sized_workers(SimpleNamespace(), queue)
            for mode in ("auto", "always", "never"):
                fit = memcheck.prune_fit(need, teacher_bytes, sized, mode)
                # the API's check says the same: accepted iff a worker fits, else the 409 names `nearest`
                stats = {"spec": s} if s else None
                try:
                    memcheck.check_prune(SimpleNamespace(), t, stats, {"out_of_core": mode}, queue)
                    accepted, nearby = True, None
                except Conflict as exc:
                    accepted, nearby = False, list(exc.nearby or []) or None
                assert accepted == bool(fit["fitting"]), (label, mode, fit)
                assert nearby == (fit["nearest"] and [fit["nearest"]["out_of_core"]]), (label, mode, fit)
                expected.append(json.loads(json.dumps(fit)))
                cases.append(
                    {"t": t, "s": s, "workers": workers, "queue": queue, "mode": mode, "label": label}
                )
    by = {(c["label"], c["s"] is None, c["mode"]): e for c, e in zip(cases, expected, strict=True)}
    # the grid covers what differs: auto out of core by host RAM on a small GPU; auto in memory by the
    # worker's own threshold; in memory that only the device fits; nearest always and never; none at all
    assert by["small gpu, big ram, threshold 1 GB", True, "auto"]["fitting"] == [
        {"name": "h2 host RAM", "bytes": 500 << 30, "mode": "out_of_core"}
    ]
    assert by["small gpu, big ram", True, "auto"]["fitting"] == []  # 16 GB <= 250 GiB: in memory, 4 GiB GPU
    assert by["small gpu, big ram", True, "auto"]["nearest"]["out_of_core"] == "always"
    assert by["small gpu, big ram, threshold null", True, "auto"] == by["small gpu, big ram", True, "auto"]
    assert by["small gpu, 20 GiB ram", True, "auto"]["fitting"][0]["mode"] == "out_of_core"
    assert by["cpu, 200 GiB, threshold 10 GB", True, "auto"]["fitting"][0]["mode"] == "out_of_core"
    assert by["cpu, 200 GiB free", True, "auto"]["fitting"][0]["mode"] == "in_memory"
    assert by["big gpu, 20 GiB ram", True, "auto"]["fitting"][0]["mode"] == "out_of_core"
    assert by["big gpu, 1 GiB ram", True, "auto"]["nearest"]["out_of_core"] == "never"
    assert by["big gpu, 1 GiB ram, threshold 100 GB", True, "auto"]["fitting"][0]["mode"] == "in_memory"
    assert by["small gpu, 1 GiB ram", True, "always"]["nearest"] is None
    assert by["small gpu, no host_memory", True, "always"]["largest"] == [
        memplan.usable_bytes({"kind": "cuda", "total_bytes": 4 << 30}),
        "h2 cuda:0",
    ]
    # auto on the big GPU cuts out of core (16 GB > half of 1 GiB) in its 1 GiB of RAM: only the small one fits
    assert [f["name"] for f in by["two gpus", True, "auto"]["fitting"]] == ["h2 host RAM"]
    assert [f["name"] for f in by["two gpus", True, "never"]["fitting"]] == ["h3 cuda:0"]
    got = run_dashboard_js(tmp_path, PRUNE_FIT_DRIVER % json.dumps(cases))
    assert got == expected
