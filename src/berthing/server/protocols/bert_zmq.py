"""bert-as-service's ZeroMQ protocol (bert-serving-client's and bert-base's BertClient) on its own two ports.

Requests arrive on a PULL socket, replies leave on an XPUB socket (a PUB to the clients' SUB) whose first frame is
the client's identity. Everything runs on the app's event loop with zmq.asyncio sockets, inference through the same
batchers as HTTP. XPUB shows when a client's subscription has arrived, so a reply waits for it (ZeroMQ's slow
joiner: a PUB drops what it sends before the SUB has subscribed) instead of sleeping 0.1 s as the original does.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import TYPE_CHECKING, Any

from berthing.server.gateway import Gateway
from berthing.server.protocols.bert_serving import (
    BERT_BASE_VERSION,
    PROTOCOL,
    SERVER_VERSION,
    TASKS,
    options_for,
    parse_texts,
    server_config,
    shape_result,
)
from berthing.server.protocols.codec import dumps, parse_json
from berthing.types import BerthingError, TextInput

if TYPE_CHECKING:
    import zmq.asyncio

    from berthing.engine.model import Model

log = logging.getLogger("berthing.server")
COMMANDS = {b"SHOW_CONFIG": "zmq_config", b"SHOW_STATUS": "zmq_status"}  # -> the metrics route
SUBSCRIBE_WAIT_S = 1.0  # longest a reply waits for its client's subscription (a client gone never subscribes)
CHUNK = 256  # texts per inference call (bert-as-service's max_batch_size); a job's chunks run side by side
CHUNKS_IN_FLIGHT = 4  # chunks in flight over all ZeroMQ jobs, so a flood of big jobs queues here, not as 503s
INLINE_TOKENS = 64  # show_tokens: tokenize more texts than this in a thread, off the event loop


class ZmqListener:
    """PULL on bert_serving_host:bert_serving_port, XPUB on bert_serving_port_out (None: the port after it)."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> str:
        settings = gateway.settings
        if settings.inference_token:
            raise RuntimeError("ZeroMQ carries no token, so with an inference token only HTTP /encode serves BertClient users")
        self._loop = loop
        self._server = asyncio.run_coroutine_threadsafe(_open(gateway), loop).result(timeout=30)
        self.ports = dict(self._server.ports)
        host = settings.bert_serving_host
        return (f"bert-serving (ZeroMQ) on {host}: requests on port {self.ports['in']}, "
                f"replies on port {self.ports['out']} (BertClient(ip, port, port_out))")

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout=30)
            self._server = None


def _bind(sock: zmq.asyncio.Socket, host: str, port: int) -> int:
    """Bind tcp://host:port (0: a free port) and return the port bound."""
    import zmq

    where = f"[{host}]" if ":" in host else host
    if ":" in host:
        sock.setsockopt(zmq.IPV6, 1)
    sock.bind(f"tcp://{where}:{port or '*'}")
    return int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])


async def _open(gateway: Gateway) -> _Server:
    """Bind both sockets on the loop that will use them; on any failure close what was opened."""
    import zmq
    import zmq.asyncio

    settings = gateway.settings
    context = zmq.asyncio.Context()
    pull, xpub = context.socket(zmq.PULL), context.socket(zmq.XPUB)
    try:
        for sock in (pull, xpub):
            sock.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.MAXMSGSIZE, settings.max_body_bytes)
        port_in = _bind(pull, settings.bert_serving_host, settings.bert_serving_port)
        out = settings.bert_serving_port_out
        if out is None:
            out = port_in + 1 if settings.bert_serving_port else 0
        port_out = _bind(xpub, settings.bert_serving_host, out)
    except Exception:
        pull.close(0)
        xpub.close(0)
        context.term()
        raise
    server = _Server(gateway, context, pull, xpub, {"in": port_in, "out": port_out})
    server.start()
    return server


def error_frames(error: BerthingError) -> list[bytes]:
    """A reply the clients fail on at once, with the message (they have no error frame): bert-serving-client raises
    TypeError "data type 'berthing error 422 ...' not understood", bert-base's client an AssertionError."""
    header = {"dtype": f"berthing error {error.code} {error.type}: {error.message}", "shape": [0], "error": error.to_dict()}
    return [dumps(header), pickle.dumps(error.message, protocol=4)]


class _Server:
    """One listener's sockets and tasks: a request loop, a subscription loop, and one task per request."""

    def __init__(self, gateway: Gateway, context: zmq.asyncio.Context, pull: zmq.asyncio.Socket,
                 xpub: zmq.asyncio.Socket, ports: dict[str, int]) -> None:
        self.gateway, self.context, self.pull, self.xpub, self.ports = gateway, context, pull, xpub, ports
        self.subscribed: set[bytes] = set()  # topics (client identities) the XPUB has seen subscribe
        self.waiting: dict[bytes, asyncio.Event] = {}  # identity -> set when its subscription arrives
        self.tasks: set[asyncio.Task[None]] = set()
        self.loops: list[asyncio.Task[None]] = []
        self.chunks = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        self.stats = {"num_data_request": 0, "num_total_seq": 0, "num_sys_request": 0}

    def start(self) -> None:
        self.loops = [asyncio.create_task(self._requests()), asyncio.create_task(self._subscriptions())]

    async def close(self) -> None:
        """Drop what is in flight (the clients time out as with a stopped bert-serving) and free the ports."""
        pending = [*self.loops, *self.tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.pull.close(0)
        self.xpub.close(0)
        self.context.term()

    async def _requests(self) -> None:
        import zmq

        while True:
            try:
                frames = await self.pull.recv_multipart()
            except zmq.ZMQError as exc:  # keep serving: one bad receive must not turn the protocol off
                log.warning("bert-serving: receive failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(frames) != 4 or not frames[2].isdigit() or not frames[3].isdigit():
                log.warning("bert-serving: dropped a request of %d frames (BertClient sends 4: identity, texts, "
                            "request id, count)", len(frames))
                continue
            task = asyncio.create_task(self._handle(*frames))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _subscriptions(self) -> None:
        """XPUB's subscribe (b'\\x01' + topic) and unsubscribe (b'\\x00' + topic) messages; wakes waiting replies."""
        while True:
            message = await self.xpub.recv()
            if not message:
                continue
            topic = message[1:]
            if message[0] == 1:
                self.subscribed.add(topic)
                for identity in [i for i in self.waiting if i.startswith(topic)]:
                    self.waiting.pop(identity).set()
            elif message[0] == 0:
                self.subscribed.discard(topic)

    def _is_subscribed(self, identity: bytes) -> bool:
        return identity in self.subscribed or any(identity.startswith(topic) for topic in self.subscribed)

    async def _send(self, identity: bytes, frames: list[bytes]) -> None:
        """Publish once the client's SUB has subscribed (or after SUBSCRIBE_WAIT_S, as a PUB would anyway)."""
        if not self._is_subscribed(identity):
            event = self.waiting.setdefault(identity, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), SUBSCRIBE_WAIT_S)
            except TimeoutError:
                self.waiting.pop(identity, None)
        await self.xpub.send_multipart(frames)

    async def _handle(self, identity: bytes, payload: bytes, req_id: bytes, count: bytes) -> None:
        started = time.perf_counter()
        label, route, status = "unknown", COMMANDS.get(payload, "zmq_encode"), 200
        try:
            if payload in COMMANDS:
                self.stats["num_sys_request"] += 1
                config = self._config(payload, identity, req_id)
                label = f"{config['model']}:{config['model_version']}" if config["model"] else label
                frames = [identity, dumps(config), req_id]
            elif payload == b"TERMINATION":
                log.warning("bert-serving: ignored TERMINATION from client %r (berthing stops with its process)", identity)
                return
            else:
                model = self.gateway.lookup(None, task=TASKS, route="bert-serving's ZeroMQ port")
                label = f"{model.name}:{model.version}"
                frames = [identity, *await self._encode(model, payload), req_id]
        except BerthingError as error:
            status = error.code
            log.warning("bert-serving: request %s of client %r failed: %s %s", req_id.decode(), identity, error.code,
                        error.message)
            frames = [identity, *error_frames(error), req_id]
        except Exception as exc:
            status = 500
            log.exception("bert-serving: unexpected error on request %s of client %r", req_id.decode(), identity)
            frames = [identity, *error_frames(BerthingError(f"internal error: {type(exc).__name__}: {exc}")), req_id]
        await self._send(identity, frames)
        self.gateway.metrics.requests.labels(label, PROTOCOL, route, str(status)).inc()
        self.gateway.metrics.latency.labels(label).observe(time.perf_counter() - started)

    def _config(self, payload: bytes, identity: bytes, req_id: bytes) -> dict[str, Any]:
        """SHOW_CONFIG/SHOW_STATUS. bert-base's client numbers requests from 0, bert-serving-client's from 1: a
        handshake with id 0 gets the version bert-base checks, any other the one bert-serving-client checks."""
        import zmq

        version = BERT_BASE_VERSION if req_id == b"0" else SERVER_VERSION
        extra: dict[str, Any] = {
            "client": identity.decode("ascii", "replace"), "port": self.ports["in"], "port_out": self.ports["out"],
            "num_concurrent_socket": 1, "pyzmq_version": zmq.pyzmq_version(), "zmq_version": zmq.zmq_version(),
        }
        if payload == b"SHOW_STATUS":
            extra["statistic"] = {**self.stats, "num_total_request": self.stats["num_data_request"]
                                  + self.stats["num_sys_request"]}
        return server_config(self.gateway, extra, version)

    async def _encode(self, model: Model, payload: bytes) -> list[bytes]:
        """[header, data] as the client of the model's task reads them (bert-serving's raw float32, bert-base's pickle)."""
        inputs = parse_texts(parse_json(payload), "texts")
        self.stats["num_data_request"] += 1
        self.stats["num_total_seq"] += len(inputs)
        options = options_for(model)
        parts = await asyncio.gather(*(self._infer(model, inputs[i : i + CHUNK], options)
                                       for i in range(0, len(inputs), CHUNK)))
        result = shape_result(model, [r for part in parts for r in part])
        n = len(inputs)
        if model.spec.task == "classify":
            return [dumps({"dtype": "json", "shape": [n, 1]}), pickle.dumps(result, protocol=4)]
        if model.spec.task == "ner":
            return [dumps({"dtype": "str", "shape": [n, len(result[0])]}), pickle.dumps(result, protocol=4)]
        tokens = await self._tokens(model, inputs)
        return [dumps({"dtype": "float32", "shape": list(result.shape), "tokens": tokens}), result.tobytes()]

    async def _infer(self, model: Model, inputs: list[TextInput], options: dict[str, Any]) -> list[Any]:
        async with self.chunks:
            return await model.infer(inputs, options)

    @staticmethod
    async def _tokens(model: Model, inputs: list[TextInput]) -> list[list[str]]:
        """show_tokens_to_client: the word pieces each text was run as, [CLS] and [SEP] included."""

        def tokenize() -> list[list[str]]:
            return [list(item.encoding.tokens) for item in model.encoder.encode(inputs, truncate=True)]

        return await asyncio.to_thread(tokenize) if len(inputs) > INLINE_TOKENS else tokenize()
