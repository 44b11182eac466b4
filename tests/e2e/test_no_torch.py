"""Once the ONNX artifact is cached, loading and serving import neither torch nor transformers."""

from __future__ import annotations

import json
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
