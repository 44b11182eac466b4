"""KServe V2 / Open Inference Protocol over gRPC (inference.GRPCInferenceService), on its own port.

A sync grpc.server with a thread pool; each RPC hands its inference to the app's event loop, so it goes through the
same models, batcher and limits as the HTTP routes. Outputs always travel in raw_output_contents (tritonclient's
as_numpy reads nothing else). Errors are gRPC statuses: INVALID_ARGUMENT for bad input, NOT_FOUND for an unknown
model, UNAVAILABLE (with retry-after metadata) when the model sheds load, UNAUTHENTICATED without the token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from berthing.engine.admission import DEADLINE
from berthing.server.gateway import Gateway
from berthing.server.protocols import kserve_tensors as kt
from berthing.server.protocols.kserve_grpc_proto import CLASSES, METHODS, SERVICE
from berthing.server.security import check_token
from berthing.types import BadRequest, BerthingError, ModelNotFound
from berthing.version import __version__

log = logging.getLogger("berthing.server")
PROTOCOL = "kserve-grpc"
WORKERS = 64  # RPCs in flight at once; each waits on the event loop, not on a core


def status_of(error: BerthingError) -> grpc.StatusCode:
    """A berthing error's gRPC status."""
    if isinstance(error, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND
    if error.code in (401, 403):
        return grpc.StatusCode.UNAUTHENTICATED if error.code == 401 else grpc.StatusCode.PERMISSION_DENIED
    if 400 <= error.code < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    if error.code == 503:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def parameter(value: Any) -> Any:
    """An InferParameter's value (bool, int, str or float), None when unset."""
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


async def _within(coroutine: Coroutine[Any, Any, Any], deadline: float) -> Any:
    """Run `coroutine` with the request's deadline set, so the batcher refuses or drops work that would be late."""
    DEADLINE.set(deadline)
    return await coroutine


class Service:
    """The RPCs, each run in a pool thread; inference is awaited on the app's loop."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway, self.loop = gateway, loop

    def _await(self, coroutine: Coroutine[Any, Any, Any], context: grpc.ServicerContext) -> Any:
        remaining = context.time_remaining()  # the client's gRPC deadline, as X-Berthing-Timeout-Ms is over HTTP
        if remaining is not None:
            coroutine = _within(coroutine, time.monotonic() + remaining)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        context.add_callback(future.cancel)  # the client went away or its deadline passed
        return future.result()

    def ServerLive(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        return CLASSES["ServerLiveResponse"](live=not self.gateway.registry.crashed())  # as /health/live

    def ServerReady(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        return CLASSES["ServerReadyResponse"](ready=bool(self.gateway.registry.names()))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        return CLASSES["ServerMetadataResponse"](name="berthing", version=__version__, extensions=kt.EXTENSIONS)

    def ModelReady(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        """Ready false for a model not served (as Triton answers), never an error."""
        try:
            kt.served(self.gateway.lookup(request.name or None, request.version or None))
        except BerthingError:
            return CLASSES["ModelReadyResponse"](ready=False)
        return CLASSES["ModelReadyResponse"](ready=True)

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        model = self.gateway.lookup(request.name or None, request.version or None)
        seen["label"] = f"{model.name}:{model.version}"
        versions = [m.version for m in self.gateway.registry.versions(model.name)]
        meta = kt.metadata(model, versions)
        response = CLASSES["ModelMetadataResponse"](name=meta["name"], versions=versions, platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for spec in meta[key]:
                getattr(response, key).add(**spec)
        return response

    def ModelConfig(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        model = self.gateway.lookup(request.name or None, request.version or None)
        seen["label"] = f"{model.name}:{model.version}"
        cfg = kt.config(model, self.gateway.settings.max_items)
        response = CLASSES["ModelConfigResponse"]()
        out = response.config
        out.name, out.platform, out.backend = cfg["name"], cfg["platform"], cfg["backend"]
        out.max_batch_size = cfg["max_batch_size"]
        for key in ("input", "output"):
            for spec in cfg[key]:
                getattr(out, key).add(**spec)
        for key, value in cfg["parameters"].items():
            out.parameters[key].string_value = value["string_value"]
        return response

    def ModelInfer(self, request: Any, context: grpc.ServicerContext, seen: dict[str, str]) -> Any:
        model = self.gateway.lookup(request.model_name or None, request.model_version or None)
        seen["label"] = f"{model.name}:{model.version}"
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input or none")
        tensors = []
        for i, item in enumerate(request.inputs):
            shape = list(item.shape)
            kt.check_shape(shape, item.name)
            values = kt.from_raw(raw[i], item.datatype, item.name) if raw else list(item.contents.bytes_contents)
            tensors.append(kt.Tensor(item.name, item.datatype, shape, values))
        parameters = {key: parameter(value) for key, value in request.parameters.items()}
        wanted = [o.name for o in request.outputs] or None
        outputs = self._await(kt.infer(model, tensors, parameters, wanted, self.gateway.settings.max_items), context)
        response = CLASSES["ModelInferResponse"](model_name=model.name, model_version=model.version, id=request.id)
        for tensor in outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(kt.to_raw(tensor))
        return response


def parse(message: type[Message], data: bytes) -> Any:
    """The request's bytes as its message; bytes that are not one (grpc's own deserializer answered INTERNAL) are
    the caller's error."""
    try:
        return message.FromString(data)
    except DecodeError as exc:
        raise BadRequest(f"the request is not a valid {message.DESCRIPTOR.full_name}: {exc}") from None


def _handler(service: Service, method: str, token: str | None) -> Callable[[bytes, grpc.ServicerContext], Any]:
    """One RPC with auth, berthing errors as gRPC statuses, and the request counted by protocol and route."""
    run = getattr(service, method)
    message = CLASSES[METHODS[method][0]]

    def handle(data: bytes, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        seen = {"label": "unknown"}  # the model's name:version once looked up, for the request metric
        status, failure = "200", None
        try:
            if token:
                check_token(dict(context.invocation_metadata()).get("authorization"), token, "inference")
            return run(parse(message, data), context, seen)
        except BerthingError as error:
            status, failure = str(error.code), error
        except concurrent.futures.CancelledError:  # the client went away; nobody reads an answer
            status = "499"
            raise
        except Exception as exc:  # any bug is an INTERNAL status, logged
            log.exception("unexpected error on %s %s", PROTOCOL, method)
            status, failure = "500", BerthingError(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            service.gateway.metrics.requests.labels(seen["label"], PROTOCOL, method, status).inc()
            if method == "ModelInfer":
                service.gateway.metrics.latency.labels(seen["label"]).observe(time.perf_counter() - started)
        if failure.code == 503:  # load shedding, expected under overload: a warning, and when to come back
            log.warning("%s %s: %s", PROTOCOL, seen["label"], failure.message)
            context.set_trailing_metadata([(k.lower(), v) for k, v in failure.headers.items()])
        elif failure.code >= 500:
            log.error("%s %s: %s", PROTOCOL, seen["label"], failure.message)
        context.abort(status_of(failure), failure.message)

    return handle


class GrpcListener:
    """inference.GRPCInferenceService on grpc_host:grpc_port (0: a free port), loopback by default."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.server: grpc.Server | None = None

    def start(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> str:
        settings = gateway.settings
        service = Service(gateway, loop)
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                _handler(service, method, settings.inference_token),
                request_deserializer=None,  # bytes: the handler parses them, so garbage is INVALID_ARGUMENT
                response_serializer=CLASSES[response].SerializeToString,
            )
            for method, (_request, response) in METHODS.items()
        }
        limit = max(settings.max_body_bytes, 4 * 1024 * 1024)
        server = grpc.server(
            ThreadPoolExecutor(WORKERS, thread_name_prefix="kserve-grpc"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)],
        )
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind {address}: {exc}") from None
        if not port:
            raise OSError(f"cannot bind {address}")
        server.start()
        self.server, self.ports["grpc"] = server, port
        return f"KServe V2 gRPC (inference.GRPCInferenceService) on {settings.grpc_host}:{port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=5).wait()
            self.server = None
