"""GET /api/v1/docs: the OpenAPI schema (the contract, /api/v1/openapi.json) as one HTML page rendered
here, so the docs work offline (FastAPI's Swagger UI loads its scripts from a CDN): every operation with
its parameters, body and answers, then every model with its fields."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

STYLE = """
body { font: 14px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 16px 24px; color: #1d2330; }
h1 { margin-bottom: 0 } h2 { border-bottom: 1px solid #ccd; margin-top: 32px } code { font-size: 13px }
.op { border: 1px solid #dde; border-radius: 6px; margin: 12px 0; padding: 8px 12px }
.method { font-weight: 700; display: inline-block; min-width: 64px } .GET { color: #17804a } .POST { color: #1f5fbf }
.PUT, .PATCH { color: #a86200 } .DELETE { color: #b3261e }
table { border-collapse: collapse; margin: 6px 0 } td, th { border-top: 1px solid #eef; padding: 3px 10px 3px 0;
text-align: left; vertical-align: top } th { font-weight: 600; color: #556 } .muted { color: #667 }
nav a { margin-right: 10px }
"""


def type_of(schema: dict[str, Any]) -> str:
    """A schema as a short type expression with links to the models: list[JobOut], int | null..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#model-{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_of(s) for s in schema[key])
    if "const" in schema:
        return escape(repr(schema["const"]))
    if "enum" in schema:
        return " | ".join(escape(repr(v)) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{type_of(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict[str, {type_of(schema['additionalProperties'])}]"
    return escape(str(kind))


def _limits(schema: dict[str, Any]) -> str:
    words = [
        f"{key} {schema[key]}"
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength")
        if key in schema
    ]
    if "default" in schema:
        words.append(f"default {schema['default']!r}")
    return escape(", ".join(words))


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    rows = [
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{type_of(p.get('schema', {}))}</td><td class=muted>{_limits(p.get('schema', {}))} "
        f"{escape(p.get('description', ''))}</td></tr>"
        for p in op.get("parameters", [])
    ]
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        rows.append(f"<tr><td><code>body</code></td><td>json</td><td>{type_of(body)}</td><td></td></tr>")
    answers = []
    for status, answer in op.get("responses", {}).items():
        kinds = answer.get("content", {})
        shown = [
            type_of(c["schema"]) if "schema" in c and media == "application/json" else escape(media)
            for media, c in kinds.items()
        ]
        answers.append(
            f"<tr><td>{escape(status)}</td><td>{', '.join(shown) or '(empty)'}</td>"
            f"<td class=muted>{escape(answer.get('description', ''))}</td></tr>"
        )
    description = escape(op.get("description", "")).replace("\n\n", "<br>")
    return (
        f'<div class=op id="op-{escape(op.get("operationId", ""))}"><span class="method {method.upper()}">'
        f"{method.upper()}</span> <code>{escape(path)}</code> <span class=muted>{escape(op.get('summary', ''))}"
        f"</span><p>{description}</p>"
        + (
            f"<table><tr><th>input</th><th>in</th><th>type</th><th></th></tr>{''.join(rows)}</table>"
            if rows
            else ""
        )
        + f"<table><tr><th>answer</th><th>body</th><th></th></tr>{''.join(answers)}</table></div>"
    )


def _model(name: str, schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = [
        f"<tr><td><code>{escape(field)}</code>{'' if field in required else ' <span class=muted>(optional)</span>'}"
        f"</td><td>{type_of(prop)}</td><td class=muted>{_limits(prop)} {escape(prop.get('description', ''))}</td></tr>"
        for field, prop in schema.get("properties", {}).items()
    ]
    return (
        f'<div class=op id="model-{escape(name)}"><b>{escape(name)}</b> '
        f"<span class=muted>{escape(schema.get('description', ''))}</span><table>{''.join(rows)}</table></div>"
    )


def render(schema: dict[str, Any], openapi_url: str) -> str:
    by_tag: dict[str, list[str]] = {}
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append(_operation(method, path, op))
    info = schema.get("info", {})
    sections = "".join(
        f'<h2 id="tag-{escape(tag)}">{escape(tag)}</h2>{"".join(ops)}' for tag, ops in by_tag.items()
    )
    models = "".join(_model(n, s) for n, s in sorted(schema.get("components", {}).get("schemas", {}).items()))
    nav = " ".join(f'<a href="#tag-{escape(t)}">{escape(t)}</a>' for t in by_tag)
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(info.get('title', 'API'))} API</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(info.get('title', ''))} API "
        f"<span class=muted>{escape(info.get('version', ''))}</span></h1>"
        f'<p>The contract: <a href="{escape(openapi_url)}">OpenAPI schema (JSON)</a>. Every error answer is '
        f'<a href="#model-ErrorBody">ErrorBody</a>. What a schema cannot say (streams, concurrency, job '
        f'lifecycle): backend/API.md.</p><nav>{nav} <a href="#models">models</a></nav>{sections}'
        f'<h2 id="models">models</h2>{models}</body></html>'
    )


def install(app: FastAPI, docs_url: str) -> None:
    """Serve the rendered schema at `docs_url` (the app is created with docs_url=None)."""

    @app.get(docs_url, include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        return HTMLResponse(render(app.openapi(), app.openapi_url))
