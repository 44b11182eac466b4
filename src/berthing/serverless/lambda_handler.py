"""The Lambda entry point: models load here, at import (Lambda's init phase), once per container.

BERTHING_MODEL names the models as `berthing serve` takes them (NAME=SOURCE, several separated by commas; none =
the default model); every other setting comes from BERTHING_* variables as for the server. Neither torch nor
transformers is imported on this path for a package or an exported artifact.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from berthing.serverless.app import ServerlessApp

log = logging.getLogger("berthing.serverless")


def build_app(environ: dict[str, str] | None = None) -> ServerlessApp:
    """Settings from the environment, models from BERTHING_MODEL (or BERTHING_MODELS), loaded one after another."""
    from berthing.config import Settings
    from berthing.loading import load_model
    from berthing.packaging.sources import resolve
    from berthing.registry import Registry

    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = {"lanes": False}  # one request at a time per container: no batcher, no lanes
    if env.get("AWS_LAMBDA_FUNCTION_NAME") and not env.get("BERTHING_CACHE_DIR"):
        overrides["cache_dir"] = "/tmp/berthing"  # the only writable place in a Lambda container
    if env.get("BERTHING_MODEL"):
        overrides["models"] = env["BERTHING_MODEL"]
    settings = Settings(**overrides)
    registry = Registry()
    for spec in settings.models or [None]:
        started = time.perf_counter()
        source = resolve(spec, settings.cache_dir)
        model = load_model(source, settings.load_options(source.name))
        registry.add(model)
        log.info("loaded %s v%s (%s) in %.2f s", model.name, model.version, model.spec.task, time.perf_counter() - started)
    return ServerlessApp(registry, settings)


APP = build_app()


def handler(event: Any, context: Any = None) -> Any:
    """What Lambda calls per event: an API Gateway / function URL proxy answer, or a direct invocation's result."""
    return APP(event, context)
