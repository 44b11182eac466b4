"""Every route of every listener, walked: with tokens set, which answer without one. The public ones are listed here,
so a route added later fails this test until someone decides whether it needs a token (issue 18)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Route

from tests.support.servers import DualServer

# Public on the inference port: probes, the scrape, the API description, the playground's static files
INFERENCE_PUBLIC = {
    ("GET", "/ping"), ("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/health/ready/{name}"),
    ("GET", "/health/ready/{name}/{version}"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("OPTIONS", "/"),
    ("GET", "/docs"), ("GET", "/ui/dom.js"), ("GET", "/ui/app.js"), ("GET", "/ui/docs.js"), ("GET", "/ui/style.css"),
}  # every protocol's own routes need it, their health routes too (KServe's /v2/health/*): probes use /health/*


@pytest.fixture(scope="module")
def server(load, settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DualServer]:
    key = tmp_path_factory.mktemp("key") / "key_file.json"
    update = {"inference_token": "inf3rence", "management_token": "m4nage", "management_port": 0, "port": 0,
              "management_token_file": key, "model_store": tmp_path_factory.mktemp("store")}
    with DualServer(settings.model_copy(update=update), {"embedder": load("embed")}) as running:
        yield running


def _walk(app: object, base: str) -> dict[tuple[str, str], int]:
    """(method, path template) -> status of a request without a token, path parameters filled with a real model."""
    answers = {}
    with httpx.Client(timeout=30) as client:
        for route in app.routes:  # type: ignore[attr-defined]
            assert isinstance(route, Route), route
            for method in sorted((route.methods or set()) - {"HEAD"}):
                path = route.path.replace("{model}", "embedder").replace("{name}", "embedder").replace("{version}", "1.0")
                body = b"{}" if method in ("POST", "PUT") else None
                answers[(method, route.path)] = client.request(method, base + path, content=body).status_code
    return answers


def test_every_inference_route_needs_the_token_but_the_listed_public_ones(server: DualServer) -> None:
    answers = _walk(server.inference_app, server.url)
    public = {key for key, status in answers.items() if status != 401}
    assert public == INFERENCE_PUBLIC
    page = httpx.get(f"{server.url}/", headers={"Accept": "text/html"})  # the playground's page is static: public
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_every_management_route_needs_its_token(server: DualServer) -> None:
    answers = _walk(server.management_app, server.management_url)
    assert answers and {key: status for key, status in answers.items() if status != 401} == {}
