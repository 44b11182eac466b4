"""Seed 003's exact commands through real curl: `curl -X POST URL -T note.txt` sends its JSON file with no
Content-Type, and TorchServe's handlers parse it as JSON; berthing must give the same answer as the JSON request."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from berthing.engine.model import Model
from tests.support.servers import ThreadServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

SEED_TEXT = "教练, 我想打篮球."
# One body per task, as a user of that task would write note.txt.
BODIES: dict[str, Any] = {
    "embed": {"input": SEED_TEXT},
    "classify": {"input": ["教练, 我想打篮球.", "如何使用torchserve部署模型"]},
    "ner": {"input": "John Smith lives in Paris"},
    "qa": {"question": "Where does John live?", "context": "John Smith lives in Paris with his dog."},
    "rerank": {"query": "where to play basketball", "texts": ["a court downtown", "a recipe for soup"]},
}


@pytest.fixture(scope="module")
def seed_server(load: Callable[..., Model], settings) -> Iterator[str]:
    from berthing.registry import Registry
    from tests.support.http import clone

    registry = Registry()
    for kind in BODIES:
        registry.add(clone(load(kind), kind))
    with ThreadServer(registry, settings) as server:
        yield server.url


def curl(*args: str) -> Any:
    """Run curl as the seed does; the answer's JSON (curl fails the test on a non-2xx status)."""
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail-with-body", *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return json.loads(done.stdout)


@pytest.mark.parametrize("task", list(BODIES))
def test_curl_upload_of_a_json_file_is_parsed_as_json(task: str, seed_server: str, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text(json.dumps(BODIES[task], ensure_ascii=False) + "\n", encoding="utf-8")  # echo '...' > note.txt
    url = f"{seed_server}/predictions/{task}"
    uploaded = curl("-X", "POST", url, "-T", str(note))
    declared = httpx.post(url, json=BODIES[task]).json()
    if task == "embed":
        np.testing.assert_allclose(np.array(uploaded), np.array(declared), atol=1e-6)
        assert np.array(uploaded).shape == (np.array(declared).shape)  # one vector for one text, as the JSON asks
    else:
        assert uploaded == declared


def test_the_seeds_json_request_and_octet_stream_agree(seed_server: str, tmp_path: Path) -> None:
    url = f"{seed_server}/predictions/embed"
    seed_body = '{"input":"如何使用torchserve部署模型"}'
    declared = curl("-X", "POST", "--header", "Content-Type: application/json", url, "--data-raw", seed_body)
    octet = curl("-X", "POST", "--header", "Content-Type: application/octet-stream", url,
                 "--data-binary", seed_body)
    np.testing.assert_allclose(np.array(octet), np.array(declared), atol=1e-6)


def test_text_plain_stays_text_and_undeclared_non_json_is_text(seed_server: str, tmp_path: Path) -> None:
    url = f"{seed_server}/predictions/embed"
    body = json.dumps({"input": SEED_TEXT}, ensure_ascii=False)
    as_text = curl("-X", "POST", "--header", "Content-Type: text/plain", url, "--data-binary", body)
    literal = httpx.post(url, json={"input": body}).json()  # the JSON text itself, embedded as a string
    np.testing.assert_allclose(np.array(as_text), np.array(literal), atol=1e-6)
    # a plain text that only starts like JSON is still a text when nothing declares it
    note = tmp_path / "note.txt"
    note.write_text("[NOTE] 教练, 我想打篮球.", encoding="utf-8")
    uploaded = curl("-X", "POST", url, "-T", str(note))
    np.testing.assert_allclose(np.array(uploaded), np.array(httpx.post(url, json={"input": note.read_text()}).json()), atol=1e-6)
