"""berthing's models as Ray Serve applications on a real two-node cluster: the same answers through Ray's proxy as from
`berthing serve`, for every task and on the protocols' own routes, and through a DeploymentHandle without HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from berthing.config import Settings
from tests.support.http import assert_same
from tests.support.ray_cluster import RayCluster, deployed
from tests.support.servers import clones_server
from tests.support.texts import RERANK_DOCS, RERANK_QUERY

KINDS = ("embed", "classify", "ner", "qa", "rerank")
TEXTS = ["the parcel came late", "物流很快, 包装完好"]
BODIES: dict[str, Any] = {
    "embed": {"input": TEXTS},
    "classify": {"input": TEXTS},
    "ner": {"input": ["Alice flew to Paris with ACME", "张三在北京工作"]},
    "qa": {"question": "where did Alice fly?", "context": "Alice flew to Paris with ACME in May."},
    "rerank": {"query": RERANK_QUERY, "texts": RERANK_DOCS},
}


@pytest.fixture(scope="module")
def apps(cluster: RayCluster, load, tiny_model_dir, settings: Settings) -> Iterator[str]:
    """Every task's tiny model as its own application (embed at '/', the others at /NAME), one replica each."""
    for kind in KINDS:
        load(kind)  # exported here once; the replicas load the cached ONNX
    with deployed(settings, {kind: tiny_model_dir(kind) for kind in KINDS}, default="embed", cpus=0.5):
        yield cluster.url


@pytest.fixture(scope="module")
def reference(load, settings: Settings) -> Iterator[str]:
    """The same models behind berthing's own server in this process."""
    with clones_server({kind: load(kind) for kind in KINDS}, settings) as server:
        yield server.url


def _prefix(kind: str) -> str:
    return "" if kind == "embed" else f"/{kind}"


@pytest.mark.parametrize("kind", KINDS)
def test_torchserve_route_answers_as_berthing_serve(apps: str, reference: str, kind: str) -> None:
    want = httpx.post(f"{reference}/predictions/{kind}", json=BODIES[kind], timeout=60)
    got = httpx.post(f"{apps}{_prefix(kind)}/predictions/{kind}", json=BODIES[kind], timeout=60)
    assert want.status_code == 200, want.text
    assert got.status_code == 200, got.text
    assert_same(got.json(), want.json(), kind)


def test_protocol_routes_through_the_proxy(apps: str, reference: str) -> None:
    """OpenAI's and TEI's routes on the default application, as their clients call them."""
    body = {"input": TEXTS, "model": "embed", "encoding_format": "float"}
    want = httpx.post(f"{reference}/v1/embeddings", json=body).json()
    got = httpx.post(f"{apps}/v1/embeddings", json=body).json()
    assert_same([d["embedding"] for d in got["data"]], [d["embedding"] for d in want["data"]])
    assert got["usage"] == want["usage"]
    rerank = {"query": RERANK_QUERY, "texts": RERANK_DOCS}
    want = httpx.post(f"{reference}/rerank", json=rerank, headers={"x-berthing-model": "rerank"}).json()
    got = httpx.post(f"{apps}/rerank/rerank", json=rerank).json()
    assert_same(got, want)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/predictions/embed", {"input": []}), ("/predictions/nobody", {"input": "x"}), ("/rerank/predictions/rerank", {"q": 1})],
)
def test_errors_keep_their_status_and_body_behind_the_proxy(apps: str, reference: str, path: str, body: Any) -> None:
    got = httpx.post(f"{apps}{path}", json=body)
    want = httpx.post(f"{reference}{path.removeprefix('/rerank')}", json=body)
    assert got.status_code == want.status_code >= 400
    if "nobody" in path:  # an application knows its own model only: the others are applications beside it
        assert got.json() == {**want.json(), "message": "model 'nobody' not found (models: embed)"}
    else:
        assert got.json() == want.json()


def test_deployment_handle_skips_the_proxy(apps: str, reference: str) -> None:
    """Python callers in the cluster call the replica's batcher through a handle: same vectors, no JSON."""
    from ray import serve

    vectors = serve.get_app_handle("embed").infer.remote(TEXTS).result(timeout_s=60)
    want = httpx.post(f"{reference}/predictions/embed", json={"input": TEXTS}).json()
    np.testing.assert_allclose(np.stack(vectors), np.asarray(want), atol=1e-5)
    labels = serve.get_app_handle("classify").infer.remote(TEXTS).result(timeout_s=60)
    want = httpx.post(f"{reference}/predictions/classify", json={"input": TEXTS}).json()
    assert [r["label"] for r in labels] == [r["label"] for r in want]


def test_inference_token_guards_the_proxy_port(apps: str, tiny_model_dir, settings: Settings) -> None:
    """Ray's cluster token does not cover Serve's HTTP port: berthing's own token does, set like any setting."""
    from ray import serve

    from berthing.ray.options import ServeArgs
    from berthing.ray.plan import given_settings
    from berthing.ray.serve_app import build

    values = {**given_settings(settings), "inference_token": "s3cret"}
    args = ServeArgs(model=f"guarded={tiny_model_dir('classify')}", settings=values, cpus=0.5)
    serve.run(build(args), name="guarded", route_prefix="/guarded", blocking=False)
    try:
        url = f"{apps}/guarded/predictions/guarded"
        refused = httpx.post(url, json={"input": "hi"})
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["message"]
        allowed = httpx.post(url, json={"input": "hi"}, headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200 and allowed.json()["label"] in ("negative", "neutral", "positive")
    finally:
        serve.delete("guarded")


def test_nothing_of_the_cluster_listens_beyond_loopback(apps: str) -> None:
    """GCS, raylets, workers, Serve's proxy and the replicas (whose inter-deployment port Ray 2.60 binds on every
    interface unless berthing rebinds it) all listen on 127.0.0.1 only."""
    import ipaddress

    import psutil

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    exposed = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None or loopback(conn.laddr.ip):
            continue
        try:
            command = " ".join(psutil.Process(conn.pid).cmdline())
        except psutil.Error:
            continue
        if "ray" in command.lower():
            exposed.append((conn.laddr.ip, conn.laddr.port, command[:120]))
    assert exposed == []
