"""Measuring students and teachers: perplexity, lm-eval benchmarks, throughput, result files.

Public API: `evaluate_model` (perplexity and lm-eval tasks as one result dict, `evaluation_result`),
`perplexity`, `run_lm_eval`, `check_tasks`, `build_local_tasks`, `LOCAL_TASKS`, `throughput`,
`measure_model`, `make_manifest`, `write_result`, `read_result` (weights hashed by `fingerprint`).
"""

from worker.engine.evaluation.lm_eval_runner import check_tasks, flatten_results, run_lm_eval
from worker.engine.evaluation.local_tasks import LOCAL_TASKS, build_local_tasks
from worker.engine.evaluation.model_evaluation import evaluate_model, evaluation_result
from worker.engine.evaluation.perplexity import perplexity, windows
from worker.engine.evaluation.results import make_manifest, read_result, write_result
from worker.engine.evaluation.throughput import measure_model, throughput

__all__ = [
    "LOCAL_TASKS",
    "build_local_tasks",
    "check_tasks",
    "evaluate_model",
    "evaluation_result",
    "flatten_results",
    "make_manifest",
    "measure_model",
    "perplexity",
    "read_result",
    "run_lm_eval",
    "throughput",
    "windows",
    "write_result",
]
