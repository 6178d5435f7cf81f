"""Settings have one reader, `backend.settings.Settings` (the engine, which cannot import it, has its
own: `worker.engine.env`), and one documentation, README's Configuration table: a `PRUNESCOPE_*`
variable read anywhere else, or a setting missing from the table, fails here."""

from __future__ import annotations

import re
from pathlib import Path

from backend.settings import Settings
from worker.engine import env
from worker.engine.evaluation.local_tasks import default_cache_dir

ROOT = Path(__file__).resolve().parents[2]
# A read of a PRUNESCOPE_ variable straight from the environment (a write for a child process is fine).
ENV_READ = re.compile(
    r"""(os\.environ\.get\(\s*|os\.getenv\(\s*|os\.environ\[\s*)["'](PRUNESCOPE_\w+)["']\s*(?!\]\s*=[^=])"""
)


def test_no_module_reads_a_setting_from_the_environment_itself():
    readers = []
    for package in ("backend", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            for match in ENV_READ.finditer(path.read_text()):
                readers.append(f"{path.relative_to(ROOT)}: {match.group(2)}")
    assert readers == []


# Not settings: the worker's light consumer learns its parent's pid through this (a handshake between
# two processes of one `prunescope worker`, worker/cli/platform_commands.py).
HANDSHAKES = {"PRUNESCOPE_WORKER_PARENT_PID"}


def test_a_variable_named_outside_the_two_readers_is_a_setting():
    """Catches a read through a constant too (NAME = "PRUNESCOPE_X"; os.environ.get(NAME)): every
    PRUNESCOPE_ name in the code outside backend/settings.py and worker/engine/env.py is a Settings
    field (set for a child process, or named in a message) or a handshake."""
    fields = {f"PRUNESCOPE_{name.upper()}" for name in Settings.model_fields}
    readers = {ROOT / "backend" / "settings.py", ROOT / "worker" / "engine" / "env.py"}
    stray = []
    for package in ("backend", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            if path in readers:
                continue
            for name in re.findall(r"""["'](PRUNESCOPE_\w+)["']""", path.read_text()):
                if name not in fields | HANDSHAKES:
                    stray.append(f"{path.relative_to(ROOT)}: {name}")
    assert stray == []
    assert not fields & set(env.NAMES)  # each variable has one reader


def test_every_setting_is_in_the_readme_configuration_table():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `PRUNESCOPE_")]
    documented = {name.lower() for row in rows for name in re.findall(r"PRUNESCOPE_(\w+)", row)}
    engine = {name.removeprefix("PRUNESCOPE_").lower() for name in env.NAMES}
    assert (set(Settings.model_fields) | engine) - documented == set()
    assert documented - set(Settings.model_fields) - engine == set()


def test_worker_device_and_cache_come_from_settings(monkeypatch, tmp_path):
    assert Settings().worker_device == "cpu" and Settings().cache is None
    assert default_cache_dir(Settings().cache) == Path.home() / ".cache" / "prunescope" / "lm_eval_tasks"
    monkeypatch.setenv("PRUNESCOPE_WORKER_DEVICE", "cuda:1")
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("PRUNESCOPE_DEVICE_LOCK_DIR", str(tmp_path / "locks"))
    settings = Settings()
    assert settings.worker_device == "cuda:1" and settings.device_lock_dir == tmp_path / "locks"
    assert default_cache_dir(settings.cache) == tmp_path / "lm_eval_tasks"
