"""Custom handlers (TorchServe's lifecycle) in packages: refused unless trusted, then run on the shared batcher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import berthing
from berthing.handler import HandlerNotTrusted
from berthing.types import InvalidInput, ModelLoadError
from tests.support.http import metric
from tests.support.models import LABELS
from tests.support.servers import cli_server

# Seed 000's use: custom pre- and post-processing around a classifier, plus a second model (an ensemble).
REVIEW_HANDLER = '''
import re

from berthing.handler import BaseHandler
from berthing.types import InvalidInput


class ReviewHandler(BaseHandler):
    """Strips HTML from a review, classifies it, answers in the shop's own format."""

    def initialize(self, context):
        super().initialize(context)
        self.labels = context.manifest["labels"]

    def preprocess(self, data):
        body = data[0]["body"]
        text = body.get("review") if isinstance(body, dict) else body
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("field 'review' must be a non-empty text")
        if text == "explode":
            raise ValueError("the review exploded")
        return re.sub(r"<[^>]+>", " ", text).strip()

    def inference(self, text):
        result = {**self.model.predict(text), "text": text}
        if self.context.registry is not None and "helper" in self.context.registry.names():
            result["dims"] = len(self.context.get_model("helper").predict(text))
        return result

    def postprocess(self, result):
        if result["text"] == "twice" or result["label"] not in self.labels:
            return [result, result]
        return [{"sentiment": result["label"], "confidence": round(result["score"], 6), **(
            {"dims": result["dims"]} if "dims" in result else {})}]
'''


def _pack(ckpt: Path, out: Path, handler: Path, version: str = "1.0") -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "pack", str(ckpt), "--name", "reviews", "--version", version,
         "-o", str(out), "--handler", str(handler)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def package(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handler-pkg")
    (root / "handler.py").write_text(REVIEW_HANDLER)
    return _pack(tiny_model_dir("classify"), root, root / "handler.py")


def test_untrusted_handler_is_refused_before_it_is_imported(package: Path, tmp_path: Path) -> None:
    with pytest.raises(HandlerNotTrusted) as refused:
        berthing.load(package, cache_dir=tmp_path)
    assert refused.value.code == 403
    assert refused.value.message == (
        "package reviews-1.0 carries handler.py (custom Python code); it runs only when the server is started with "
        "--trust-handlers (BERTHING_TRUST_HANDLERS=true, or trust_handlers=True in berthing.load)"
    )
    assert not [name for name in sys.modules if name.startswith("berthing_handler_")]


def test_trusted_handler_in_process(package: Path, tmp_path: Path) -> None:
    model = berthing.load(package, cache_dir=tmp_path, trust_handlers=True)
    engine = model.predict("a  fine  day")  # the engine itself on what preprocess makes of the review
    answer = model.handle({"review": "a <b>fine</b> day"})
    assert answer == {"sentiment": engine["label"], "confidence": round(engine["score"], 6)}
    assert engine["label"] in LABELS
    assert model.handle("a <b>fine</b> day") == answer  # a plain text body, as curl -T sends it


def test_trusted_handler_served_with_an_ensemble(package: Path, tiny_model_dir, settings) -> None:
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir)}
    args = [f"helper={tiny_model_dir('embed')}", str(package), "--trust-handlers"]
    with cli_server(args, env) as (_proc, url):
        batches = metric(url, "berthing_batch_size_count", model="reviews:1.0") or 0.0
        response = httpx.post(f"{url}/predictions/reviews", json={"review": "<p>the parcel came late</p>"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"sentiment", "confidence", "dims"} and body["sentiment"] in LABELS
        assert body["dims"] == len(httpx.post(f"{url}/predictions/helper", json={"input": "x"}).json())
        raw = httpx.post(f"{url}/predictions/reviews", content=b"the parcel came late", headers={"content-type": "text/plain"})
        assert raw.json() == body
        # the handler's model call went through the model's batcher (direct runtime calls are not counted)
        assert (metric(url, "berthing_batch_size_count", model="reviews:1.0") or 0.0) >= batches + 2
        bad = httpx.post(f"{url}/predictions/reviews", json={"review": " "})
        assert (bad.status_code, bad.json()) == (
            422, {"code": 422, "type": "InvalidInput", "message": "field 'review' must be a non-empty text"}
        )
        boom = httpx.post(f"{url}/predictions/reviews", json={"review": "explode"})
        line = REVIEW_HANDLER.splitlines().index('            raise ValueError("the review exploded")') + 1
        assert (boom.status_code, boom.json()) == (500, {
            "code": 500, "type": "HandlerError",
            "message": f"custom handler failed: ValueError: the review exploded (handler.py line {line})",
        })
        twice = httpx.post(f"{url}/predictions/reviews", json={"review": "twice"})
        assert (twice.status_code, twice.json()["message"]) == (
            500, "custom handler must return a list with one result per request (1 here), got a list of 2"
        )
        assert httpx.get(f"{url}/ping").status_code == 200


def test_untrusted_server_refuses_the_package(package: Path, settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "serve", str(package), "--port", "0", "--management-port", "0"],
        capture_output=True, text=True, timeout=120, env={**_env(settings)},
    )
    assert result.returncode == 1
    assert "package reviews-1.0 carries handler.py (custom Python code); it runs only when the server is started with " \
        "--trust-handlers" in " ".join(result.stderr.split())


def test_management_api_refuses_an_untrusted_handler(package: Path, settings, tmp_path: Path) -> None:
    store = package.parent
    env = {**_env(settings), "BERTHING_MODEL_STORE": str(store), "BERTHING_MANAGEMENT_TOKEN_FILE": str(tmp_path / "key.json")}
    with cli_server([], env) as (proc, _url):
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output).group(1)  # type: ignore[union-attr]
        token = json.loads((tmp_path / "key.json").read_text())["management"]["key"]
        response = httpx.post(f"{admin}/models", params={"url": package.name}, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 403
        assert response.json()["type"] == "HandlerNotTrusted"
        assert response.json()["message"].startswith("package reviews-1.0 carries handler.py (custom Python code)")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def handle(data, context):\n    return data\n",
         "reviews-2.0/handler.py must define exactly one subclass of berthing.handler.BaseHandler (found: none)"),
        ("import not_a_module_anywhere\n",
         "reviews-2.0/handler.py failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere' "
         "(handler.py line 1)"),
        ("from berthing.handler import BaseHandler\n\nclass H(BaseHandler):\n    def initialize(self, context):\n"
         "        raise RuntimeError('no GPU here')\n",
         "reviews-2.0/handler.py: H.initialize failed: RuntimeError: no GPU here (handler.py line 5)"),
    ],
)
def test_broken_handlers_fail_to_load_clearly(source: str, message: str, tiny_model_dir, tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(source)
    path = _pack(tiny_model_dir("classify"), tmp_path, tmp_path / "handler.py", version="2.0")
    with pytest.raises(ModelLoadError) as failed:
        berthing.load(path, cache_dir=tmp_path, trust_handlers=True)
    assert failed.value.message == message


def test_handler_that_does_not_compile_is_refused_at_pack_time(tiny_model_dir, tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("def broken(:\n")
    result = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "pack", str(tiny_model_dir("classify")), "--name", "x", "-o", str(tmp_path),
         "--handler", str(tmp_path / "handler.py")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert f"handler {tmp_path / 'handler.py'} does not compile: invalid syntax" in " ".join(result.stderr.split())


def _env(settings) -> dict[str, str]:
    return {**os.environ, "BERTHING_CACHE_DIR": str(settings.cache_dir), "BERTHING_MANAGEMENT_PORT": "0"}



def test_the_readme_handler_example_runs(tiny_model_dir, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    block = readme.split("    # handler.py\n", 1)[1].split("\n    berthing pack", 1)[0]
    (tmp_path / "handler.py").write_text("\n".join(line.removeprefix("    ") for line in block.splitlines()) + "\n")
    path = _pack(tiny_model_dir("classify"), tmp_path, tmp_path / "handler.py", version="3.0")
    model = berthing.load(path, cache_dir=tmp_path, trust_handlers=True)
    expected = model.predict(" fast ")
    assert model.handle({"review": "<p>fast</p>"}) == {"sentiment": expected["label"], "confidence": expected["score"]}
    with pytest.raises(InvalidInput, match="field 'review' must be a non-empty text"):
        model.handle({"review": " "})
