"""What one berthing application on Ray Serve is: its model, berthing settings, and the Serve options that fit it.

Plain data, no Ray import: the CLI, the config writer and the replica all read the same ServeArgs, and the tests check
the options without a cluster. Ray's defaults that are wrong for this workload are replaced here, each with its reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from berthing.names import check_name
from berthing.packaging.sources import DEFAULT_MODEL_NAME

# Settings that mean nothing inside a replica: Ray's proxy owns the address, Ray's config is the management API,
# the own-port listeners (gRPC, ZeroMQ) would collide between replicas of one node, and a replica holds one model.
NOT_FOR_REPLICAS = {
    "models", "host", "port", "workers", "threads", "lanes", "management_host", "management_port", "management_token",
    "management_token_file", "management_auth", "metrics_host", "metrics_port", "grpc_host", "grpc_port",
    "bert_serving_host", "bert_serving_port", "bert_serving_port_out", "default_workers", "config_file", "default_model",
}
DEPLOYMENT = "berthing"  # the deployment's name inside each model's application
MULTIPLEXED_APP = "berthing"  # the one application of --multiplex


class ServeArgs(BaseModel):
    """The arguments of `berthing.ray:app` (a Serve config's `args:`, `serve run berthing.ray:app key=value`)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="NAME=SOURCE or SOURCE, as `berthing serve` takes it; none = minilm.")
    models: list[str] = Field(
        default_factory=list, description="With multiplex: every model the application serves (NAME=SOURCE or SOURCE)."
    )
    multiplex: int = Field(
        0, ge=0, description="Serve `models` from one application, each replica holding at most this many (0 = off)."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="berthing settings by name (the TOML keys: max_batch_tokens, optimize, ...)."
    )
    replicas: int | None = Field(None, ge=1, description="A fixed number of replicas (default 1, or --autoscale).")
    autoscale: str | None = Field(None, description="MIN:MAX replicas, scaled on ongoing requests per replica.")
    cpus: float = Field(
        1.0, gt=0, description="CPUs one replica reserves; ONNX Runtime gets as many threads (at least 1)."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica holds at once; Ray's default 5 would cap every batch at 5."
    )
    target_ongoing_requests: float = Field(32, gt=0, description="Ongoing requests per replica autoscaling aims for.")
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests each proxy or handle queues before answering overload (-1: unbounded)."
    )
    overload_status: Literal[503, 429] = Field(503, description="Status of Ray's overload answer (with Retry-After).")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After of Ray's overload answer.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Autoscaling: load must last this long before adding.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Autoscaling: idleness must last this long before removing.")
    look_back_period_s: float = Field(30.0, gt=0, description="Autoscaling: the window its load average covers.")
    health_check_period_s: float = Field(5.0, gt=0, description="How often Ray asks a replica whether its model runs.")
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long a stopping replica may finish what it holds before it is killed."
    )

    @field_validator("autoscale")
    @classmethod
    def _check_autoscale(cls, value: str | None) -> str | None:
        if value is not None:
            scale_range(value)
        return value

    @model_validator(mode="after")
    def _check_multiplex(self) -> ServeArgs:
        if self.multiplex and (self.model or not self.models):
            raise ValueError("multiplex serves `models` (a list), not `model`")
        if self.models and not self.multiplex:
            raise ValueError("`models` is for multiplex; without it give one `model` per application")
        names = [model_name(spec) for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"two models share a name ({', '.join(names)}): name them, NAME=SOURCE")
        return self

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from berthing.config import Settings

        unknown = sorted(set(value) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown berthing setting(s): {', '.join(unknown)}")
        return value

    def threads(self) -> int:
        """ONNX Runtime's intra-op threads: the CPUs the replica reserved, so replicas on a node never oversubscribe."""
        return max(1, math.floor(self.cpus))

    def name(self) -> str:
        """The model's name, which is also its Serve application's name (a multiplexed one is 'berthing')."""
        return MULTIPLEXED_APP if self.multiplex else model_name(self.model)

    def sources(self) -> dict[str, str]:
        """Multiplexed models by name, each NAME=SOURCE with local paths made absolute."""
        return {model_name(spec): f"{model_name(spec)}={_source(absolute_source(spec))}" for spec in self.models}


def scale_range(text: str) -> tuple[int, int]:
    """'1:4' -> (1, 4); MIN may be 0 (scale to zero), MAX at least 1 and at least MIN."""
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ValueError(f"autoscale takes MIN:MAX replicas, like 1:4, not {text!r}") from None
    if not sep or lo < 0 or hi < 1 or hi < lo:
        raise ValueError(f"autoscale takes MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, not {text!r}")
    return lo, hi


def model_name(spec: str | None) -> str:
    """The name `berthing serve` would give the model, without downloading it: NAME= if given, else the folder's."""
    if not spec:
        return DEFAULT_MODEL_NAME
    name, sep, source = spec.partition("=")
    if sep:
        return check_name(name)
    source = spec.strip().rstrip("/")
    if source in (DEFAULT_MODEL_NAME, "default"):
        return DEFAULT_MODEL_NAME
    if Path(source).exists():
        from berthing.packaging.sources import resolve

        return resolve(source).name
    last = source.rsplit("/", 1)[-1]
    return check_name(last.removesuffix(".berth").removesuffix(".mar").lower())


def absolute_source(spec: str | None) -> str | None:
    """A local path made absolute, since replicas do not start in the caller's folder."""
    if not spec:
        return spec
    name, sep, source = spec.partition("=")
    if not sep:
        name, source = "", spec
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    return f"{name}={source}" if name else source


def _source(spec: str | None) -> str:
    name, sep, source = (spec or "").partition("=")
    return source if sep else name


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    """Keyword arguments of `serve.deployment(...)` for one model's replicas."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": args.cpus},
        "max_ongoing_requests": args.max_ongoing_requests,  # feeds berthing's batcher; Ray's 5 starves it
        "max_queued_requests": args.max_queued_requests,
        "backpressure_config": {"status_code": args.overload_status, "retry_after_s": args.retry_after_s},
        "health_check_period_s": args.health_check_period_s,
        "graceful_shutdown_timeout_s": args.graceful_shutdown_timeout_s,
    }
    if args.autoscale is not None:
        low, high = scale_range(args.autoscale)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            "target_ongoing_requests": args.target_ongoing_requests,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": args.look_back_period_s,
        }
    else:
        options["num_replicas"] = args.replicas or 1
    return options


def replica_settings(args: ServeArgs) -> dict[str, Any]:
    """The berthing Settings one replica builds its app from: the caller's, for one model, one worker of `cpus` threads."""
    given = {k: v for k, v in args.settings.items() if k not in NOT_FOR_REPLICAS}
    source = absolute_source(args.model)
    return {**given, "models": [source] if source else [], "workers": 1, "threads": args.threads(), "lanes": False}
