"""Imported once by the job fork server (worker.isolation): torch, transformers and the engine, so a
job's process starts with them loaded. Importing also settles transformers' lazy modules up front:
`AutoModelForCausalLM` alone is a lazy proxy, and the machinery under every model class (modeling_utils:
core_model_loading, torch.distributed.tensor, torch._dynamo, sympy...) was imported by each job's first
load instead, seconds per job."""

import torch  # noqa: F401
import transformers.modeling_utils  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

import worker.engine.data  # noqa: F401
import worker.engine.distill  # noqa: F401
import worker.engine.evaluation  # noqa: F401
import worker.engine.importance.compute  # noqa: F401
import worker.engine.loading  # noqa: F401
import worker.engine.masking  # noqa: F401
import worker.engine.surgery  # noqa: F401
import worker.execution  # noqa: F401
import worker.handlers  # noqa: F401
