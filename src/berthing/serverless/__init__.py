"""AWS Lambda: `berthing.serverless.handler` (or `berthing.serverless.lambda_handler.handler`) as the function's handler.

Getting `handler` imports lambda_handler, which loads the models named by BERTHING_MODEL once per container, during
Lambda's init phase; importing this package alone loads nothing.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "handler":
        from berthing.serverless.lambda_handler import handler

        return handler
    raise AttributeError(f"module 'berthing.serverless' has no attribute {name!r}")
