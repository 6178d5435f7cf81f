"""Measuring students and teachers: perplexity, lm-eval benchmarks, throughput, result files.

Public API: `perplexity`, `run_lm_eval`, `build_local_tasks`, `LOCAL_TASKS`, `throughput`,
`measure_model`, `make_manifest`, `model_hash`, `write_result`, `read_result`.
"""

from worker.engine.evaluation.lm_eval_runner import flatten_results, run_lm_eval
from worker.engine.evaluation.local_tasks import LOCAL_TASKS, build_local_tasks
from worker.engine.evaluation.perplexity import perplexity, windows
from worker.engine.evaluation.results import (
    library_versions,
    make_manifest,
    model_hash,
    read_result,
    write_result,
)
from worker.engine.evaluation.throughput import measure_model, throughput

__all__ = [
    "LOCAL_TASKS",
    "build_local_tasks",
    "flatten_results",
    "library_versions",
    "make_manifest",
    "measure_model",
    "model_hash",
    "perplexity",
    "read_result",
    "run_lm_eval",
    "throughput",
    "windows",
    "write_result",
]
