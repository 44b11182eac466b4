"""The playground page (GET / for browsers) and the API docs page (GET /docs): plain files from server/ui/, no CDN.

The page calls the same /predictions/... routes as curl; its one route of its own, GET /ui/models, only lists what is
served (name, version, task) and sits behind the inference token like every inference route."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from berthing.server.gateway import Call, Gateway, json_response
from berthing.server.openapi import ERROR_REF, errors, json_body
from berthing.types import BerthingError

UI = Path(__file__).with_name("ui")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# Everything the pages load comes from this server; the browser refuses anything else (and inline scripts).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = ("dom.js", "app.js", "docs.js", "style.css")


def accepts_html(scope: Scope) -> bool:
    """A browser's navigation asks for text/html; curl (*/*), health probes and HTTP clients do not."""
    accept = next((value for key, value in scope.get("headers", []) if key == b"accept"), b"")
    return b"text/html" in accept.lower()


class HtmlRoute(Route):
    """A route that only browsers match: any other client falls through to the next route of the same path
    (TEI's GET / health check), exactly as if this route were not there."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not accepts_html(scope):
            return Match.NONE, {}
        return super().matches(scope)


def _file(name: str) -> Callable[[Request], Any]:
    """An endpoint answering one file of ui/, read once (the files are small and ship with the package)."""
    path = UI / name
    body = path.read_bytes()
    media_type = TYPES[path.suffix]

    async def send(_: Request) -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return send


async def models(_: Request, call: Call) -> Response:
    """GET /ui/models: every served version with its task, the default version first per name."""
    registry = call.gateway.registry
    out = []
    for name in registry.names():
        default = registry.default_version(name)
        versions = sorted(registry.versions(name), key=lambda m: m.version != default)
        for model in versions:
            out.append({"name": name, "version": model.version, "task": model.spec.task, "default": model.version == default})
    predictions = "torchserve" in call.settings.enabled_protocols()
    return json_response({"models": out, "predictions": predictions})


def routes(gateway: Gateway, errors: Callable[[BerthingError], Response]) -> list[Route]:
    """The pages, their assets and the model list; registered before the protocols' routes."""
    return [
        HtmlRoute("/", _file("index.html"), methods=["GET"]),
        Route("/docs", _file("docs.html"), methods=["GET"]),
        Route("/ui/models", gateway.endpoint("ui", "models", models, errors), methods=["GET"]),
        *(Route(f"/ui/{name}", _file(name), methods=["GET"]) for name in ASSETS),
    ]


def openapi_paths() -> dict[str, Any]:
    """/openapi.json's entries for the pages, their files and the model list, tagged 'ui'."""
    def page(media_type: str, summary: str) -> dict[str, Any]:
        content = {media_type.split(";")[0]: {"schema": {"type": "string"}}}
        ok = {"200": {"description": "the file", "content": content}}
        return {"get": {"tags": ["ui"], "summary": summary, "responses": ok}}

    listing = {"type": "object", "required": ["models", "predictions"], "properties": {
        "models": {"type": "array", "items": {"type": "object", "required": ["name", "version", "task", "default"],
                                              "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                             "task": {"type": "string"}, "default": {"type": "boolean"}}}},
        "predictions": {"type": "boolean", "description": "whether the /predictions routes the page calls are on"},
    }}
    root = page(TYPES[".html"], "The playground page, to clients that accept text/html")
    # Other clients fall through to the next GET / (TEI's health check), or, with TEI off, to OPTIONS / alone: 405
    root["get"]["responses"].update(errors(ERROR_REF, 405, description="not a browser (no text/html in Accept)"))
    return {
        "/": root,
        "/docs": page(TYPES[".html"], "This API, rendered for people"),
        "/ui/models": {"get": {"tags": ["ui"], "summary": "The models served: name, version, task (read-only)",
                               "responses": {"200": json_body(listing, "the list"), **errors(ERROR_REF, 401)}}},
        **{f"/ui/{name}": page(TYPES[Path(name).suffix], f"The pages' {name}") for name in ASSETS},
    }
