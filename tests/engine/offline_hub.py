"""A hub that refuses at once, for the tests of what an `hf:` source does without network: no offline
flag set, and the hub's endpoint at port 9 on localhost, which refuses the connection."""

from __future__ import annotations


def hub_refusing_connections(monkeypatch) -> None:
    from huggingface_hub import constants

    from worker.engine import hub

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_probed", {})  # no answer remembered from an earlier test
