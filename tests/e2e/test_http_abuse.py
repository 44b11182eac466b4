"""Raw HTTP abuse against a real `berthing serve`: malformed requests, oversized heads, slowloris, pipelined garbage,
bodies longer or shorter than declared. Each is refused or closed, the server keeps answering others, memory and
file descriptors stay bounded (server/connections.py; the limits are documented in docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berthing.server.connections import MAX_HEAD_BYTES, MAX_HEADERS, MAX_PIPELINED
from tests.support.servers import OutputTail, cli_server, raw_exchange

HEADER_TIMEOUT_S = 1
PING = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
PREDICT = b'POST /predictions/e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 13\r\n\r\n{"input":"a"}'
MALFORMED = {
    "no target": b"GET\r\n\r\n",
    "unknown version": b"GET /ping HTTP/9.9\r\n\r\n",
    "binary": b"\x00\x01\x02\xff\r\n\r\n",
    "a TLS hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"x" * 100,
    "space in target": b"GET /p ing HTTP/1.1\r\n\r\n",
    "field without colon": b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n",
    "length and chunked": b"POST /ping HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "two lengths": b"POST /ping HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "negative length": b"POST /ping HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "bad chunk": b"POST /predictions/e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@dataclass
class Served:
    pid: int
    port: int
    output: OutputTail


@pytest.fixture(scope="module")
def served(tiny_model_dir, settings) -> Iterator[Served]:
    args = [
        f"e={tiny_model_dir('embed')}", "--cache-dir", str(settings.cache_dir), "--header-timeout-s", str(HEADER_TIMEOUT_S),
        "--protocols", "all,-kserve-grpc,-bert-serving",  # no own-port listeners opening sockets in the background
    ]
    with cli_server(args) as (proc, url):
        served = Served(proc.pid, int(url.rsplit(":", 1)[1]), OutputTail(proc))
        assert statuses(raw_exchange(served.port, PREDICT.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))) == [200]
        yield served


def statuses(answer: bytes) -> list[int]:
    """The status codes of the responses in `answer`, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]*\r\n", answer)]


def answers_ping(port: int) -> bool:
    return statuses(raw_exchange(port, PING)) == [200]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_answered_400_and_the_server_keeps_answering(served: Served, payload: bytes) -> None:
    assert statuses(raw_exchange(served.port, payload)) == [400]  # then closed: raw_exchange reads until it is
    assert answers_ping(served.port)


def test_an_oversized_head_is_answered_431_without_holding_it(served: Served) -> None:
    line = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    fields = b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    url = b"GET /" + b"a" * (MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\n\r\n"
    whole = b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 900) for i in range(80)) + b"\r\n"
    for payload in (line, fields, url, whole):  # `whole`: each field is small, together over the bound
        assert statuses(raw_exchange(served.port, payload)) == [431]
    # 16 MB of one header: the server answers, reads and drops 4 MiB more (so most clients read the 431), then closes
    assert statuses(raw_exchange(served.port, line.replace(b"a" * 1_000_000, b"a" * 16_000_000))) in ([431], [])
    assert answers_ping(served.port)


def slowloris(port: int, count: int) -> tuple[list[bytes], list[bool]]:
    """`count` connections sending a request head one byte at a time, each 0.1 s, until the server closes them; a
    normal client meanwhile. Returns what each slow connection read, and the normal client's outcomes."""
    slow = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(count)]
    head = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    stop = threading.Event()

    def drip() -> None:
        for i in range(len(head)):
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server
                    sock.send(head[i : i + 1])
            if stop.wait(0.1):
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        normal = [answers_ping(port) for _ in range(20)]
        read = [read_until_closed(sock) for sock in slow]
    finally:
        stop.set()
        dripper.join(timeout=15)
        for sock in slow:
            sock.close()
    return read, normal


def test_slowloris_connections_are_closed_after_the_header_timeout_while_others_are_answered(served: Served) -> None:
    fds = open_fds(served.pid)
    read, normal = slowloris(served.port, 200)
    assert all(normal)
    assert [statuses(r) for r in read] == [[408]] * 200  # each answered 408 and closed by the server
    assert wait_for_fds(served.pid, fds) <= fds  # sockets released (after the lingering)


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
        assert read_until_closed(sock) == b""  # closed without an answer after the header timeout


def test_pipelined_garbage_after_valid_requests_is_answered_400_after_them(served: Served) -> None:
    assert statuses(raw_exchange(served.port, PING.replace(b"close", b"keep-alive") + b"GARBAGE\r\n\r\n")) == [200, 400]
    assert statuses(raw_exchange(served.port, PREDICT + PREDICT + b"\x00garbage\r\n\r\n" + PING)) == [200, 200, 400]


def test_requests_pipelined_too_far_ahead_are_refused_429_after_the_others(served: Served) -> None:
    codes = statuses(raw_exchange(served.port, PING.replace(b"close", b"keep-alive") * (MAX_PIPELINED * 4)))
    assert codes[-1] == 429 and set(codes[:-1]) == {200} and len(codes) >= MAX_PIPELINED + 2


def pipelining_clients_that_never_read(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each sending 2 MB of pipelined requests at once and reading no answer."""
    flood = PING.replace(b"close", b"keep-alive") * (2_000_000 // len(PING))
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(flood)
        clients.append(sock)
    return clients


def wait_for_fds(pid: int, at_most: int) -> int:
    deadline = time.monotonic() + 15
    while open_fds(pid) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_fds(pid)


def test_a_client_that_never_reads_its_answers_is_dropped(served: Served) -> None:
    fds = open_fds(served.pid)
    big = json.dumps({"input": ["a few words of text"] * 1024}).encode()  # ~0.4 MB of embeddings per answer
    request = b"POST /predictions/e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up in the server, not here
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(request * 16)
        assert wait_for_fds(served.pid, fds) <= fds  # dropped while our socket is still open
    assert answers_ping(served.port)


def test_a_body_longer_than_declared_is_read_as_the_next_request(served: Served) -> None:
    assert statuses(raw_exchange(served.port, PREDICT + b"garbage here\r\n\r\n")) == [200, 400]
    assert statuses(raw_exchange(served.port, PREDICT + PING)) == [200, 200]  # the extra bytes were a request


def test_a_body_shorter_than_declared_is_ended_408_after_the_header_timeout(served: Served) -> None:
    short = PREDICT.replace(b"Content-Length: 13", b"Content-Length: 100")
    answer = raw_exchange(served.port, short)
    assert statuses(answer) == [408] and b"request body stalled" in answer
    served.output.wait_for("the client disconnected before its answer")  # the request saw a disconnect
    assert answers_ping(served.port)


def test_memory_stays_bounded_under_repeated_abuse(served: Served) -> None:
    def round_of_abuse() -> None:
        for payload in MALFORMED.values():
            raw_exchange(served.port, payload)
        for _ in range(10):
            raw_exchange(served.port, b"GET /ping HTTP/1.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
            raw_exchange(served.port, PREDICT + PREDICT + b"GARBAGE\r\n\r\n")
        flooding = pipelining_clients_that_never_read(served.port, 30)
        slowloris(served.port, 200)  # meanwhile the flooding clients are answered as far as allowed, then dropped
        for sock in flooding:
            sock.close()

    round_of_abuse()  # warm-up: buffers and caches reach their working size
    before = rss_mib(served.pid)
    for _ in range(3):
        round_of_abuse()
    after = rss_mib(served.pid)
    print(f"server RSS after a warm-up round of abuse: {before:.1f} MiB, after 3 more rounds: {after:.1f} MiB")
    assert after < before + 50
    assert answers_ping(served.port)
