"""Models named by a hub id: fetched into the Hugging Face cache by the hub client and loaded from the
snapshot directory it returns. A hub id is never resolved against the worker's working directory (the
API already decided it is not a local path: backend/paths.py)."""

from __future__ import annotations

from pathlib import Path

# Config, tokenizer, weights and (for trust_remote_code) modeling code; not the ONNX/GGUF/TF copies.
FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]
LEGACY_WEIGHTS = ["*.bin"]  # only when the repository has no safetensors


def hub_snapshot(repo_id: str) -> str:
    """The local snapshot directory of hub model `repo_id` (downloaded when missing)."""
    from huggingface_hub import snapshot_download

    from worker.engine.hub import HubUnreachable, not_reachable_message, offline_reason

    # Without network the hub client retries for ~30 s before failing: read the cache only, at once.
    offline = offline_reason()
    try:
        path = snapshot_download(repo_id, allow_patterns=FILES, local_files_only=offline is not None)
        if not any(Path(path).glob("*.safetensors")):
            path = snapshot_download(
                repo_id, allow_patterns=FILES + LEGACY_WEIGHTS, local_files_only=offline is not None
            )
    except Exception as exc:  # offline without a cached copy, unknown or gated repository...
        if offline is not None:
            raise HubUnreachable(not_reachable_message(repo_id, offline)) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FileNotFoundError(f"model not found on the Hugging Face hub: {repo_id} ({first})") from exc
    return path
