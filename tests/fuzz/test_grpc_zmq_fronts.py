"""Property-based fuzzing of the protocols on ports of their own (issue 18): KServe V2 gRPC ModelInferRequests with
hostile content and raw bytes that are no message at all, and bert-as-service's ZeroMQ frames, against a live
server. Every gRPC call ends OK or with a status that blames the request (never INTERNAL or UNKNOWN); every
well-framed ZeroMQ request gets a reply (vectors, or the error header with a 4xx), other frames are dropped; and
both ports, and HTTP, still serve afterwards."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import zmq
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2
from zmq.utils.monitor import recv_monitor_message

from berthing.config import Settings
from berthing.registry import Registry
from berthing.server.protocols.kserve_tensors import PARAMETERS, encode_bytes
from tests.fuzz.strategies import FRAGMENTS, LIMITS, WORDS, dump, fuzz_settings, json_values
from tests.fuzz.targets import KSERVE_INPUTS, PREDICTION, SHAPES, TASKS
from tests.support.http import WAIT_S, clone
from tests.support.servers import ThreadServer

MAX_BODY = 1 << 20  # the ZeroMQ message limit; gRPC's stays at its 4 MB floor


@pytest.fixture(scope="module")
def server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    """A model of every task, named after it; "embed" is the ZeroMQ port's model."""
    registry = Registry()
    for task in TASKS:
        registry.add(clone(load(task), task))
    with ThreadServer(registry, settings.model_copy(update={"default_model": "embed", "max_body_bytes": MAX_BODY})) as up:
        yield up


@pytest.fixture(scope="module")
def channel(server: ThreadServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}") as opened:
        yield opened


class Zmq:
    """bert-as-service's wire as BertClient speaks it (PUSH requests, SUB replies), every receive bounded."""

    def __init__(self, server: ThreadServer) -> None:
        self.context = zmq.Context()
        self.push, self.sub = self.context.socket(zmq.PUSH), self.context.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")  # every identity, the fuzzer's odd ones included
        self.sub.setsockopt(zmq.RCVTIMEO, int(WAIT_S * 1000))
        self.push.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        self.push.connect(f"tcp://127.0.0.1:{server.listener_port('bert-serving', 'in')}")
        self.sub.connect(f"tcp://127.0.0.1:{server.listener_port('bert-serving', 'out')}")
        self.next_id = 1000

    def request(self, payload: bytes, identity: bytes = b"fuzz-probe") -> tuple[bytes, bytes]:
        """Send BertClient's four frames with a fresh request id; return what its reply will carry."""
        self.next_id += 1
        req_id = str(self.next_id).encode()
        self.push.send_multipart([identity, payload, req_id, b"1"])
        return identity, req_id

    def reply(self, identity: bytes, req_id: bytes) -> list[bytes]:
        """The reply to one request; others (the fuzzer's) are skipped. zmq.Again after WAIT_S fails the test."""
        while True:
            frames = self.sub.recv_multipart()
            if frames[0] == identity and frames[-1] == req_id:
                return frames

    def close(self) -> None:
        self.push.close()
        self.sub.close()
        self.context.term()


@pytest.fixture(scope="module")
def bert_zmq(server: ThreadServer) -> Iterator[Zmq]:
    client = Zmq(server)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def still_serving(server: ThreadServer, channel: grpc.Channel, bert_zmq: Zmq) -> Iterator[None]:
    """After each test (instead of conftest's, for another server): HTTP, gRPC and ZeroMQ each answer a valid
    request."""
    yield
    for task in TASKS:
        response = httpx.post(f"{server.url}/predictions/{task}", json=PREDICTION[task], timeout=WAIT_S)
        assert response.status_code == 200, (task, response.text)
    assert_encodes(bert_zmq)
    reply = service_pb2.ModelInferResponse.FromString(infer(channel, valid_infer()))
    assert reply.model_name == "embed" and len(reply.raw_output_contents) == 1


def seen(what: str) -> None:
    """What an answer was, for --hypothesis-show-statistics (how deep the fuzz got)."""
    if currently_in_test_context():
        event(what.encode("utf-8", "backslashreplace").decode())  # hypothesis's report is UTF-8: no lone surrogate


# -- KServe V2 gRPC ---------------------------------------------------------------------------------------------------


def _often(common: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """`common` nine times in ten, else one of `rare`: most requests get past each check to meet the next."""
    return st.sampled_from([common] * 9 * len(rare) + list(rare))


ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
INPUT_NAMES = ("text", "text_pair", "query", "question", "context", "", "embedding", "text\x00")
DATATYPES = ("BYTES", "FP32", "INT64", "BOOL", "UINT8", "FP16", "BF16", "", "bytes", "STRING")
OPTIONS = ("truncate", "normalize", "aggregation_strategy", "max_answer_len", "handle_impossible_answer", "doc_stride",
           "max_question_len", "align_to_words", "top_k", "binary_data_output", "priority", "timeout", "triton_x", "")
DIMS = (0, 1, 2, 3, -1, 2**31, 2**62, 2**63 - 1, -(2**63))
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)  # a protobuf string holds no lone surrogate
ELEMENTS = _often(st.sampled_from([b"a text", b"une phrase ||| x"]), st.binary(max_size=12), st.sampled_from(
    [b"", b" ", b"\xff\xfe", b"\xed\xa0\x80", b"a" * 20_000, b"\x00", "😀".encode()])).flatmap(lambda e: e)


def infer(channel: grpc.Channel, payload: bytes, method: str = "ModelInfer") -> bytes:
    """Raw bytes as the request of `method`, the raw reply: what a client's own (or broken) encoder may send."""
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # no serializers: bytes both ways
    return call(payload, timeout=WAIT_S * 4)


def valid_infer() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="embed")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a text")
    return request.SerializeToString()


def check_status(channel: grpc.Channel, payload: bytes, method: str = "ModelInfer") -> None:
    """OK (with a reply that parses), or a status that blames the request: never INTERNAL or UNKNOWN."""
    try:
        reply = infer(channel, payload, method)
    except grpc.RpcError as error:
        seen(f"{error.code().name}: {error.details()[:40]}")
        assert error.code() in ALLOWED, (method, error.code(), error.details())
        return
    seen("OK")
    if method == "ModelInfer":
        service_pb2.ModelInferResponse.FromString(reply)


def _parameter(draw: st.DrawFn, target: Any) -> None:
    kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
    value = {"bool_param": st.booleans(), "string_param": st.sampled_from(WORDS) | TEXT,
             "int64_param": st.sampled_from([v for v in LIMITS if -(2**63) <= v < 2**63]) | st.integers(-5, 300),
             "double_param": st.floats() | st.sampled_from([float("nan"), float("inf"), -0.0, 1e308]),
             "uint64_param": st.sampled_from([0, 1, 2**63, 2**64 - 1])}[kind]
    setattr(target, kind, draw(value))


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest a client could build, near a valid one for a task: wrong datatypes, shapes that do not
    match the data, huge shapes, raw contents that are garbage or one too many, invalid UTF-8 and 20 KB words in
    BYTES, inputs missing or unknown, odd parameters of every type, unknown models and versions."""
    task = draw(st.sampled_from(TASKS), label="task")
    request = service_pb2.ModelInferRequest(model_name=draw(_often(task, "ghost", "", "embed\n", "x" * 300)),
                                            model_version=draw(_often("", "1.0", "9", "1.0 ")), id=draw(TEXT))
    own = PARAMETERS[task] + ("binary_data_output", "priority", "triton_x")
    for key in draw(st.lists(_often(st.sampled_from(own), st.sampled_from(OPTIONS), TEXT).flatmap(lambda k: k),
                             max_size=3), label="parameters"):
        _parameter(draw, request.parameters[key])
    names = list(KSERVE_INPUTS[task]) + draw(_often([], *([n] for n in INPUT_NAMES)), label="extra input")
    if len(names) > 1 and draw(_often(False, True), label="drop one"):
        names.pop(draw(st.integers(0, len(names) - 1)))
    count = draw(st.integers(1, 3), label="elements")
    raw = draw(_often("none", "per input", "garbage", "one more"), label="raw contents")
    for name in names:
        tensor = request.inputs.add(name=name, datatype=draw(_often("BYTES", *DATATYPES[1:])))
        tensor.shape.extend(draw(_often([count], [count, 1], [], [count + 1], [0], [2**62], [2**31, 2**31], [-1],
                                        [2**63 - 1, 2], [-(2**63)])))
        contents = draw(_often("bytes", "fp32", "int64", "bool", "none"))
        if contents == "bytes" and raw == "none":
            tensor.contents.bytes_contents.extend(draw(st.lists(ELEMENTS, min_size=count, max_size=count)))
        elif contents == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=3)))
        elif contents == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
        elif contents == "bool":
            tensor.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=3)))
        if draw(_often(False, True)):
            _parameter(draw, tensor.parameters[draw(TEXT)])
    if raw != "none":
        valid = st.lists(ELEMENTS, min_size=count, max_size=count).map(encode_bytes)
        total = len(names) + (raw == "one more")
        request.raw_input_contents.extend(draw(st.lists(valid if raw != "garbage" else st.binary(max_size=24),
                                                        min_size=total, max_size=total)))
    for name in draw(st.lists(st.sampled_from(("embedding", "label", "score", "entities", "ghost", "")), max_size=2)):
        request.outputs.add(name=name)
    return request.SerializeToString()


@fuzz_settings(400)
@given(payload=infer_requests())
def test_grpc_hostile_infer_requests(channel: grpc.Channel, payload: bytes) -> None:
    """Well-formed protobuf, hostile content: each answered OK or with a status naming the caller's fault."""
    check_status(channel, payload)


@fuzz_settings(300)
@given(data=st.data())
def test_grpc_garbage_bytes(channel: grpc.Channel, data: st.DataObject) -> None:
    """Bytes that are not the method's message (random, or a valid request cut or with bytes flipped), to every
    method: INVALID_ARGUMENT (gRPC's own deserializer answered INTERNAL), never a dead listener."""
    valid = data.draw(infer_requests(), label="request") or valid_infer()
    mutated = data.draw(st.sampled_from(["random", "cut", "flip"]), label="mutation")
    if mutated == "random":
        payload = data.draw(st.binary(max_size=64), label="bytes")
    elif mutated == "cut":
        payload = valid[: data.draw(st.integers(0, len(valid)), label="cut at")]
    else:
        at = data.draw(st.integers(0, len(valid) - 1), label="at")
        payload = valid[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + valid[at + 1 :]
    method = data.draw(st.sampled_from(["ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ServerLive"]))
    check_status(channel, payload, method)


GRPC_REGRESSIONS = {
    "not protobuf": b"\xff\xff\xff",  # INTERNAL "Exception deserializing request!" before the fix
    "model name not UTF-8": b"\x0a\x02\xff\xfe",  # field 1 (model_name), a string, with invalid UTF-8
    "truncated": valid_infer()[:-3],
    "over the message limit": b"\x3a\x80\x80\x80\x02" + b"\x00" * (4 << 20),  # raw_input_contents of 4 MiB: past it
}


@pytest.mark.parametrize("case", GRPC_REGRESSIONS)
def test_grpc_regressions(channel: grpc.Channel, case: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        infer(channel, GRPC_REGRESSIONS[case])
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if case == "over the message limit" else grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.code() == code, refused.value.details()


# -- bert-as-service over ZeroMQ --------------------------------------------------------------------------------------


def assert_encodes(client: Zmq) -> None:
    """A valid request is answered with one float32 vector per text."""
    frames = client.reply(*client.request(b'["a text", "another"]'))
    header = json.loads(frames[1])
    assert header["dtype"] == "float32" and header["shape"][0] == 2, header
    assert len(frames[2]) == 4 * math.prod(header["shape"])


def check_zmq_reply(frames: list[bytes], payload: bytes) -> None:
    """A command's config, the error header (with a 4xx) the clients fail on, or vectors for valid texts."""
    if payload in (b"SHOW_CONFIG", b"SHOW_STATUS"):
        assert len(frames) == 3 and json.loads(frames[1])["model"] == "embed"
        return
    assert len(frames) == 4, frames
    header = json.loads(frames[1])
    seen(header["dtype"][:60])
    if header["dtype"].startswith("berthing error "):
        assert 400 <= header["error"]["code"] < 500 and SHAPES["berthing"](header["error"]), header
        assert isinstance(pickle.loads(frames[2]), str)  # our own server's reply
    else:
        assert header["dtype"] == "float32" and len(frames[2]) == 4 * math.prod(header["shape"]), header


PAYLOADS = st.one_of(
    json_values.map(dump), st.sampled_from(list(FRAGMENTS.values())), st.binary(max_size=48),
    st.lists(st.sampled_from(WORDS) | st.text(max_size=12) | json_values, min_size=1, max_size=4).map(dump),
    st.sampled_from(list(FRAGMENTS.values())).map(lambda fragment: b'["a text", ' + fragment + b"]"),
    st.sampled_from([b"SHOW_CONFIG", b"SHOW_STATUS", b"TERMINATION", b"", b'["' + b"a" * (1 << 17) + b'"]',
                     b'[["a", "b"], ["c"]]', b'["a ||| b"]', b'["\\ud800"]', b"[null]", b"[]"]),
)


@fuzz_settings(200)
@given(data=st.data())
def test_zmq_garbage(bert_zmq: Zmq, data: st.DataObject) -> None:
    """Well-framed requests with any payload and identity get a reply in the error shape (or vectors); frames that
    are not BertClient's four are dropped, and the next valid request is answered."""
    payload = data.draw(PAYLOADS, label="payload")
    if data.draw(st.sampled_from([True, True, True, False]), label="well framed"):
        identity = data.draw(st.binary(max_size=12), label="identity")
        sent = bert_zmq.request(payload, identity)
        if payload != b"TERMINATION":  # ignored, as berthing stops only with its process
            check_zmq_reply(bert_zmq.reply(*sent), payload)
    else:
        frames = data.draw(st.lists(st.binary(max_size=8), min_size=1, max_size=6), label="frames")
        frames.insert(min(1, len(frames)), payload)
        bert_zmq.push.send_multipart(frames)
    assert_encodes(bert_zmq)


def test_zmq_message_over_the_limit_is_dropped(server: ThreadServer, bert_zmq: Zmq) -> None:
    """A message past max_body_bytes closes that sender's connection (ZeroMQ's MAXMSGSIZE): seen as a disconnect
    here, and every other client is still served."""
    other = Zmq(server)
    monitor = other.push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        monitor.setsockopt(zmq.RCVTIMEO, int(WAIT_S * 1000))
        other.request(b'["' + b"a" * MAX_BODY + b'"]')
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        other.push.disable_monitor()
        monitor.close()
        other.close()
    assert_encodes(bert_zmq)
