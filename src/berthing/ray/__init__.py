"""berthing on Ray (`pip install "berthing[ray]"`): Ray Serve applications online, Ray Data predictions offline.

`berthing.ray:app` is the application builder for Serve configs and `serve run berthing.ray:app model=...`;
`berthing.ray:default_app` is the default model's application, for `serve build` (which takes no arguments).
Nothing here is imported by `berthing serve` or the single-machine `berthing predict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve import Application


def app(args: dict[str, Any]) -> Application:
    """Serve's application builder: one model's application from its ServeArgs (model, settings, replicas, ...)."""
    from berthing.ray.serve_app import build

    return build(args)


def __getattr__(name: str) -> Any:
    if name == "default_app":  # built on first access: importing berthing.ray must not need ray.serve
        from berthing.ray.serve_app import build

        return build({})
    raise AttributeError(f"module 'berthing.ray' has no attribute {name!r}")
