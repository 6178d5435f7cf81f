"""Imported once by the job fork server (worker.isolation): torch, transformers and the engine, so a
job's process starts with them loaded. Importing also settles transformers' lazy modules up front:
`AutoModelForCausalLM` alone is a lazy proxy, and the machinery under every model class (modeling_utils:
core_model_loading, torch.distributed.tensor, torch._dynamo, sympy...) was imported by each job's first
load instead, seconds per job.

First, the server is tied to its worker: it notices a worker that is gone only from its main loop, after
these imports, so a worker stopped (or killed) while they ran left it importing on for seconds, minutes
on a loaded host. The kernel signals it instead the moment the worker's thread that started it (the main
thread, `isolation.warm_up` at worker start) ends."""

import signal

from worker.rank_guard import die_with_parent

die_with_parent(signal.SIGTERM)

import torch  # noqa: E402, F401
import transformers.modeling_utils  # noqa: E402, F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402, F401

import worker.engine.data  # noqa: E402, F401
import worker.engine.distill  # noqa: E402, F401
import worker.engine.evaluation  # noqa: E402, F401
import worker.engine.importance.compute  # noqa: E402, F401
import worker.engine.loading  # noqa: E402, F401
import worker.engine.masking  # noqa: E402, F401
import worker.engine.surgery  # noqa: E402, F401
import worker.execution  # noqa: E402, F401
import worker.handlers  # noqa: E402, F401
