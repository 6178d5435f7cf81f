"""docker-compose.yml and the Dockerfile (Docker cannot run here): parse them and check that services,
ports, GPU reservation, environment and commands agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from backend.routing import check_queues
from backend.settings import Settings
from worker.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def env_of(service: dict) -> dict:
    return service.get("environment", {})


def test_compose_services_ports_and_gpu():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "api", "worker-gpu", "worker-cpu", "flower"}
    assert services["api"]["ports"] == ["8000:8000"]
    assert services["flower"]["profiles"] == ["flower"] and services["flower"]["ports"] == ["5555:5555"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_environment_matches_settings():
    services = compose()["services"]
    fields = set(Settings.model_fields)
    for name in ("api", "worker-gpu", "worker-cpu"):
        env = env_of(services[name])
        assert env["PRUNESCOPE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["PRUNESCOPE_DATABASE_URL"].startswith("postgresql://prunescope:")
        assert env["PRUNESCOPE_DATABASE_URL"].endswith("@postgres:5432/prunescope")
        for key in env:
            assert key.removeprefix("PRUNESCOPE_").lower() in fields, key
    api = env_of(services["api"])
    # Bound to every interface, so the token is mandatory (compose refuses to start without it).
    assert api["PRUNESCOPE_HOST"] == "0.0.0.0" and ":?" in api["PRUNESCOPE_TOKEN"]
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "prunescope"


def test_compose_commands_are_valid_cli_commands():
    services = compose()["services"]
    parser = build_parser()
    for name in ("api", "worker-gpu", "worker-cpu"):
        command = services[name]["command"]
        assert command[0] == "prunescope"
        args = parser.parse_args(command[1:])
        assert callable(args.handler)
    gpu = parser.parse_args(services["worker-gpu"]["command"][1:])
    assert gpu.device == "cuda:0" and gpu.queues == "gpu"
    cpu = parser.parse_args(services["worker-cpu"]["command"][1:])
    assert cpu.device == "cpu" and cpu.queues == "cpu,default"
    for args in (gpu, cpu):  # each worker's queues pass the check the worker itself makes at start
        assert check_queues(args.device, args.queues.split(",")) == args.queues.split(",")


def test_dockerfile_copies_existing_paths():
    text = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+?) \S+$", text, flags=re.M):
        for part in src.split():
            assert (REPO / part).exists(), part
    assert 'CMD ["prunescope", "api"]' in text
    assert "USER prunescope" in text  # not root
