"""TorchServe's inference routes, /predictions/{model}[/{version}], on the gateway."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.server.gateway import Call, Gateway, error_response
from berthing.server.openapi import served_tasks, served_versions, torchserve_paths
from berthing.server.protocols.torchserve import decode_body, dump_result, encode_result, parse_request

JSON = "application/json"


async def predictions(request: Request, call: Call) -> Response:
    """POST /predictions/{model}[/{version}]: the body as TorchServe hands it to a handler; the answer mirrors it."""
    model = call.model(request.path_params["model"], request.path_params.get("version"))
    body = await call.body()
    content_type = request.headers.get("content-type", "")
    if model.handler is not None:
        return Response(dump_result(await model.handle_request(decode_body(body, content_type))), media_type=JSON)
    settings = call.settings
    inputs, single, options = parse_request(body, content_type, settings.max_items, model.task, settings.input_field)
    results = await call.infer(model, inputs, options)
    return Response(encode_result(results, single), media_type=JSON)


def routes(gateway: Gateway) -> list[Route]:
    """TorchServe's inference routes."""
    endpoint = gateway.endpoint("torchserve", "predictions", predictions, error_response)
    return [
        Route("/predictions/{model}", endpoint, methods=["POST"]),
        Route("/predictions/{model}/{version}", endpoint, methods=["POST"]),
    ]


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    registry = gateway.registry
    return torchserve_paths(registry.names(), served_tasks(registry), served_versions(registry))
