"""The typed HTTP contract: every route of /api/v1 declares what it answers (a response model, or for a
stream / download its media type), every error answer is the structured list of backend/api/errors.py,
and a plan's validation errors reach the client as field paths with nearby valid values."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from backend.app import create_app
from backend.db import session_scope
from backend.guard import PREFIX
from tests.conftest import settings_from
from tests.platform.helpers import student_rows

NON_JSON = ("text/event-stream", "application/zip", "text/csv")


@pytest.fixture
def ready_teacher(api_env) -> int:
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        return student_rows(s, [])[0].id


def api_routes(routes):
    """The APIRoutes of the app, inside included routers too (paths relative to their prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's included router
            yield from api_routes(route.original_router.routes)


def test_every_route_declares_its_answer(api_env):
    app = create_app(settings_from(api_env))
    routes = [r for r in api_routes(app.routes) if f"{PREFIX}{r.path}" in app.openapi()["paths"]]
    assert len(routes) > 30
    schema = app.openapi()
    undeclared = []
    for route in routes:
        for method in route.methods:
            op = schema["paths"][f"{PREFIX}{route.path}"][method.lower()]
            ok = str(route.status_code or 200)
            answer = op["responses"].get(ok) or op["responses"].get("200", {})
            content = answer.get("content", {})
            if route.status_code == 204:
                declared = route.response_model is None and not content
            elif route.response_model is not None:
                declared = "schema" in content.get("application/json", {})
            else:  # a stream or a download: its media type, documented
                declared = any(kind in content for kind in NON_JSON)
            # Every answer that is not a success has the error body.
            errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
            typed = all(
                r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                for r in errors.values()
            )
            if not (declared and "422" in errors and typed):
                undeclared.append(f"{method} {route.path}")
    assert not undeclared, f"routes without a declared answer or error body: {undeclared}"
    entry = schema["components"]["schemas"]["ErrorEntry"]
    assert set(entry["properties"]) == {"loc", "msg", "type", "nearby"}


def test_plan_errors_name_the_field_with_nearby_values(client, ready_teacher):
    # The tiny teacher has 8 query heads in 4 KV groups of 2: removing head 0 of layer 0 leaves its
    # groups with 1, 2, 2, 2 heads, but every group must keep the same number. The valid head counts
    # (1..4 groups x 1..2 heads: 1 2 3 4 6 8) nearest the 7 kept are 4, 6 and 8.
    plan = {"remove_heads": {"0": [0]}}
    r = client.post("/api/v1/plans", json={"teacher_id": ready_teacher, "name": "bad", "plan": plan})
    assert r.status_code == 422, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "plan", "remove_heads", "0"], entry
    assert entry["type"] == "value_error" and "same number" in entry["msg"]
    assert entry["nearby"] == [4, 6, 8], entry


def test_domain_and_framework_errors_share_the_body(client, ready_teacher):
    for r, status in (
        (client.get("/api/v1/jobs/999"), 404),  # a domain error
        (client.get("/api/v1/nowhere"), 404),  # a route that does not exist (Starlette's HTTPException)
        (client.post("/api/v1/jobs", json={"kind": "nope"}), 422),  # request validation
        (client.put("/api/v1/plans/999", json={"version": 1}), 404),
    ):
        assert r.status_code == status, r.text
        for entry in r.json()["detail"]:
            assert set(entry) == {"loc", "msg", "type", "nearby"}, entry
            assert isinstance(entry["loc"], list) and entry["msg"]
    # A stale plan version is a 409 naming the field and the version to send.
    plan = {"drop_layers": [3]}
    created = client.post(
        "/api/v1/plans", json={"teacher_id": ready_teacher, "name": "stale", "plan": plan}
    ).json()
    r = client.put(f"/api/v1/plans/{created['id']}", json={"version": 1, "name": "q"})
    assert r.status_code == 200, r.text
    r = client.put(f"/api/v1/plans/{created['id']}", json={"version": 1, "name": "r"})
    assert r.status_code == 409
    assert r.json()["detail"] == [
        {"loc": ["body", "version"], "msg": r.json()["detail"][0]["msg"], "type": "conflict", "nearby": [2]}
    ]


def test_docs_are_served_offline_from_the_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    r = client.get("/api/v1/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for path in schema["paths"]:  # every operation and every model is on the page
        assert f"<code>{path}</code>" in page, path
    for name in schema["components"]["schemas"]:
        assert f'id="model-{name}"' in page, name
    # Nothing loaded from elsewhere (FastAPI's own Swagger UI pulls its scripts from a CDN).
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_a_validator_suggests_nearby_values(client, ready_teacher):
    # batch_size is the global batch: with gpus 2, 3 is refused and the multiples around it suggested.
    body = {"kind": "distill", "teacher_id": ready_teacher, "params": {"gpus": 2, "batch_size": 3}}
    r = client.post("/api/v1/jobs?validate_only=true&planned_student=true", json=body)
    assert r.status_code == 422, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "params", "batch_size"] and entry["nearby"] == [2, 4], entry
    assert entry["msg"] == "must be a multiple of gpus (2), e.g. 2 or 4"


def test_an_unknown_id_in_a_body_names_its_field(client, ready_teacher):
    body = {"teacher_id": ready_teacher, "dataset_id": 999}
    r = client.post("/api/v1/importance-runs", json=body)
    assert r.status_code == 404, r.text
    assert r.json()["detail"] == [
        {"loc": ["body", "dataset_id"], "msg": "Dataset 999 not found", "type": "not_found", "nearby": []}
    ]
    r = client.get("/api/v1/importance-runs/999")  # an id in the path: the error names no body field
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == []
