"""The engine (worker/engine) is a plain library: the import-linter contract "engine-leaf" forbids it
every other worker module, named one by one (import-linter has no "everything but"). A new worker module
must join that list, or the engine could start importing platform code unseen."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BELOW_THE_ENGINE = {"engine", "demo", "__init__"}  # the engine itself, and the shipped data it reads


def engine_leaf_forbidden() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    contract = text[text.index('id = "engine-leaf"') :]
    block = re.search(r"forbidden_modules = \[(.*?)\]", contract, re.S)[1]
    return set(re.findall(r'"([\w.]+)"', block))


def test_every_worker_module_outside_the_engine_is_forbidden_to_it():
    modules = {
        f"worker.{p.stem if p.suffix == '.py' else p.name}"
        for p in (ROOT / "worker").iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
        and (p.stem if p.suffix == ".py" else p.name) not in BELOW_THE_ENGINE
    }
    assert len(modules) > 20
    missing = modules - engine_leaf_forbidden()
    assert not missing, f"add to engine-leaf's forbidden_modules in pyproject.toml: {sorted(missing)}"
