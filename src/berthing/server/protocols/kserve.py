"""KServe V2 / Open Inference Protocol over HTTP (/v2/...), with Triton's binary tensor extension, as tritonclient speaks it.

tritonclient sends no Content-Type and, by default, binary inputs after a JSON header whose length is in
Inference-Header-Content-Length; it asks for binary outputs the same way. Errors are {"error": message}: 400 for
every client error (an unknown model too, as Triton answers), 503 with Retry-After when the model sheds load.
"""

from __future__ import annotations

import zlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.server.gateway import Call, Gateway, json_response
from berthing.server.openapi import served_versions
from berthing.server.protocols import kserve_openapi
from berthing.server.protocols import kserve_tensors as kt
from berthing.server.protocols.codec import dumps, parse_json
from berthing.types import BadRequest, BerthingError, PayloadTooLarge
from berthing.version import __version__

HEADER_LENGTH = "inference-header-content-length"


def error(error: BerthingError) -> Response:
    """{"error": message}: 400 for any client error (Triton's status) but auth's 401/403, 503 + Retry-After, else 500."""
    status = 400 if 400 <= error.code < 500 and error.code not in (401, 403) else error.code
    return json_response({"error": error.message}, status, error.headers)


def _model(request: Request, call: Call) -> Any:
    return call.model(request.path_params["model"], request.path_params.get("version"), route="KServe V2")


async def server_metadata(request: Request, call: Call) -> Response:
    """GET /v2."""
    return json_response({"name": "berthing", "version": __version__, "extensions": kt.EXTENSIONS})


async def live(request: Request, call: Call) -> Response:
    """GET /v2/health/live: the process answers, and no model's batcher stopped on an error (tritonclient reads
    the status: 200 is live)."""
    live = not call.gateway.registry.crashed()
    return json_response({"live": live}, 200 if live else 503)


async def ready(request: Request, call: Call) -> Response:
    """GET /v2/health/ready: ready once a model is served."""
    ok = bool(call.gateway.registry.names())
    return json_response({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: Request, call: Call) -> Response:
    """GET /v2/models/{m}[/versions/{v}]."""
    model = _model(request, call)
    versions = [m.version for m in call.gateway.registry.versions(model.name)]
    return json_response(kt.metadata(model, versions))


async def model_ready(request: Request, call: Call) -> Response:
    """GET .../ready: 200 when the model (version) is served, 400 when unknown (as Triton)."""
    model = _model(request, call)
    kt.served(model)
    return json_response({"name": model.name, "ready": True})


async def model_config(request: Request, call: Call) -> Response:
    """GET .../config: Triton's model configuration."""
    return json_response(kt.config(_model(request, call), call.settings.max_items))


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request_compression_algorithm), held to the same size limit."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding '{encoding}' (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
    return out


def _split(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON header and the binary tail (the whole body is JSON without Inference-Header-Content-Length)."""
    if header_length is None:
        size = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    else:
        size = int(header_length)
    if not body[:size].strip():
        raise BadRequest("empty body: send a KServe V2 inference request")
    data = parse_json(body[:size])
    if not isinstance(data, dict):
        raise BadRequest("the inference request must be a JSON object")
    return data, body[size:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    return value


def read_inputs(data: dict[str, Any], tail: bytes) -> list[kt.Tensor]:
    """The request's input tensors: JSON `data`, or a slice of the binary tail (binary_data_size, in input order)."""
    inputs = data.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest("field 'inputs' must be a list of tensors")
    tensors: list[kt.Tensor] = []
    at = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("datatype"), str):
            raise BadRequest(f"inputs[{i}] must be an object with 'name', 'datatype', 'shape' and 'data'")
        name, datatype = item["name"], item["datatype"]
        shape = kt.check_shape(item.get("shape"), name)
        size = _parameters(item.get("parameters"), f"input '{name}' parameters").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or at + size > len(tail):
                raise BadRequest(f"input '{name}': binary_data_size {size!r} does not fit the {len(tail) - at} bytes left")
            values = kt.from_raw(tail[at:at + size], datatype, name)
            at += size
        elif "data" in item:
            values = kt.flatten(item["data"])
        else:
            raise BadRequest(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        tensors.append(kt.Tensor(name, datatype, shape, values))
    if at != len(tail):
        raise BadRequest(f"{len(tail) - at} bytes of binary data follow the inputs that no input claims")
    return tensors


def _wanted(data: dict[str, Any]) -> tuple[list[str] | None, dict[str, bool]]:
    """The outputs asked for (None: all) and, per name, whether it was asked in binary."""
    outputs = data.get("outputs")
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest("field 'outputs' must be a list of objects with a 'name'")
    binary = {}
    for o in outputs:
        flag = _parameters(o.get("parameters"), f"output '{o['name']}' parameters").get("binary_data")
        if flag is not None:
            binary[o["name"]] = bool(flag)
    return [o["name"] for o in outputs], binary


def write_outputs(head: dict[str, Any], tensors: list[kt.Tensor], binary: dict[str, bool], default: bool) -> Response:
    """The answer: JSON `data` per output, or binary after the JSON header where asked."""
    outputs, tail = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary.get(tensor.name, default):
            raw = kt.to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = kt.to_json_data(tensor)
        outputs.append(entry)
    header = dumps({**head, "outputs": outputs})
    if not tail:
        return Response(header, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return Response(header + b"".join(tail), headers=headers, media_type="application/octet-stream")


async def infer(request: Request, call: Call) -> Response:
    """POST /v2/models/{m}[/versions/{v}]/infer."""
    model = _model(request, call)
    kt.served(model)
    body = _decompress(await call.body(), request.headers.get("content-encoding", ""), call.settings.max_body_bytes)
    data, tail = _split(body, request.headers.get(HEADER_LENGTH))
    parameters = _parameters(data.get("parameters"), "field 'parameters'")
    tensors = read_inputs(data, tail)
    wanted, binary = _wanted(data)
    outputs = await kt.infer(model, tensors, parameters, wanted, call.settings.max_items)
    head: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if isinstance(data.get("id"), str) and data["id"]:
        head["id"] = data["id"]
    return write_outputs(head, outputs, binary, parameters.get("binary_data_output") is True)


def routes(gateway: Gateway) -> list[Route]:
    """KServe V2's routes on the inference port."""

    def ep(name: str, handler: Any) -> Any:
        return gateway.endpoint("kserve", name, handler, error)

    model_routes = {"": ("metadata", model_metadata, "GET"), "/ready": ("ready", model_ready, "GET"),
                    "/config": ("config", model_config, "GET"), "/infer": ("infer", infer, "POST")}
    out = [
        Route("/v2", ep("server", server_metadata), methods=["GET"]),
        Route("/v2/health/live", ep("live", live), methods=["GET"]),
        Route("/v2/health/ready", ep("health", ready), methods=["GET"]),
    ]
    for suffix, (name, handler, method) in model_routes.items():
        endpoint = ep(name, handler)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            out.append(Route(base + suffix, endpoint, methods=[method]))
    return out


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes (schemas in kserve_openapi.py)."""
    registry = gateway.registry
    return kserve_openapi.openapi_paths(registry.names(), served_versions(registry))
