"""schemathesis over GET /openapi.json against a live server (issue 18): every operation the document lists, with
schema-valid and schema-violating requests, is answered without a server error, with a status the document declares,
in the content type it declares and a body that conforms to its schema.

The operations are walked through schemathesis' Python API (each operation's Hypothesis strategy, positive and
negative) rather than its pytest plugin: the plugin's lazy schema writes pytest's private `Node._nodeid`, which
pytest 9.2 no longer has."""

from __future__ import annotations

from collections.abc import Iterator

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

from tests.fuzz.strategies import fuzz_settings
from tests.support.servers import ThreadServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 30  # per operation, positive and negative cases drawn together
# Connection: close: on a kept-alive connection each answer waited ~40 ms for a delayed ACK (see conftest.client)
HEADERS = {"Connection": "close"}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ThreadServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def operations(api_schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    found = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"/openapi.json has an operation schemathesis cannot read: {result}"
        found.append(result.ok())
    return found


def test_every_operation_conforms(api_schema: schemathesis.BaseSchema, session: requests.Session) -> None:
    failures: list[str] = []
    answered: dict[str, set[int]] = {}
    listed = operations(api_schema)
    assert len(listed) > 50  # every protocol's routes are there
    for operation in listed:
        cases = st.one_of(
            *api_schema.get_strategies_from_examples(operation),  # the document's own examples (valid bodies)
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @fuzz_settings(EXAMPLES)
        @given(case=cases)
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(session=session, checks=CHECKS, headers=HEADERS, timeout=60)
            answered.setdefault(operation.label, set()).add(response.status_code)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # each operation's smallest failing case, reported together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    served = [label for label, statuses in answered.items() if any(200 <= s < 300 for s in statuses)]
    assert len(served) > len(listed) * 3 // 4, f"too few operations answered a 2xx: {sorted(answered.items())}"
