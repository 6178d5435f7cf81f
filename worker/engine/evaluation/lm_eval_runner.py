"""lm-evaluation-harness on an in-memory model: our offline tasks or any named lm-eval task.

`run_lm_eval` wraps the model in lm-eval's `HFLM` (no reloading), includes the local task directory in
a `TaskManager`, and flattens the scores to [{"task", "metric", "value", "stderr"}]. When only local
tasks are asked for, HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set for the call so nothing can reach the
network; other lm-eval tasks need their dataset to be reachable (online or in the HF cache).

`progress` sees the requests as they are answered. lm-eval builds every task's requests, then calls
the model once per request type (loglikelihood, loglikelihood_rolling, generate_until) with all the
tasks' requests of that type; our HFLM subclass counts them: a loglikelihood or generate_until request
through the LM's cache hook (lm-eval calls it once per answered request; `set_cache_hook` is public),
a rolling request's windows through `_loglikelihood_tokens` (TemplateLM's hook for subclasses, called
once per batch of windows): each document is split into windows of the model's context by lm-eval's own
`get_rolling_token_windows`, which is how the total is known before the first batch.

Over N ranks (`ranks`, a distributed context under torchrun), every rank runs the harness and each
model call is answered data-parallel (`lm_eval_shards`): the scores are the one-process scores on every
rank. A rank counts the units it answers, scaled to the whole call (`unit_scale`): an estimate of where
the call is, exact at its end.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from worker.engine.evaluation.lm_eval_shards import one_process_harness, rolling_windows, sharded_lm
from worker.engine.evaluation.local_tasks import LOCAL_TASKS, build_local_tasks, default_cache_dir

OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def check_tasks(tasks: Sequence[str]) -> None:
    """Raise the error `run_lm_eval` would for task names lm-eval does not know, before a job spends
    minutes on its perplexity pass. Only our local tasks: nothing to scan; another name: lm-eval's
    own registry is indexed (seconds), once per process."""
    others = [t for t in tasks if t not in LOCAL_TASKS]
    if others:
        registered = _registered_tasks()
        _refuse_unknown([t for t in others if t not in registered])


@functools.cache
def _registered_tasks() -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def _refuse_unknown(unknown: list[str]) -> None:
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s): {', '.join(unknown)} (local tasks: {', '.join(LOCAL_TASKS)})"
        )


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


@dataclass(frozen=True)
class RequestProgress:
    """Where lm-eval is: `done` of `total` units of its `call`-th model call (one per request type)."""

    call: int  # 1, 2, ...: the model call (request type) this count belongs to
    request_type: str  # loglikelihood, loglikelihood_rolling, generate_until
    done: int
    total: int
    unit: str  # "requests", or "windows" for loglikelihood_rolling (a document is one or more)
    requests: int  # the call's requests (documents for loglikelihood_rolling)
    tasks: tuple[str, ...]  # the tasks whose requests the call answers

    def describe(self) -> str:
        of = f" of {self.requests} documents" if self.unit == "windows" else ""
        return f"{self.request_type}: {self.done}/{self.total} {self.unit}{of} ({', '.join(self.tasks)})"


def _counting_lm(hflm_class, progress: Callable[[RequestProgress], None]):
    """An HFLM subclass reporting each model call's requests to `progress` as they are answered."""
    from lm_eval.api.model import CacheHook

    class Counter(CacheHook):
        """lm-eval's cache hook without a cache: add_partial is called once per answered request."""

        def __init__(self, lm):
            super().__init__(None)
            self.lm = lm

        def add_partial(self, attr, req, res) -> None:
            if attr != "loglikelihood_rolling":  # a rolling call counts its windows instead
                self.lm.advance(attr, 1)

    class CountingLM(hflm_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls, self.now, self.answered = 0, None, 0
            self.progress_error: BaseException | None = None  # what `progress` raised (a cancel)
            self.set_cache_hook(Counter(self))

        def start(self, request_type: str, requests, total: int, unit: str) -> None:
            self.calls += 1
            self.answered, self.unit_scale = 0, 1.0
            tasks = tuple(sorted({r.task_name for r in requests if getattr(r, "task_name", None)}))
            self.now = RequestProgress(self.calls, request_type, 0, total, unit, len(requests), tasks)
            self.report()

        def advance(self, request_type: str, n: int) -> None:
            now = self.now
            if now is None or now.request_type != request_type:
                return
            self.answered += n
            self.now = replace(now, done=min(now.total, round(self.answered * self.unit_scale)))
            self.report()

        def finish(self) -> None:
            if self.now is not None and self.now.done < self.now.total:
                self.now = replace(self.now, done=self.now.total)
                self.report()
            self.now = None

        def report(self) -> None:
            try:
                progress(self.now)
            except BaseException as exc:
                self.progress_error = exc
                raise

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self.start("loglikelihood", requests, len(requests), "requests")
            out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
            self.finish()
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            self.start("generate_until", requests, len(requests), "requests")
            out = super().generate_until(requests, disable_tqdm=disable_tqdm)
            self.finish()
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            windows = sum(len(rolling_windows(self, req.args[0])) for req in requests)
            self.start("loglikelihood_rolling", requests, windows, "windows")
            out = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            self.finish()
            return out

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            out = super()._loglikelihood_tokens(requests, *args, **kwargs)
            self.advance("loglikelihood_rolling", len(requests))  # a batch of a rolling call's windows
            return out

    return CountingLM


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
    progress: Callable[[RequestProgress], None] | None = None,
    ranks=None,
) -> list[dict]:
    """Scores of `tasks` as [{"task", "metric", "value", "stderr"}].

    `progress(RequestProgress)` is called as requests are answered (module note); what it raises (a
    cancelled job) ends the run as it is, not as an lm-eval failure.

    Local tasks (`prunescope_cloze`, `prunescope_rolling`) are built from `documents` (default: the demo
    corpus test split) unless `task_dir` already holds them, under `cache_root` (see
    `local_tasks.default_cache_dir`). `limit` caps samples per task.

    `ranks` (a `worker.engine.distributed.DistributedContext`): call it on every rank, each with the
    same model; each answers its share of the requests and every rank returns the one-process scores.
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
    distributed = ranks is not None and ranks.distributed
    guard = offline() if only_local else contextlib.nullcontext()
    with guard, one_process_harness() if distributed else contextlib.nullcontext():
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        # Only our local tasks: index only their directory (lm-eval's own ~15k task configs take
        # seconds to scan, tens of seconds on a busy machine, for nothing).
        manager = TaskManager(
            include_path=str(Path(task_dir)) if task_dir else None, include_defaults=not only_local
        )
        _refuse_unknown([t for t in tasks if t not in manager.all_tasks])
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        lm_class = sharded_lm(HFLM, ranks) if distributed else HFLM
        lm_class = lm_class if progress is None else _counting_lm(lm_class, progress)
        lm = None
        try:
            lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
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
            if lm is not None and exc is getattr(lm, "progress_error", None):
                raise  # the caller's own exception (a cancel), through lm-eval unchanged
            raise ValueError(
                f"lm-eval failed on {', '.join(tasks)}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from exc
        finally:
            model.train(was_training)
    if results is None:
        raise ValueError("lm-eval returned no results")
    return flatten_results(results)
