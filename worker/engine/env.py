"""The environment variables the engine reads as settings (the README's settings table lists them too).

The platform's settings are `backend.settings.Settings`; the engine is a library that never imports the
backend, so what it reads from the environment itself is read through this module:

- `PRUNESCOPE_DIST_TIMEOUT_S` (600): seconds a collective of N ranks waits before a dead or hung rank
  fails the run (`worker.engine.distributed`).
- `PRUNESCOPE_LATENCY_CACHE` (`~/.cache/prunescope/latency.json`): the search's measured layer
  latencies, reused across runs on the same device (`worker.engine.search.latency`).
- `PRUNESCOPE_TOKEN_CACHE` (`~/.cache/prunescope/tokens`; `off`: none): corpora tokenized once and read
  back by every job on the same text with the same tokenizer (`worker.engine.token_cache`).
- `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`: Hugging Face's own offline switches; a hub model id
  then reads only the local cache and fails at once when it is not there (`worker.engine.hub`).
- `HF_DATASETS_OFFLINE` / `HF_HUB_OFFLINE`: an `hf:` data source then fails at once with a clear message
  instead of waiting on the network (`worker.engine.hub.check_dataset_reachable`).

Not settings, so not here: the launcher's rank variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `SLURM_*`), read where the process group is set up (`worker.engine.distributed`), and
the variables lm-eval's run sets and restores around itself (`worker.engine.evaluation`).
"""

from __future__ import annotations

import os
from pathlib import Path

DIST_TIMEOUT = "PRUNESCOPE_DIST_TIMEOUT_S"
DEFAULT_DIST_TIMEOUT_S = 600.0
LATENCY_CACHE = "PRUNESCOPE_LATENCY_CACHE"
DEFAULT_LATENCY_CACHE = Path("~/.cache/prunescope/latency.json")
TOKEN_CACHE = "PRUNESCOPE_TOKEN_CACHE"
DEFAULT_TOKEN_CACHE = Path("~/.cache/prunescope/tokens")
NAMES = (DIST_TIMEOUT, LATENCY_CACHE, TOKEN_CACHE)  # the PRUNESCOPE_ variables read outside Settings


def dist_timeout_s() -> float:
    return float(os.environ.get(DIST_TIMEOUT) or DEFAULT_DIST_TIMEOUT_S)


def latency_cache() -> Path:
    return Path(os.environ.get(LATENCY_CACHE) or DEFAULT_LATENCY_CACHE).expanduser()


def token_cache() -> Path | None:
    """The token cache's directory; None when PRUNESCOPE_TOKEN_CACHE is "off"."""
    value = os.environ.get(TOKEN_CACHE, "").strip()
    if value.lower() == "off":
        return None
    return Path(value or DEFAULT_TOKEN_CACHE).expanduser()


# Hugging Face's own truthy spellings (huggingface_hub's ENV_VARS_TRUE_VALUES), so a flag means here what
# it means to the libraries that also read it.
TRUE_VALUES = ("1", "true", "yes", "on")


def flag(name: str) -> bool:
    """A yes/no environment variable set to yes (TRUE_VALUES, any case)."""
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES


def datasets_offline() -> bool:
    """Whether `datasets` is told to stay offline (an `hf:` data source cannot be read then)."""
    return flag("HF_DATASETS_OFFLINE") or flag("HF_HUB_OFFLINE")
