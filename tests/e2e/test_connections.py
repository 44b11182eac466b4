"""What `berthing serve` does with connections: idle keep-alive ones are closed, proxy headers are not believed."""

from __future__ import annotations

import socket

from berthing.config import Settings
from berthing.server.connections import LimitedHttpToolsProtocol
from berthing.server.runner import KEEP_ALIVE_S, uvicorn_config
from tests.support.servers import cli_server, read_response


def test_the_server_trusts_no_forwarded_header_closes_idle_connections_and_bounds_heads_and_drains() -> None:
    settings = Settings(header_timeout_s=3, drain_timeout_s=7)
    config = uvicorn_config(object(), settings)
    assert config.proxy_headers is False  # X-Forwarded-For is whatever a client writes
    assert issubclass(config.http, LimitedHttpToolsProtocol) and config.http.header_timeout_s == 3
    assert config.timeout_graceful_shutdown == 7  # DrainedServer's bound on the whole SIGTERM drain
    assert config.timeout_keep_alive == KEEP_ALIVE_S
    assert config.server_header is False


def test_an_idle_keep_alive_connection_is_closed(tiny_model_dir, settings) -> None:
    with cli_server([f"e={tiny_model_dir('embed')}", "--cache-dir", str(settings.cache_dir)]) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=KEEP_ALIVE_S + 20) as sock:
            sock.sendall(f"GET /ping HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n".encode())
            answer = read_response(sock).decode("latin-1")
            assert answer.startswith("HTTP/1.1 200 ") and "\r\nserver:" not in answer.lower()
            assert sock.recv(65536) == b""  # the server closed the idle connection (the timeout bounds the wait)
