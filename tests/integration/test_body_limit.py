"""A body over max_body_bytes is answered with its 413 JSON whatever the client: one that sends it all before reading
(urllib, requests), one that streams it chunked, one that waits for `100 Continue` (curl). Never a connection reset."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import httpx
import pytest

LIMIT = 1024 * 1024
BIG = b'{"input": "' + b"a" * (5 * LIMIT) + b'"}'


@pytest.fixture()
def url(server_factory, load):
    with server_factory({"embedder": load("embed")}, max_body_bytes=LIMIT) as server:
        yield server.url


def test_urllib_sending_the_whole_body_reads_the_413(url: str) -> None:
    request = urllib.request.Request(f"{url}/predictions/embedder", data=BIG, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert json.loads(caught.value.read()) == {
        "code": 413, "type": "PayloadTooLarge", "message": f"body of {len(BIG)} bytes is over the limit of {LIMIT} bytes"}
    assert httpx.post(f"{url}/predictions/embedder", json={"input": "still serving"}).status_code == 200


def test_a_chunked_body_without_a_length_reads_the_413(url: str) -> None:
    def chunks():
        for start in range(0, len(BIG), 64 * 1024):
            yield BIG[start : start + 64 * 1024]

    answer = httpx.post(f"{url}/predictions/embedder", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["message"] == f"body is over the limit of {LIMIT} bytes"


def test_a_client_waiting_for_100_continue_is_answered_without_sending_the_body(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /predictions/embedder HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BIG)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        answer = b""
        while b"PayloadTooLarge" not in answer and (chunk := sock.recv(65536)):  # no body sent: the answer comes anyway
            answer += chunk  # (headers and body may arrive in separate reads)
        head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 413 ")
    assert '"type":"PayloadTooLarge"' in head
