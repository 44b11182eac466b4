"""Model multiplexing on the cluster: three models in one application whose replica holds at most two, loaded when a
request names them (path, Ray's header, or the body's "model"), the least recently used unloaded, answers unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from berthing.config import Settings
from tests.support.http import assert_same
from tests.support.ray_cluster import RayCluster, deployed
from tests.support.servers import clones_server

KINDS = ("embed", "classify", "ner")
TEXTS = ["the parcel came late", "物流很快, 包装完好"]


@pytest.fixture(scope="module")
def reference(load, settings: Settings) -> Iterator[str]:
    with clones_server({kind: load(kind) for kind in KINDS}, settings) as server:
        yield server.url


def _held() -> list[str]:
    from ray import serve

    return sorted(serve.get_app_handle("berthing").replica_info.remote().result(timeout_s=60)["models"])


def test_models_load_on_first_use_and_the_least_recent_is_unloaded(
    cluster: RayCluster, load, tiny_model_dir, settings: Settings, reference: str
) -> None:
    from ray import serve

    with deployed(settings, {kind: tiny_model_dir(kind) for kind in KINDS}, multiplex=2, cpus=1):
        assert _held() == []
        url = cluster.url

        def same(kind: str, headers: dict[str, str] | None = None) -> None:
            got = httpx.post(f"{url}/predictions/{kind}", json={"input": TEXTS}, headers=headers, timeout=60)
            want = httpx.post(f"{reference}/predictions/{kind}", json={"input": TEXTS}, timeout=60)
            assert got.status_code == 200, got.text
            assert_same(got.json(), want.json(), kind)

        same("classify")
        assert _held() == ["classify"]
        same("embed")
        assert _held() == ["classify", "embed"]
        same("ner", headers={"serve_multiplexed_model_id": "ner"})  # Ray's header: its router prefers a holder
        assert _held() == ["embed", "ner"]  # two at most: classify, the least recently used, was unloaded

        body = {"model": "classify", "input": TEXTS, "encoding_format": "float"}  # named only in the body
        wrong_task = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
        want_error = httpx.post(f"{reference}/v1/embeddings", json=body, timeout=60)
        assert (wrong_task.status_code, wrong_task.json()) == (want_error.status_code, want_error.json())
        assert wrong_task.json()["error"]["code"] == "wrong_task"
        assert "classify" in _held()  # loaded again to answer (its task does not fit the route)
        vectors = httpx.post(f"{url}/v1/embeddings", json={**body, "model": "embed"}, timeout=60).json()
        want = httpx.post(f"{reference}/predictions/embed", json={"input": TEXTS}).json()
        np.testing.assert_allclose(np.asarray([d["embedding"] for d in vectors["data"]]), np.asarray(want), atol=1e-5)

        unknown = httpx.post(f"{url}/predictions/nobody", json={"input": "x"}, timeout=60)
        assert unknown.status_code == 404 and unknown.json()["message"].startswith("model 'nobody' not found")

        import berthing

        with berthing.Client(url) as client:  # the SDK names the model in Ray's header for every prediction
            np.testing.assert_allclose(client.embed(TEXTS, model="embed"), np.asarray(want), atol=1e-5)

        handle = serve.get_app_handle("berthing").options(multiplexed_model_id="embed")
        got = handle.infer.remote(TEXTS).result(timeout_s=60)
        np.testing.assert_allclose(np.stack(got), np.asarray(want), atol=1e-5)
