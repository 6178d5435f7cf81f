"""A hub id without network fails at once with one clear error (transformers alone retries for ~30 s),
and a model already in the Hugging Face cache still loads offline."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
import torch
from huggingface_hub import constants

from tests.conftest import save_tiny_teacher
from worker.engine import hub
from worker.engine.hub import HubUnreachable
from worker.engine.loading import load_model, load_tokenizer


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    monkeypatch.setattr(hub, "_probed", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connecting is refused


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_mode_fails_at_once(monkeypatch, empty_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(HubUnreachable, match=r"model not found: org/tiny .*HF_HUB_OFFLINE is set"):
        load_model("org/tiny")
    assert time.monotonic() - t0 < 2


def test_an_unreachable_hub_fails_at_once(monkeypatch, empty_cache):
    port = closed_port()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match=rf"not in the Hugging Face cache.*127.0.0.1:{port} did not"):
        load_model("org/tiny")
    with pytest.raises(HubUnreachable):
        load_tokenizer("org/tiny")
    assert time.monotonic() - t0 < hub.PROBE_TIMEOUT_S + 2


def test_a_cached_model_loads_without_the_hub(tmp_path, monkeypatch, empty_cache):
    """The cache layout huggingface_hub writes: refs/main names a snapshot holding the files."""
    source = save_tiny_teacher(tmp_path / "tiny")
    revision = "0" * 40
    repo = empty_cache / "models--org--tiny"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")

    model, tokenizer = load_model("org/tiny")
    reference, _ = load_model(source)
    ids = torch.tensor([[3, 5, 7, 11]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer is not None and len(tokenizer) == len(load_tokenizer(source))


def test_a_platform_job_fails_fast_on_an_uncached_hub_id(monkeypatch, empty_cache):
    """Workers fetch a teacher's hub id into the cache (worker.hub) before loading it."""
    from worker.hub import hub_snapshot

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(HubUnreachable, match=r"model not found: org/tiny .*hub cannot be reached"):
        hub_snapshot("org/tiny")
    assert time.monotonic() - t0 < hub.PROBE_TIMEOUT_S + 2


def test_a_platform_job_uses_the_cached_snapshot_offline(tmp_path, monkeypatch, empty_cache):
    from worker.hub import hub_snapshot

    revision = "1" * 40
    snapshot = empty_cache / "models--org--tiny" / "snapshots" / revision
    shutil.copytree(save_tiny_teacher(tmp_path / "tiny"), snapshot)
    (empty_cache / "models--org--tiny" / "refs").mkdir()
    (empty_cache / "models--org--tiny" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_snapshot("org/tiny") == str(snapshot)
