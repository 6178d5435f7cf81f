"""Fail fast on a Hugging Face hub id that cannot be fetched.

Without network, transformers retries each hub request with back-off (~30 s per file here) before it
gives up, holding a worker that long for an error. So before any hub request: offline mode
(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) or an endpoint that does not answer a TCP connect within
`PROBE_TIMEOUT_S` means "read only the local cache", and a model that is not cached fails at once with
one clear error. A reachable hub is used as before. An `hf:` data source asks the same question
(`check_dataset_reachable`): `datasets` retries as long.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from worker.engine.env import datasets_offline, flag

PROBE_TIMEOUT_S = 3.0
PROBE_TTL_S = 60.0  # a job reads config, weights and tokenizer: probe once, not per file
_probed: dict[str, tuple[float, str | None]] = {}


class HubUnreachable(FileNotFoundError):
    """A hub id that is not in the local cache while the hub cannot be reached."""


def offline_reason() -> str | None:
    """Why the hub cannot be used now (offline mode, no answer), or None when it answers."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if flag(name):
            return f"{name} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    seen = _probed.get(endpoint)
    if seen is None or time.monotonic() - seen[0] > PROBE_TTL_S:
        seen = _probed[endpoint] = (time.monotonic(), _probe(endpoint))
    return seen[1]


def _probe(endpoint: str) -> str | None:
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port} did not answer ({exc.strerror or type(exc).__name__})"


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id
        return False


def hub_kwargs(repo_id: str) -> dict:
    """`from_pretrained` keyword arguments for a hub id: {} when the hub answers, local_files_only when
    it does not and the model is cached; else `HubUnreachable`, at once."""
    reason = offline_reason()
    if reason is None:
        return {}
    if is_cached(repo_id):
        return {"local_files_only": True}
    raise HubUnreachable(not_reachable_message(repo_id, reason))


def not_reachable_message(repo_id: str, reason: str) -> str:
    return (
        f"model not found: {repo_id} is not a local directory, is not in the Hugging Face cache, and the "
        f"hub cannot be reached ({reason}); download it on a machine with network access or give a "
        "local path"
    )


def hf_dataset_ref(spec: str) -> tuple[str, str | None]:
    """(dataset id, config or None) of an `hf:` source, given what follows "hf:" (`<id>[:<config>]`)."""
    dataset_id, _, config = spec.partition(":")
    if not dataset_id:
        raise ValueError("hf source needs a dataset id: hf:<dataset_id>[:<config>]")
    return dataset_id, config or None


def dataset_unreachable_reason() -> str | None:
    """Why `datasets` cannot fetch from the hub now: its offline flags, else the probe a model id gets;
    None when the hub answers."""
    if datasets_offline():
        return "offline mode is set (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"
    return offline_reason()


def check_dataset_reachable(spec: str, doing: str) -> None:
    """A ValueError at once when the hub cannot serve `hf:<spec>` (`datasets` would retry for ~30 s);
    `doing` ("load", "stream") is what the reader was about to do, for the message."""
    reason = dataset_unreachable_reason()
    if reason is not None:
        raise ValueError(
            f"cannot {doing} hf:{spec}: the hub cannot be reached ({reason}); {doing}ing a datasets id "
            "needs internet, use a local file or folder instead"
        )
