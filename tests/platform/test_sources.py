"""A model `source` is the demo, a local path under the allowed roots, or a hub id — decided once by the
API (backend/paths.py). A worker never resolves a hub id on its own disk: an `org/model` directory in its
working directory, outside the allowed roots, is not loaded; the id goes to the hub client only."""

from __future__ import annotations

import shutil

import huggingface_hub.constants
import pytest
import torch

from backend.paths import classify_source, stored_source
from tests.conftest import save_tiny_teacher
from worker.engine.loading import load_model
from worker.job_io import model_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline hub client with an empty cache of its own; returns the cache dir."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_model(cache, repo_id: str, model_dir) -> None:
    """Put a model into the hub cache's layout (refs/main -> snapshots/<commit>), as a download would."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_the_api_decides_path_or_hub_once(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "org" / "model").mkdir(parents=True)
    (outside / "org" / "local").mkdir(parents=True)
    roots = [root.resolve()]
    monkeypatch.chdir(root)  # `org/model` exists here, under the allowed roots: that local path
    assert classify_source("org/model", roots, allow_hub=True).value == str(
        (root / "org" / "model").resolve()
    )
    assert classify_source("org/other", roots, allow_hub=True).kind == "hub"  # not on disk: a hub id
    monkeypatch.chdir(outside)  # exists relative to this directory, but outside the roots: a hub id
    assert classify_source("org/local", roots, allow_hub=True) == classify_source(
        "org/local", roots, allow_hub=True
    )
    assert classify_source("org/local", roots, allow_hub=True).kind == "hub"
    assert classify_source("demo", roots, allow_hub=True).kind == "demo"
    # What a worker reads back: by shape alone.
    assert stored_source("org/model").kind == "hub"
    assert stored_source(str(root / "org" / "model")).kind == "path"
    for not_an_id in ("org/model\n", " org/model", "org/../x", "./org/model", "org/a/b", "~org/model"):
        assert stored_source(not_an_id).kind == "path", not_an_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ids_with_stray_whitespace_are_refused(client, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for source in ("org/model\n", "org/model ", " org/model", "org/model\t", "org/\nmodel", "demo\n"):
        r = client.post("/api/v1/teachers", json={"name": "t", "source": source})
        assert r.status_code == 422, (source, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "source"], r.json()
    assert client.get("/api/v1/teachers").json() == []
    r = client.post("/api/v1/teachers", json={"name": "t", "source": "org/model"})
    assert r.status_code == 201 and r.json()["source"] == "org/model"


def test_a_worker_never_loads_a_hub_id_from_its_working_directory(tmp_path, monkeypatch, offline_hub):
    # A valid model at ./org/model in the worker's directory, which is not an allowed root.
    save_tiny_teacher(tmp_path / "cwd" / "org" / "model", seed=1)
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(FileNotFoundError, match="model not found.* org/model"):
        model_source("org/model")


def test_a_hub_id_loads_from_the_hub_cache(tmp_path, monkeypatch, offline_hub, tiny_teacher_dir):
    cache_model(offline_hub, "org/model", tiny_teacher_dir)
    save_tiny_teacher(tmp_path / "cwd" / "org" / "model", seed=1)  # a different model, never read
    monkeypatch.chdir(tmp_path / "cwd")
    directory = model_source("org/model")
    assert directory.startswith(str(offline_hub))
    loaded, _ = load_model(directory)
    expected, _ = load_model(tiny_teacher_dir)
    decoy, _ = load_model(tmp_path / "cwd" / "org" / "model")
    weight = "model.embed_tokens.weight"
    assert torch.equal(loaded.state_dict()[weight], expected.state_dict()[weight])
    assert not torch.equal(loaded.state_dict()[weight], decoy.state_dict()[weight])
