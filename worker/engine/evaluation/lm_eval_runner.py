"""lm-evaluation-harness on an in-memory model: our offline tasks or any named lm-eval task.

`run_lm_eval` wraps the model in lm-eval's `HFLM` (no reloading), includes the local task directory in
a `TaskManager`, and flattens the scores to [{"task", "metric", "value", "stderr"}]. When only local
tasks are asked for, HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set for the call so nothing can reach the
network; other lm-eval tasks need their dataset to be reachable (online or in the HF cache).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

from worker.engine.evaluation.local_tasks import LOCAL_TASKS, build_local_tasks, default_cache_dir

OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def offline():
    """Offline mode for `datasets`/`huggingface_hub`, restored afterwards."""
    saved = {v: os.environ.get(v) for v in OFFLINE_VARS}
    for v in OFFLINE_VARS:
        os.environ[v] = "1"
    patched = []
    # Both libraries read these at import time; patch their config if they are already imported.
    for module_name, attrs in (
        ("datasets.config", ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")),
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
    ):
        module = __import__("sys").modules.get(module_name)
        for attr in attrs if module else ():
            if hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def _number(value):
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def flatten_results(results: dict) -> list[dict]:
    rows = []
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, _, flt = key.partition(",")
            if _number(value) is None:
                continue
            stderr = _number(metrics.get(f"{metric}_stderr,{flt}"))
            name = metric if flt == "none" else f"{metric}[{flt}]"
            rows.append({"task": task, "metric": name, "value": float(value), "stderr": stderr})
    return rows


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str] = LOCAL_TASKS,
    *,
    documents: Sequence[str] | None = None,
    task_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 0,
    bootstrap_iters: int = 100,
) -> list[dict]:
    """Scores of `tasks` as [{"task", "metric", "value", "stderr"}].

    Local tasks (`prunescope_cloze`, `prunescope_rolling`) are built from `documents` (default: the demo
    corpus test split) unless `task_dir` already holds them, under `cache_root` (see
    `local_tasks.default_cache_dir`). `limit` caps samples per task.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    if tokenizer is None:
        raise ValueError("lm-eval needs the model's tokenizer")
    wants_local = any(t in LOCAL_TASKS for t in tasks)
    if task_dir is None and wants_local:
        if documents is None:
            from worker.engine.data import read_documents

            documents = read_documents("demo", "test")
        task_dir = build_local_tasks(documents, default_cache_dir(cache_root), seed=seed)
    only_local = all(t in LOCAL_TASKS for t in tasks)
    guard = offline() if only_local else contextlib.nullcontext()
    with guard:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(Path(task_dir)) if task_dir else None)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(
                f"unknown lm-eval task(s): {', '.join(unknown)} (local tasks: {', '.join(LOCAL_TASKS)})"
            )
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                log_samples=False,
                bootstrap_iters=bootstrap_iters,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except ValueError:
            raise
        except Exception as exc:  # a dataset that cannot be fetched, a broken task config, ...
            raise ValueError(
                f"lm-eval failed on {', '.join(tasks)}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from exc
        finally:
            model.train(was_training)
    if results is None:
        raise ValueError("lm-eval returned no results")
    return flatten_results(results)
