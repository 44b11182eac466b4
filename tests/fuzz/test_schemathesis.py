"""schemathesis over GET /openapi.json against a live server (issue 18): every operation the document lists, with
schema-valid and schema-violating requests, is answered without a server error, with a status the document declares,
in the content type it declares and a body that conforms to its schema.

The operations are walked through schemathesis' Python API (each operation's Hypothesis strategy, positive and
negative) rather than its pytest plugin: the plugin's lazy schema writes pytest's private `Node._nodeid`, which
pytest 9.2 no longer has."""

from __future__ import annotations

from collections.abc import Iterator

import openapi_spec_validator
import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from berthing.registry import Registry
from tests.fuzz.strategies import fuzz_settings
from tests.support.http import clone
from tests.support.servers import ThreadServer


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """not_a_server_error, but for the one 5xx a client asks for: a deadline (X-Berthing-Timeout-Ms, documented) too
    short to meet is refused with 503, which each operation declares (TEI, Cohere and Infinity say 429)."""
    if response.status_code == 503 and "X-Berthing-Timeout-Ms" in (case.headers or {}):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 30  # per operation, positive and negative cases drawn together
# Connection: close: on a kept-alive connection each answer waited ~40 ms for a delayed ACK (see conftest.client)
HEADERS = {"Connection": "close"}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def operations(api_schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    found = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"/openapi.json has an operation schemathesis cannot read: {result}"
        found.append(result.ok())
    return found


def run_schemathesis(url: str, session: requests.Session, examples: int) -> tuple[int, dict[str, set[int]]]:
    """Every operation of the server's /openapi.json: its examples, positive and negative cases; every failure of
    every operation reported together. Returns the operations' count and the statuses each answered."""
    api_schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    answered: dict[str, set[int]] = {}
    listed = operations(api_schema)
    for operation in listed:
        cases = st.one_of(
            *api_schema.get_strategies_from_examples(operation),  # the document's own examples (valid bodies)
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @fuzz_settings(examples)
        @given(case=cases)
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(session=session, checks=CHECKS, headers=HEADERS, timeout=60)
            answered.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            run()
        except (AssertionError, BaseExceptionGroup, requests.RequestException) as exc:  # all operations' failures, together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    return len(listed), answered


def test_every_operation_conforms(fuzz_server: ThreadServer, session: requests.Session) -> None:
    """Every protocol on, the playground too."""
    listed, answered = run_schemathesis(fuzz_server.url, session, EXAMPLES)
    assert listed > 50  # every protocol's routes are there
    served = [label for label, statuses in answered.items() if any(200 <= s < 300 for s in statuses)]
    assert len(served) > listed * 3 // 4, f"too few operations answered a 2xx: {sorted(answered.items())}"


def test_another_protocol_mix_conforms(load, settings, session: requests.Session) -> None:
    """OpenAI's and TEI's adapters off: /embeddings and /rerank are Infinity's, GET / is the page for browsers only."""
    registry = Registry()
    for task in ("embed", "classify", "rerank"):
        registry.add(clone(load(task), task))
    mix = settings.model_copy(update={"protocols": ["all", "-openai", "-tei"]})
    with ThreadServer(registry, mix) as server:
        _, answered = run_schemathesis(server.url, session, EXAMPLES // 3)
    assert {"POST /embeddings", "POST /rerank", "GET /"} <= set(answered)


@pytest.mark.parametrize("update", [{}, {"protocols": ["all", "-openai", "-tei"]}, {"ui": False}], ids=["all", "mix", "no-ui"])
def test_the_document_is_valid_openapi(load, settings, update: dict[str, object]) -> None:
    """OpenAPI 3.0's own rules (schemathesis reads documents they refuse: a media type with a description, a type
    list), for every protocol mix's document."""
    registry = Registry()
    registry.add(clone(load("embed"), "embed"))
    with ThreadServer(registry, settings.model_copy(update=update)) as server:
        openapi_spec_validator.validate(requests.get(f"{server.url}/openapi.json", timeout=60).json())
