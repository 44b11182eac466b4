"""Once the ONNX artifact is cached, loading and serving import neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from berthing.config import Settings

CHILD = textwrap.dedent(
    """
    import json, sys, urllib.request
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    sys.modules["transformers"] = None
    import berthing
    from berthing.config import Settings
    from berthing.registry import Registry
    from tests.support.servers import ThreadServer

    model = berthing.load(sys.argv[1], cache_dir=sys.argv[2])
    assert model.predict(json.loads(sys.argv[3])) is not None
    payload = json.loads(sys.argv[4])
    registry = Registry()
    registry.add(model)
    with ThreadServer(registry, Settings(cache_dir=sys.argv[2])) as server:
        request = urllib.request.Request(
            f"{server.url}/predictions/{model.name}", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = json.loads(urllib.request.urlopen(request, timeout=60).read())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m] is not None)
    print(json.dumps({"loaded": loaded, "answer": type(body).__name__}))
    """
)


PAYLOADS = {
    "classify": ({"input": "over http"}, "dict"),
    "embed": ({"input": ["over", "http"]}, "list"),
    "ner": ({"input": "Sarah lives in London"}, "list"),
    "qa": ({"question": "Who lives there?", "context": "Sarah lives in London"}, "dict"),
    "rerank": ({"query": "where", "texts": ["London", "a cake"]}, "list"),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_serving_a_cached_artifact_never_imports_torch(kind: str, load, settings: Settings, tiny_model_dir) -> None:
    load(kind)  # makes sure the artifact is in the cache
    payload, answer_type = PAYLOADS[kind]
    python_input = payload if kind in ("qa", "rerank") else payload["input"]
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_model_dir(kind)), str(settings.cache_dir),
         json.dumps(python_input), json.dumps(payload)],
        capture_output=True, text=True, cwd=repo, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == json.dumps({"loaded": [], "answer": answer_type})


OPTIMIZED_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None
    sys.modules["transformers"] = None
    import berthing
    from berthing.types import ModelLoadError

    try:
        model = berthing.load(sys.argv[1], cache_dir=sys.argv[2], optimize="int8", thresholds=json.loads(sys.argv[3]))
    except ModelLoadError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        assert model.predict(["over", "http"]) is not None
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m] is not None)
        print(json.dumps({"loaded": loaded, "level": model.optimization["level"]}))
    """
)


def test_an_optimized_artifact_serves_without_torch_and_building_one_says_what_it_needs(tiny_model_dir, tmp_path) -> None:
    """The default (--optimize auto) needs torch once, to verify; after that the cached artifact serves alone."""
    ckpt = tiny_model_dir("embed")
    cache = tmp_path / "cache"
    repo = Path(__file__).resolve().parents[2]

    def child(thresholds: dict) -> dict:
        result = subprocess.run(
            [sys.executable, "-c", OPTIMIZED_CHILD, str(ckpt), str(cache), json.dumps(thresholds)],
            capture_output=True, text=True, cwd=repo, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    import berthing

    built = berthing.load(ckpt, cache_dir=cache, optimize="int8", thresholds={"cosine_min": 0.9})  # with torch
    assert built.optimization["level"] == "int8"
    assert child({"cosine_min": 0.9}) == {"loaded": [], "level": "int8"}
    assert child({"cosine_min": 0.91}) == {  # another threshold is another artifact, and that needs torch
        "error": "embed has no cached artifact for --optimize int8, and building one needs torch, transformers and onnx "
        "(torch is missing): pip install 'berthing[export]', serve a package, or serve the fp32 export with --optimize none"
    }


LAMBDA_CHILD = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["torch"] = None
    sys.modules["transformers"] = None
    import berthing.serverless
    handler = berthing.serverless.handler  # Lambda's init phase: the models load here
    event = {
        "version": "2.0", "rawPath": "/predictions/reader", "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/predictions/reader"}, "stage": "$default"},
        "body": json.dumps({"question": "Who lives there?", "context": "Sarah lives in London"}), "isBase64Encoded": False,
    }
    answer = handler(event, None)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m] is not None)
    print(json.dumps({"loaded": loaded, "status": answer["statusCode"], "keys": sorted(json.loads(answer["body"]))}))
    """
)


def test_the_lambda_handler_imports_and_answers_without_torch(load, settings: Settings, tiny_model_dir) -> None:
    load("qa")  # the export is cached, as a container image bakes a package or an exported artifact
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "BERTHING_MODEL": f"reader={tiny_model_dir('qa')}", "BERTHING_CACHE_DIR": str(settings.cache_dir)}
    result = subprocess.run([sys.executable, "-c", LAMBDA_CHILD], capture_output=True, text=True, cwd=repo, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "loaded": [], "status": 200, "keys": ["answer", "end", "score", "start"]}
