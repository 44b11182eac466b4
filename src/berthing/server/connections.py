"""What uvicorn's httptools protocol leaves unbounded, bounded: how long and how large a request head may be, how long
a request body may stall, and how a refused connection is closed; and the SIGTERM drain's view of a connection.

uvicorn (0.55) has no deadline for a request head that arrives slowly (its keep-alive timer is cancelled by any byte,
so a client sending one byte a second holds a connection forever: slowloris), no bound on a head's size (httptools
buffers a header line of any length), and answers a malformed request by closing at once, which resets the
connection, so the client often never reads the 400. `LimitedHttpToolsProtocol` adds each missing bound; `runner`
passes it to uvicorn as its `http` class."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

MAX_HEAD_BYTES = 64 * 1024  # request line + header fields; nginx allows 4 x 8 KiB, Node 16 KiB, h11 16 KiB
MAX_HEADERS = 100  # header fields in one request (Apache's LimitRequestFields)
MAX_PIPELINED = 16  # requests parsed ahead of the one being answered; each read (256 KiB) could otherwise queue ~10,000
LINGER_S = 2.0  # after an error answer: how long the rest of what the client sends is read and dropped...
LINGER_BYTES = 4 * 1024 * 1024  # ...and how much of it, before the socket is closed (nginx's lingering close)
DRAIN_IDLE_GRACE_S = 1.0  # on SIGTERM: how long a connection without a request may still start one


class Refused(Exception):
    """Raised in a parser callback to stop parsing: the head is too large (431), or too many requests are pipelined
    (429); `_parse_failed` answers it."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and size bound, a stalled-body bound, error answers
    the client can read, and a drain that serves what a connection already sent.

    A connection is in one phase: `idle` (waiting for a request's first byte), `head` (request line and fields
    arriving), `body` (head complete, body arriving). The head must be complete `header_timeout_s` after the
    connection opened or its previous response was sent (408); a body that receives nothing for `header_timeout_s`
    while the server is reading is ended the same way."""

    header_timeout_s: float = 10.0
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "idle"
        self._head_bytes = 0  # bytes read while a head was awaited: bounds what httptools buffers for a partial field
        self._head_size = 0  # exact size of the head's completed parts (URL, fields)
        self._refused: tuple[int, str] | None = None  # why a parser callback stopped parsing
        self._deferred: tuple[int, str] | None = None  # a bad pipelined request, answered after the ones before it
        self._lingering = False
        self._discarded = 0
        self._draining = False
        self._closing_cycle: RequestResponseCycle | None = None  # the cycle a drain marked as the connection's last
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # timers
    def _arm(self, name: str, delay: float, callback: Any) -> None:
        self._cancel(name)
        self._timers[name] = self.loop.call_later(delay, callback)

    def _cancel(self, *names: str) -> None:
        for name in names or tuple(self._timers):
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()

    def _request_in_progress(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.header_timeout_s, self._head_timed_out)
        if getattr(self.server_state, "draining", False):  # accepted from the backlog once SIGTERM came
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        if self._deferred is not None:  # the rest of a pipeline after a bad request is not parsed
            return
        if self._phase != "body":
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._parse_failed()
            return
        if self._phase == "head" and self._head_bytes > self.max_head_bytes:
            self._refused = (431, f"request head over {self.max_head_bytes} bytes")
            self._parse_failed()
        elif self._phase == "body" and self.cycle is not None and not self.cycle.response_complete:
            self._arm("body", self.header_timeout_s, self._body_timed_out)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    # httptools callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._head_size = "head", 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if len(self.headers) >= self.max_headers:
            self._refused = (431, f"more than {self.max_headers} header fields")
            raise Refused(self._refused[1])
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_size > self.max_head_bytes:
            self._refused = (431, f"request head over {self.max_head_bytes} bytes")
            raise Refused(self._refused[1])
        if len(self.pipeline) >= MAX_PIPELINED:
            self._refused = (429, f"more than {MAX_PIPELINED} pipelined requests waiting: send the rest after answers")
            raise Refused(self._refused[1])
        self._cancel("head")
        self._phase, self._head_bytes = "body", 0
        previous = self.cycle
        super().on_headers_complete()
        if self._draining and self.cycle is not previous:
            self._last_on_connection(self.cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase, self._head_bytes = "idle", 0
        self._cancel("body")
        if self._draining and not self._request_in_progress():  # the rest of a body answered early: done
            self.transport.close()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        self._cancel("body")
        super().on_response_complete()
        if self.transport.is_closing():  # closed after its last response: the client must still read it
            self._watch_send()
            return
        if pipelined:
            return
        if self._deferred is not None:
            self._refuse(*self._deferred)
        elif self._draining and self._phase == "idle":
            self.transport.close()
        else:
            self._arm("head", self.header_timeout_s, self._head_timed_out)

    # limits
    def _parse_failed(self) -> None:
        status, message = self._refused or (400, "Invalid HTTP request received.")
        self.logger.info("refused a request: %s", message)
        if self._request_in_progress():
            if self._phase != "body" or self.pipeline:  # a later pipelined request is bad: answer the earlier ones
                self._deferred = (status, message)
                return
            cycle = self.cycle  # the body of the request being answered is malformed: that request ends here
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(status, message)

    def _head_timed_out(self) -> None:
        self._timers.pop("head", None)
        if self.transport.is_closing() or self._lingering or self._request_in_progress():
            return
        if self._phase == "head":
            self._refuse(408, f"request head not complete within {self.header_timeout_s:g} s")
        else:  # nothing of a request yet, or the rest of a body already answered: close without a word
            self._linger()

    def _body_timed_out(self) -> None:
        self._timers.pop("body", None)
        cycle = self.cycle
        if self.transport.is_closing() or self._phase != "body" or cycle is None or cycle.response_complete:
            return
        if self.flow.read_paused or self.pipeline or cycle.waiting_for_100_continue:
            # the server is not reading this body yet (or has not asked for it): not the client's stall
            self._arm("body", self.header_timeout_s, self._body_timed_out)
            return
        if cycle.response_started:
            self.transport.close()
            return
        cycle.disconnected = True  # the app reads a disconnect; its answer is not sent
        cycle.message_event.set()
        self._refuse(408, f"request body stalled: nothing received for {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` and close the connection so that the client can read it."""
        self._cancel()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        body = message.encode("ascii", "replace")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._linger()

    def _linger(self) -> None:
        """Half-close: send FIN, then read and drop what the client still sends (bounded) before closing, so that a
        client still writing reads the answer instead of a connection reset."""
        self._lingering = True
        self.flow.resume_reading()
        if not self.transport.can_write_eof():  # TLS: close_notify, then close
            self.transport.close()
            return
        self.transport.write_eof()
        self._arm("linger", LINGER_S, self._close_now)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
            self._watch_send()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_send()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel("send")

    def _watch_send(self) -> None:
        """A response the client does not read is dropped when the unsent part has not shrunk for header_timeout_s:
        otherwise a task (while writing is paused) or a closing transport (after the last write) would hold it
        forever. A slow reader that makes progress is not cut (nginx's send_timeout)."""
        left = self.transport.get_write_buffer_size()
        if left:
            self._arm("send", self.header_timeout_s, lambda: self._send_stalled(left))

    def _send_stalled(self, before: int) -> None:
        self._timers.pop("send", None)
        left = self.transport.get_write_buffer_size()
        if left and left >= before:
            self.logger.info("closed a connection whose client read nothing for %g s", self.header_timeout_s)
            self.transport.abort()
        elif left:
            self._watch_send()

    def _close_now(self) -> None:
        if self.transport.get_write_buffer_size():  # the client is not reading what we sent: drop it
            self.transport.abort()
        else:
            self.transport.close()

    # SIGTERM drain
    def shutdown(self) -> None:
        """Called once the server stops accepting: the request in progress (or the last pipelined one) is answered
        with `Connection: close`; a head arriving is given its deadline; a connection without a request is given
        DRAIN_IDLE_GRACE_S to start one (it may be on its way), then closed."""
        self._draining = True
        if self._lingering:
            self.transport.close()
        elif self._request_in_progress():
            self._last_on_connection(self.pipeline[0][0] if self.pipeline else self.cycle)
        elif self._phase == "idle":
            self._arm("grace", DRAIN_IDLE_GRACE_S, self._close_if_idle)

    def _last_on_connection(self, cycle: RequestResponseCycle) -> None:
        """Make `cycle` the connection's last; an earlier one marked so that has not answered yet is not."""
        earlier = self._closing_cycle
        if earlier is not None and earlier is not cycle and not earlier.response_started:
            earlier.keep_alive = True
        cycle.keep_alive = False
        self._closing_cycle = cycle

    def _close_if_idle(self) -> None:
        self._timers.pop("grace", None)
        if not self.transport.is_closing() and not self._request_in_progress() and self._phase == "idle":
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with this server's head deadline."""
    return type("HttpProtocol", (LimitedHttpToolsProtocol,), {"header_timeout_s": header_timeout_s})


def accept_backlog(sockets: list[socket.socket]) -> list[socket.socket]:
    """Accept every connection already in the listening sockets' queues (non-blocking), before they are closed.

    A client whose TCP handshake completed is connected from its side; closing the listening socket would reset it
    without an answer. Accepting the queue first makes the drain's promise exact: every connection established before
    the listeners closed is answered, every later one is refused."""
    accepted: list[socket.socket] = []
    for sock in sockets:
        try:
            sock.setblocking(False)
            while True:
                conn, _ = sock.accept()
                conn.setblocking(False)
                accepted.append(conn)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:  # not a listening socket (any more)
            continue
    return accepted
