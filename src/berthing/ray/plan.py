"""Which Serve applications `berthing ray serve` deploys: one per model, the default model's at "/", others at "/NAME".

One application per model gives each model its own replicas and scaling, and maps the management API onto Ray's own:
registering a model is adding an application, scaling is its replicas or autoscaling, the default model is the one
routed at "/". No Ray import: `berthing ray serve --write-config` writes the same plan as a Serve config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from berthing.config import Settings
from berthing.packaging.sources import DEFAULT_MODEL_NAME
from berthing.ray.options import NOT_FOR_REPLICAS, ServeArgs, absolute_source
from berthing.server.runner import model_specs
from berthing.types import BadRequest

IMPORT_PATH = "berthing.ray:app"


@dataclass
class AppPlan:
    """One model's Serve application: its name, HTTP route prefix and the builder's arguments."""

    name: str
    route_prefix: str
    args: ServeArgs


def given_settings(settings: Settings) -> dict[str, Any]:
    """The berthing settings that differ from their defaults, as plain values for the replicas (paths as strings)."""
    defaults = Settings.model_construct()
    values = settings.model_dump(mode="json")
    plain = {k: v for k, v in values.items() if k not in NOT_FOR_REPLICAS and getattr(defaults, k, None) != getattr(settings, k)}
    return plain


def plan(settings: Settings, scaling: dict[str, Any]) -> list[AppPlan]:
    """An application per model of `settings.models` (the default model when none), with `scaling` (ServeArgs fields)."""
    shared = given_settings(settings)
    if scaling.get("multiplex"):  # one application for them all, at "/": replicas load what requests name
        specs = [absolute_source(spec) or DEFAULT_MODEL_NAME for spec in model_specs(settings)]
        args = ServeArgs(models=specs, settings=shared, **scaling)
        return [AppPlan(args.name(), "/", args)]
    plans: list[AppPlan] = []
    for spec in model_specs(settings):
        args = ServeArgs(model=absolute_source(spec), settings=shared, **scaling)
        plans.append(AppPlan(args.name(), "", args))
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise BadRequest(f"two models share a name ({', '.join(names)}): name them, NAME=SOURCE")
    default = settings.default_model or names[0]
    if default not in names:
        raise BadRequest(f"--default-model {default!r} is not among the models ({', '.join(names)})")
    for p in plans:
        p.route_prefix = "/" if p.name == default else f"/{p.name}"
    return sorted(plans, key=lambda p: p.route_prefix != "/")


def serve_config(plans: list[AppPlan], host: str, port: int) -> dict[str, Any]:
    """A Serve config (`serve deploy`, `serve run`, a RayService's serveConfigV2) with the address set explicitly:
    Ray's config files otherwise bind 0.0.0.0."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": p.name,
                "route_prefix": p.route_prefix,
                "import_path": IMPORT_PATH,
                "args": _without_secrets(p.args.model_dump(mode="json", exclude_defaults=True)),
            }
            for p in plans
        ],
    }


def _without_secrets(args: dict[str, Any]) -> dict[str, Any]:
    """A config file is read by many: the inference token goes to the replicas' environment (BERTHING_INFERENCE_TOKEN)."""
    settings = {k: v for k, v in args.get("settings", {}).items() if k != "inference_token"}
    return {**args, "settings": settings} if settings else {k: v for k, v in args.items() if k != "settings"}
