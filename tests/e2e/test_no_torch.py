"""Once the ONNX artifact is cached, loading and serving import neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
    assert len(model.predict(["in process"])) == 1
    registry = Registry()
    registry.add(model)
    with ThreadServer(registry, Settings(cache_dir=sys.argv[2])) as server:
        request = urllib.request.Request(
            f"{server.url}/predictions/{model.name}", data=json.dumps({"input": "over http"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = json.loads(urllib.request.urlopen(request, timeout=60).read())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m] is not None)
    print(json.dumps({"loaded": loaded, "answer": type(body).__name__}))
    """
)


def test_serving_a_cached_artifact_never_imports_torch(load, settings: Settings, tiny_model_dir) -> None:
    load("classify")  # makes sure the artifact is in the cache
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_model_dir("classify")), str(settings.cache_dir)],
        capture_output=True, text=True, cwd=repo, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '{"loaded": [], "answer": "dict"}'
