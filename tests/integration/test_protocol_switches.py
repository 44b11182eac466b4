"""Which protocols a server speaks (--protocols), which model a protocol that names none gets (--default-model),
and that every request is counted by protocol in /metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

from berthing.config import PROTOCOLS, Settings
from berthing.engine.model import Model
from tests.support.http import metric
from tests.support.servers import ThreadServer

OPENAI_BODY = {"model": "e", "input": "a text", "encoding_format": "float"}


def test_protocol_list_adds_and_removes_left_to_right() -> None:
    assert Settings().enabled_protocols() == list(PROTOCOLS)
    assert Settings(protocols="all,-kserve-grpc,-bert-serving").enabled_protocols() == [
        p for p in PROTOCOLS if p not in ("kserve-grpc", "bert-serving")
    ]
    assert Settings(protocols=["torchserve", "openai"]).enabled_protocols() == ["torchserve", "openai"]
    assert Settings(protocols="-openai,openai").enabled_protocols() == ["openai"]
    with pytest.raises(ValidationError, match="unknown protocol '-grpc'"):
        Settings(protocols="all,-grpc")


def test_a_protocol_turned_off_has_no_routes_and_no_openapi_entries(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    with server_factory({"e": load("embed")}) as server:
        assert httpx.post(f"{server.url}/v1/embeddings", json=OPENAI_BODY).status_code == 200
        assert "/v1/embeddings" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    with server_factory({"e": load("embed")}, protocols=["all", "-openai"]) as server:
        off = httpx.post(f"{server.url}/v1/embeddings", json=OPENAI_BODY)
        assert off.status_code == 404
        assert off.json()["type"] == "NotFound" and off.json()["message"].startswith("no route for POST /v1/embeddings")
        assert "/v1/embeddings" not in httpx.get(f"{server.url}/openapi.json").json()["paths"]
        assert httpx.post(f"{server.url}/predictions/e", json={"input": "a text"}).status_code == 200


def test_torchserve_only_starts_no_listener(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"e": load("embed")}, protocols=["torchserve"]) as server:
        assert server.app.state.listeners.started == {}
        assert httpx.post(f"{server.url}/embed", json={"inputs": "a text"}).status_code == 404
        assert httpx.post(f"{server.url}/predictions/e", json={"input": "a text"}).status_code == 200


def test_default_model_serves_requests_that_name_none(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    body = {"model": "default/not-specified", "input": "a text", "encoding_format": "float"}
    with server_factory({"first": load("embed"), "second": load("embed")}) as server:
        assert httpx.post(f"{server.url}/v1/embeddings", json=body).json()["model"] == "first:1.0"
    with server_factory({"first": load("embed"), "second": load("embed")}, default_model="second") as server:
        assert httpx.post(f"{server.url}/v1/embeddings", json=body).json()["model"] == "second:1.0"


def test_requests_are_counted_by_protocol(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"e": load("embed")}) as server:
        httpx.post(f"{server.url}/predictions/e", json={"input": "a text"})
        httpx.post(f"{server.url}/v1/embeddings", json=OPENAI_BODY)
        httpx.post(f"{server.url}/v1/embeddings", json=OPENAI_BODY)
        assert metric(server.url, "berthing_requests_total", model="e:1.0", protocol="torchserve", status="200") == 1.0
        assert metric(server.url, "berthing_requests_total", model="e:1.0", protocol="openai", status="200") == 2.0


def test_every_http_protocol_is_in_openapi_under_its_tag(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    with server_factory({"e": load("embed")}) as server:
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    tags = {tag for operations in paths.values() for op in operations.values() for tag in op.get("tags", [])}
    assert tags == {"torchserve", "openai", "tei", "rerank", "infinity", "kserve", "bert-serving", "ui"}  # ui: the pages
    # a shared path is documented by the protocol that answers it (the first registered), as routing does
    assert paths["/rerank"]["post"]["tags"] == ["tei"] and paths["/embeddings"]["post"]["tags"] == ["openai"]


def test_a_route_that_names_no_model_finds_one_of_its_task(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    with server_factory({"ranker": load("rerank"), "vectors": load("embed")}) as server:  # the default is the reranker
        openai = httpx.post(f"{server.url}/v1/embeddings", json={"input": "a text", "encoding_format": "float"})
        assert openai.json()["model"] == "vectors:1.0"
        tei = httpx.post(f"{server.url}/embed", json={"inputs": "a text", "normalize": False})  # TEI normalizes by default
        assert tei.json() == [openai.json()["data"][0]["embedding"]]
        named = httpx.post(f"{server.url}/embed", json={"inputs": "a text"}, headers={"X-Berthing-Model": "ranker"})
        assert named.status_code == 424 and named.json()["error_type"] == "Backend"  # a header is obeyed, not second-guessed
