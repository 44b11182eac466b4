"""Custom handlers: TorchServe's lifecycle (initialize / preprocess / inference / postprocess) on berthing's engine.

A package may carry handler.py with one subclass of BaseHandler. It is Python code from the package, so it runs
only when the server (or `berthing.load`) is told to trust handlers; otherwise loading the package is refused.
berthing calls a handler with one request at a time (`data` is a list of one request, as TorchServe's contract
has it); the model calls it makes (`self.model.predict`) go through the model's shared dynamic batcher, so
requests from many clients are still batched together underneath.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berthing.engine.model import Model, RequestHandler
from berthing.registry import Registry
from berthing.types import BerthingError, ModelLoadError

log = logging.getLogger("berthing.handler")
HANDLER_FILE = "handler.py"


class HandlerNotTrusted(ModelLoadError):
    """A package carries handler code and nobody said to trust it: refused, never imported."""

    code = 403
    type = "HandlerNotTrusted"


class HandlerError(BerthingError):
    """A handler raised something that is not a BerthingError, or returned something unusable."""

    code = 500
    type = "HandlerError"


@dataclass
class Context:
    """What initialize() gets: the package folder and manifest, the model berthing built from it, other models."""

    model_name: str
    model_version: str
    model_dir: Path
    manifest: dict[str, Any]
    model: Model
    registry: Registry | None = None  # the server's models (for ensembles); None in-process
    properties: dict[str, Any] = field(default_factory=dict)

    def get_model(self, name: str, version: str | None = None) -> Model:
        """Another registered model (server only): an ensemble's handler calls its predict()."""
        if self.registry is None:
            raise BerthingError(f"model '{name}' is not reachable: this handler runs outside a server")
        return self.registry.get(name, version)


class BaseHandler:
    """Subclass this in handler.py and override the steps you need; the defaults serve the package's task as is."""

    def __init__(self) -> None:
        self.initialized = False
        self.context: Context | None = None
        self.model: Model | None = None

    def initialize(self, context: Context) -> None:
        """Called once at load, in a worker thread: keep the context and the model; load extra files here."""
        self.context = context
        self.model = context.model
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """The request bodies -> the model's input; by default the one request's body as it came (JSON or text)."""
        return data[0]["body"]

    def inference(self, inputs: Any) -> Any:
        """Run the model: by default the package's task on `inputs` (a text, a list, a JSON object with options)."""
        assert self.model is not None, "initialize() must run first (call super().initialize(context))"
        if isinstance(inputs, dict):  # a JSON object body: the task's own fields and options
            items, single, options = self.model.task.parse_object(inputs, None)
            results = self.model.predict_items(items, options)
            return results[0] if single else results
        return self.model.predict(inputs)

    def postprocess(self, outputs: Any) -> list[Any]:
        """Model output -> one JSON-ready result per request (a list, as TorchServe's contract has it)."""
        return [outputs]

    def handle(self, data: list[dict[str, Any]], context: Context | None = None) -> list[Any]:
        """The whole lifecycle for a list of requests; the server calls it with one request at a time."""
        return self.postprocess(self.inference(self.preprocess(data)))


def load_handler(folder: Path, context: Context) -> BaseHandler:
    """Import the package's handler.py under a private module name, find its BaseHandler subclass, initialize it."""
    path = folder / HANDLER_FILE
    module_name = f"berthing_handler_{context.model_name}_{context.model_version}".replace(".", "_").replace("-", "_")
    where = f"{context.model_name}-{context.model_version}/{HANDLER_FILE}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {where}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"{where} failed to import: {_summary(exc)}") from exc
    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseHandler) and obj is not BaseHandler and obj.__module__ == module_name
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ModelLoadError(f"{where} must define exactly one subclass of berthing.handler.BaseHandler (found: {found})")
    try:
        handler = classes[0]()
        handler.initialize(context)
    except BerthingError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{where}: {classes[0].__name__}.initialize failed: {_summary(exc)}") from exc
    return handler


def bind(handler: BaseHandler, context: Context) -> RequestHandler:
    """What the Model calls per request body (Model.handler): the handler's lifecycle through run_handler."""
    return functools.partial(run_handler, handler, context=context)


def run_handler(handler: BaseHandler, body: Any, context: Context | None) -> Any:
    """One request through the handler (in a worker thread); its own errors become a 500 naming the step."""
    try:
        results = handler.handle([{"body": body, "data": body}], context)
    except BerthingError:
        raise
    except Exception as exc:
        log.error("handler of %s failed:\n%s", context.model_name if context else "?", traceback.format_exc())
        raise HandlerError(f"custom handler failed: {_summary(exc)}") from exc
    if not isinstance(results, list) or len(results) != 1:
        got = f"a list of {len(results)}" if isinstance(results, list) else type(results).__name__
        raise HandlerError(f"custom handler must return a list with one result per request (1 here), got {got}")
    return results[0]


def _summary(exc: BaseException) -> str:
    """Exception type, message and the innermost frame of the handler's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(HANDLER_FILE)]
    where = f" (handler.py line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
