"""The playground page in a real browser against a real server: what it renders is what the API answers.

Each task's test loads the page, picks the tiny model, fills the form, submits it (a click, then Ctrl+Enter), and
compares the rendering with the API's answer for the same input, with the page's rounding (JavaScript's toFixed is
half-up on the exact value); then an error shows the server's message, and no request left the server's origin."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from berthing.config import Settings
from tests.support.servers import ThreadServer, cli_server

TASKS = ("classify", "embed", "ner", "qa", "rerank")
LONG = "word " * 1000  # over the tiny models' 128 tokens


def fixed(value: float, digits: int) -> str:
    """What JavaScript's value.toFixed(digits) shows: the exact binary value rounded half away from zero."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def api(url: str, model: str, payload: dict[str, Any], token: str | None = None) -> httpx.Response:
    """The same request as the page's, sent by a plain HTTP client."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/predictions/{model}/1.0", json=payload, headers=headers, timeout=60)


class Playground:
    """One browser tab on the page, with every request it sent and every script error it hit."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1100, "height": 800})
        self.page = self.context.new_page()
        self.requests: list[Any] = []
        self.script_errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def open(self) -> None:
        self.page.goto(self.url + "/")
        self.page.wait_for_selector("#model:not([disabled])")

    def pick(self, name: str) -> None:
        options = self.page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
        value = next(v for v, text in options if text.startswith(f"{name} 1.0 "))
        self.page.select_option("#model", value)

    def submit(self, keys: bool = False, focus: str = "#model") -> str:
        """Submit by the button or by Ctrl+Enter; wait for an answer or an error; 'answer' or 'error'."""
        self.page.evaluate("() => { for (const id of ['answer', 'error']) document.getElementById(id).hidden = true; }")
        if keys:
            self.page.focus(focus)
            self.page.keyboard.press("Control+Enter")
        else:
            self.page.click("#submit")
        self.page.wait_for_selector("#answer:not([hidden]), #error:not([hidden])")
        return "answer" if self.page.is_visible("#answer") else "error"

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def attrs(self, selector: str, *names: str) -> list[tuple[str | None, ...]]:
        return [tuple(node.get_attribute(n) for n in names) for node in self.page.locator(selector).all()]

    def error(self) -> tuple[str, str]:
        return self.page.inner_text("#error-status"), self.page.inner_text("#error-message")

    def check_error(self, model: str, payload: dict[str, Any]) -> None:
        """The page shows the server's status, type and message for the same bad request."""
        assert self.submit() == "error"
        expected = api(self.url, model, payload)
        assert expected.status_code >= 400
        body = expected.json()
        assert self.error() == (f"{expected.status_code} {body['type']}", body["message"])

    def shot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)

    def finish(self) -> None:
        """No request left for another origin and no script failed."""
        assert self.requests and all(r.url.startswith(self.url + "/") for r in self.requests), [r.url for r in self.requests]
        assert self.script_errors == []
        self.context.close()


@pytest.fixture()
def server(load, server_factory) -> Iterator[ThreadServer]:
    """A real server with one tiny model per task, named after it."""
    with server_factory({task: load(task) for task in TASKS}) as running:
        yield running


@pytest.fixture()
def tab(browser, server: ThreadServer) -> Playground:
    playground = Playground(browser, server.url)
    playground.open()
    return playground


def test_classify_bars_equal_the_api_and_the_curl_command_asks_the_same(tab: Playground, tmp_path: Path) -> None:
    tab.pick("classify")
    for text, keys in (("这个手机的屏幕很好, 电池也耐用。", False), ("The battery died after a day.", True)):
        tab.page.fill("#text", text)
        assert tab.submit(keys=keys, focus="#text") == "answer"
        scores = api(tab.url, "classify", {"input": text}).json()["scores"]
        expected = [(label, fixed(score, 4)) for label, score in sorted(scores.items(), key=lambda kv: -kv[1])]
        assert list(zip(tab.texts(".bar-row .label"), tab.texts(".bar-row .score"), strict=True)) == expected
        assert tab.page.inner_text("#latency").endswith(" ms")
    tab.shot(tmp_path / "classify.png")
    command = tab.page.inner_text("#curl")
    assert command.startswith(f"curl -X POST '{tab.url}/predictions/classify/1.0'")
    if shutil.which("curl"):  # the copied command, run by a shell, gets the same answer
        ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(ran.stdout) == api(tab.url, "classify", {"input": "The battery died after a day."}).json()
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=tab.url)
    tab.page.click("#copy")
    assert tab.page.evaluate("navigator.clipboard.readText()") == command
    tab.page.fill("#text", "   ")
    tab.check_error("classify", {"input": "   "})
    tab.finish()


def test_embed_heat_map_is_the_cosine_of_the_api_vectors(tab: Playground, tmp_path: Path) -> None:
    tab.pick("embed")
    texts = ["How do I reset my password?", "I forgot my password.", "Le café est très bon.", "The weather is nice today."]
    tab.page.fill("#texts", "\n".join(texts) + "\n\n")  # blank lines are dropped, as the page says: one text per line
    assert tab.submit(keys=True, focus="#texts") == "answer"
    vectors = api(tab.url, "embed", {"input": texts}).json()

    def cosine(a: list[float], b: list[float]) -> float:  # the page's loop, in the same order (IEEE doubles alike)
        dot = na = nb = 0.0
        for x, y in zip(a, b, strict=True):
            dot += x * y
            na += x * x
            nb += y * y
        return dot / (math.sqrt(na) * math.sqrt(nb))

    for i, a in enumerate(vectors):
        row = [tab.page.inner_text(f"td[data-i='{i}'][data-j='{j}']") for j in range(len(vectors))]
        assert row == [fixed(cosine(a, b), 2) for b in vectors]
    assert tab.page.locator(".heat td").count() == len(texts) ** 2
    tab.shot(tmp_path / "embed.png")
    tab.page.uncheck("#truncate")
    tab.page.fill("#texts", f"short\n{LONG}")
    tab.check_error("embed", {"input": ["short", LONG.strip()], "truncate": False})
    tab.finish()


def test_ner_highlights_the_api_entities_inline(tab: Playground, tmp_path: Path) -> None:
    tab.pick("ner")
    text = "Angela Merkel 🙂 met Emmanuel Macron in Paris, 北京 and Zürich."  # code points beyond UTF-16's BMP too
    tab.page.fill("#text", text)
    assert tab.submit() == "answer"
    entities = sorted(api(tab.url, "ner", {"input": text}).json(), key=lambda e: e["start"])
    assert entities, "the tiny model found no entity: nothing to compare"
    marks = tab.attrs("mark.entity", "data-start", "data-end", "data-label")
    assert marks == [(str(e["start"]), str(e["end"]), e["entity_group"]) for e in entities]
    assert tab.texts("mark.entity .span-text") == [text[e["start"]:e["end"]] for e in entities]
    assert tab.texts("mark.entity .tag") == [e["entity_group"] for e in entities]
    assert tab.page.inner_text(".marked").replace("\n", "") == "".join(
        text[a:b] + (label if label else "") for a, b, label in _pieces(text, entities)
    )
    tab.shot(tmp_path / "ner.png")
    tab.page.fill("#text", "")  # (long texts are no error for NER: they are read in overlapping windows)
    tab.check_error("ner", {"input": ""})
    tab.finish()


def _pieces(text: str, entities: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """The text cut as the page cuts it: plain runs and entity spans followed by their label."""
    out, at = [], 0
    for e in entities:
        out += [(at, e["start"], ""), (e["start"], e["end"], e["entity_group"])]
        at = e["end"]
    return [*out, (at, len(text), "")]


def test_qa_highlights_the_api_answer_in_the_context(tab: Playground, tmp_path: Path) -> None:
    tab.pick("qa")
    question, context = "Where is the tower?", "The Eiffel Tower is a wrought-iron tower in Paris, France, built in 1889."
    tab.page.fill("#question", question)
    tab.page.fill("#context", context)
    assert tab.submit(keys=True, focus="#question") == "answer"
    answer = api(tab.url, "qa", {"question": question, "context": context}).json()
    assert answer["end"] > answer["start"], "the tiny model gave the empty answer: nothing to highlight"
    assert tab.attrs("mark.answer", "data-start", "data-end") == [(str(answer["start"]), str(answer["end"]))]
    assert tab.texts("mark.answer") == [context[answer["start"]:answer["end"]]] == [answer["answer"]]
    assert tab.page.inner_text("#qa-text") == answer["answer"]
    assert tab.page.inner_text("#qa-score") == fixed(answer["score"], 4)
    tab.shot(tmp_path / "qa.png")
    tab.page.fill("#question", "")
    tab.check_error("qa", {"question": "", "context": context})
    tab.finish()


def test_rerank_lists_the_api_ranking(tab: Playground, tmp_path: Path) -> None:
    tab.pick("rerank")
    query = "how to reset a password"
    texts = [
        "Our office opens at nine.", "Open settings and choose 'reset password'.", "Mot de passe oublié ? Réinitialisez-le.",
        "Cats sleep a lot.",
    ]
    tab.page.fill("#query", query)
    tab.page.fill("#texts", "\n".join(texts))
    assert tab.submit() == "answer"
    ranking = api(tab.url, "rerank", {"query": query, "texts": texts}).json()
    assert [a[0] for a in tab.attrs("li.rank", "data-index")] == [str(r["index"]) for r in ranking]
    assert tab.texts("li.rank .score") == [fixed(r["score"], 4) for r in ranking]
    assert tab.texts("li.rank .text") == [texts[r["index"]] for r in ranking]
    tab.shot(tmp_path / "rerank.png")
    tab.page.fill("#texts", "")
    tab.check_error("rerank", {"query": query, "texts": []})
    tab.finish()


def test_the_token_is_asked_once_kept_for_the_tab_and_sent_as_bearer(browser, load, server_factory, tmp_path: Path) -> None:
    with server_factory({"classify": load("classify")}, inference_token="s3cret") as running:
        tab = Playground(browser, running.url)
        tab.page.goto(running.url + "/")
        tab.page.wait_for_selector("#token-form:not([hidden])")
        unauthorized = httpx.get(f"{running.url}/ui/models").json()["message"]
        assert tab.page.inner_text("#token-why") == unauthorized
        tab.page.fill("#token", "wrong")
        tab.page.click("#token-save")
        tab.page.wait_for_function("document.getElementById('token-why').textContent.startsWith('wrong token')")
        assert tab.page.is_visible("#token-form")
        tab.page.fill("#token", "s3cret")
        tab.page.click("#token-save")
        tab.page.wait_for_selector("#model:not([disabled])")
        assert tab.page.is_hidden("#token-form")
        tab.page.fill("#text", "hello")
        assert tab.submit() == "answer"
        tab.page.reload()  # sessionStorage keeps it for this tab: not asked again
        tab.page.wait_for_selector("#model:not([disabled])")
        assert tab.page.is_hidden("#token-form")
        tab.page.fill("#text", "hello again")
        assert tab.submit(keys=True, focus="#text") == "answer"
        scores = api(running.url, "classify", {"input": "hello again"}, token="s3cret").json()["scores"]
        assert tab.texts(".bar-row .label") == sorted(scores, key=lambda label: -scores[label])
        sent = [r for r in tab.requests if "/predictions/" in r.url]
        assert len(sent) == 2 and all(r.headers.get("authorization") == "Bearer s3cret" for r in sent)
        command = tab.page.inner_text("#curl")
        assert "s3cret" not in command and '"Authorization: Bearer $BERTHING_INFERENCE_TOKEN"' in command
        if shutil.which("curl"):
            env = {**os.environ, "BERTHING_INFERENCE_TOKEN": "s3cret"}
            ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True, env=env)
            assert json.loads(ran.stdout)["scores"] == scores
        tab.shot(tmp_path / "token.png")
        tab.finish()


def test_docs_page_lists_every_route_of_openapi_json(tab: Playground, tmp_path: Path) -> None:
    tab.page.goto(tab.url + "/docs")
    tab.page.wait_for_selector("section[data-tag]")
    document = httpx.get(f"{tab.url}/openapi.json").json()
    listed = {(path, method) for path, item in document["paths"].items() for method in item}
    assert set(tab.attrs("details.op", "data-path", "data-method")) == listed
    tags = {op.get("tags", ["server"])[0] for item in document["paths"].values() for op in item.values()}
    assert {a[0] for a in tab.attrs("section[data-tag]", "data-tag")} == tags
    tab.page.click("details[data-path='/predictions/{model}/{version}'] summary")
    fields = tab.texts("details[data-path='/predictions/{model}/{version}'] .fields code")
    assert {"model", "version", "input", "truncate", "question", "context", "query", "texts"} <= set(fields)
    tab.shot(tmp_path / "docs.png")
    tab.finish()


def test_get_root_is_the_page_for_browsers_and_tei_health_for_other_clients(load, server_factory) -> None:
    with server_factory({"classify": load("classify")}) as running:
        page = httpx.get(running.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for accept in ("application/json", "*/*"):
            health = httpx.get(running.url + "/", headers={"Accept": accept})
            assert health.status_code == 200 and set(health.json()) == {"unix"}
        assert httpx.get(running.url + "/docs").headers["content-type"].startswith("text/html")
        listing = httpx.get(running.url + "/ui/models").json()
        assert listing == {"models": [{"name": "classify", "version": "1.0", "task": "classify", "default": True}],
                           "predictions": True}
    with server_factory({"classify": load("classify")}, ui=False) as running:
        health = httpx.get(running.url + "/", headers={"Accept": "text/html"})
        assert health.status_code == 200 and set(health.json()) == {"unix"}
        for path in ("/docs", "/ui/models", "/ui/app.js"):
            assert httpx.get(running.url + path).status_code == 404
        assert "/docs" not in httpx.get(running.url + "/openapi.json").json()["paths"]


def test_no_ui_flag_turns_the_pages_off(settings: Settings, tiny_model_dir) -> None:
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir)}
    with cli_server([str(tiny_model_dir("classify")), "--no-ui"], env) as (_, url):
        assert httpx.get(url + "/docs").status_code == 404
        assert set(httpx.get(url + "/", headers={"Accept": "text/html"}).json()) == {"unix"}
