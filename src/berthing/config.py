"""One Settings object: CLI flags over BERTHING_* environment variables over a TOML file over defaults."""

from __future__ import annotations

import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from berthing.engine.batcher import BatchLimits
from berthing.loading import LoadOptions
from berthing.packaging.tune import OptimizeRequest, parse_thresholds
from berthing.prefetch import default_cache_dir
from berthing.types import BerthingError

MAX_WORKERS = 64  # workers of one model: each a runtime instance and a thread


class ModelOverrides(BaseModel):
    """Per-model settings (TOML `[per_model.NAME]`), as TorchServe's per-model batchSize/maxBatchDelay/minWorkers."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["embed", "classify", "ner", "qa", "rerank"] | None = None
    runtime: Literal["onnx", "torch"] | None = None
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS)
    threads: int | None = Field(None, ge=0, le=256)
    lanes: bool | None = None
    max_batch_tokens: int | None = Field(None, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    max_wait_ms: float | None = Field(None, ge=0, le=1000)
    max_queue: int | None = Field(None, ge=1)
    max_queue_ms: float | None = Field(None, ge=0)
    batch_timeout_s: float | None = Field(None, ge=0)
    optimize: Literal["auto", "none", "fused", "int8"] | None = None


ENV_PREFIX = "BERTHING_"
# The wire protocols berthing speaks (docs/protocols.md); the HTTP ones share the inference port.
PROTOCOLS = ("torchserve", "openai", "tei", "rerank", "infinity", "kserve", "kserve-grpc", "bert-serving")


class SettingsError(ValueError):
    """A settings source that cannot be read: a TOML file that does not parse, an env var that should be JSON."""


class Settings(BaseModel):
    """Every setting of berthing; `berthing serve --help` lists the same fields as flags.

    Keyword arguments (the CLI's flags) win over BERTHING_* environment variables, which win over the TOML file named
    by config_file or BERTHING_CONFIG_FILE. Not pydantic-settings: importing it was 50-100 ms of every cold start."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**_gather(type(self), values))

    models: list[str] = Field(
        default_factory=list, description="Models to serve, each NAME=SOURCE or SOURCE (a folder, hub id)."
    )
    host: str = Field("127.0.0.1", description="Address the inference API binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the inference API (0 picks a free one).")
    task: Literal["embed", "classify", "ner", "qa", "rerank"] | None = Field(
        None, description="Force the task instead of detecting it."
    )
    runtime: Literal["onnx", "torch"] = Field("onnx", description="onnx (default, no torch) or torch.")
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Model workers (each a runtime instance and a thread).")
    threads: int = Field(0, ge=0, le=256, description="Intra-op threads per worker; 0 = cores / workers.")
    lanes: bool = Field(
        True,
        description="Under sustained load, add sessions that split a model's one multi-thread worker's cores (one "
        "thread each, at most 4; onnx); a batch that runs alone still takes every core.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where exported ONNX models are cached.")
    max_batch_tokens: int = Field(
        512, ge=1, description="Padded tokens per runtime call (longest x count); small similar-length batches run fastest."
    )
    max_batch_size: int = Field(64, ge=1, description="Items per batch.")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="Extra wait for a fuller batch; 0 = dispatch at once.")
    max_queue: int = Field(2048, ge=1, description="Items queued per model before answering 503.")
    max_queue_ms: float = Field(
        2000.0, ge=0,
        description="Refuse at once (503 + Retry-After) a request that would wait longer in the model's queue: the "
        "tokens queued over the model's measured tokens/s; 0 = no wait bound (max_queue only).",
    )
    batch_timeout_s: float = Field(
        60.0, ge=0,
        description="A batch that runs longer fails its requests (500) and the model is reported not ready until the "
        "runtime returns; 0 = no bound.",
    )
    max_items: int = Field(1024, ge=1, description="Items per request before answering 413.")
    input_field: str | None = Field(
        None, description="A JSON field that also holds the input, for clients with their own body (seed 001: log)."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Request body size before answering 413.")
    management_host: str = Field("127.0.0.1", description="Address the management API binds (loopback unless a token is set).")
    management_port: int = Field(8081, ge=0, le=65535, description="Port of the management API (0 picks a free one).")
    model_store: Path | None = Field(None, description="Folder the management API may register models from.")
    management_token: str | None = Field(None, description="Bearer token of the management API; default: a random one.")
    management_token_file: Path | None = Field(
        None, description="Where the token is written (mode 0600); default: <model_store or cache_dir>/key_file.json."
    )
    management_auth: bool = Field(True, description="Require the token on management routes (off only on loopback).")
    inference_token: str | None = Field(None, description="Bearer token for inference routes (default: none).")
    protocols: list[str] = Field(
        default_factory=lambda: ["all"],
        description="Wire protocols served: all, or names among " + ", ".join(PROTOCOLS) + "; '-NAME' turns one off "
        "(all,-kserve-grpc).",
    )
    default_model: str | None = Field(
        None, description="Model of routes that name none (TEI, bert-serving, OpenAI's placeholder names); default: the first."
    )
    grpc_host: str = Field("127.0.0.1", description="Address of the KServe V2 gRPC listener.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the KServe V2 gRPC listener (Triton's 8001).")
    bert_serving_host: str = Field("127.0.0.1", description="Address of the bert-as-service ZeroMQ listener.")
    bert_serving_port: int = Field(
        5555, ge=0, le=65535, description="bert-as-service's request port (ZeroMQ PULL); replies go out on the port after it."
    )
    bert_serving_port_out: int | None = Field(
        None, ge=0, le=65535, description="bert-as-service's reply port (ZeroMQ PUB); default: bert_serving_port + 1."
    )
    ui: bool = Field(True, description="Serve the playground page at GET / and the API docs at /docs.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins a browser may call the inference API from ('*' = any); none = no CORS headers.",
    )
    allowed_sources: list[str] = Field(
        default_factory=list, description="URL or path prefixes the management API may register from besides the store."
    )
    default_workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Workers of a model registered without initial_workers.")
    allow_pickle: bool = Field(
        False, description="Load pickle checkpoints (pytorch_model.bin), only through torch's weights-only loader."
    )
    trust_handlers: bool = Field(
        False, description="Run custom handler.py code carried by packages (it runs with the server's rights)."
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM: seconds to finish admitted requests before closing the rest (a second "
        "SIGTERM ends at once).",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not sent a whole request head within this many seconds, "
        "or whose body or unread response stalls this long, is answered 408 or closed (slow clients holding "
        "connections).",
    )
    ssl_certfile: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS on the inference, management and metrics ports."
    )
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile (with ssl_certfile).")
    metrics_host: str = Field("127.0.0.1", description="Address of the separate metrics listener (with metrics_port).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Also serve /metrics on this port (TorchServe uses 8082); none = inference port only."
    )
    per_model: dict[str, ModelOverrides] = Field(
        default_factory=dict, description="Settings for one model by name, over the global ones (TOML [per_model.NAME])."
    )
    optimize: Literal["auto", "none", "fused", "int8"] = Field(
        "auto",
        description="Optimization of a checkpoint's ONNX graph at first load (cached): auto = the fastest level "
        "that passes verification against PyTorch; none = fp32 as exported. Packages keep the level they were packed with.",
    )
    optimize_force: bool = Field(False, description="Serve the requested optimization level even if it fails verification.")
    on_verify_fail: Literal["fallback", "refuse", "serve"] = Field(
        "fallback",
        description="A package whose graph fails its probe on this CPU: serve the fp32 graph it carries (fallback), "
        "refuse to load it, or serve it anyway with a warning.",
    )
    verify_on_load: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Run a package's probe at load: auto = when this CPU's class or onnxruntime differs from where it "
        "was verified; always; never.",
    )
    calibration_file: Path | None = Field(
        None, description="Texts (one a line) that int8 calibrates on and verification runs; default: a built-in sample."
    )
    thresholds: dict[str, float | str] = Field(
        default_factory=dict,
        description="Verification thresholds, e.g. cosine_min=0.97, label_agreement=off (names: see docs/optimization.md).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    config_file: Path | None = Field(None, description="TOML file with any of these settings.")

    @field_validator("models", "allowed_sources", "cors_origins", "protocols", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, value: dict[str, float | str]) -> dict[str, float | str]:
        try:
            parse_thresholds(value)
        except BerthingError as exc:
            raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _check_ssl(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a file")
        return self

    @field_validator("protocols")
    @classmethod
    def _check_protocols(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.removeprefix("-") not in (*PROTOCOLS, "all"):
                raise ValueError(f"unknown protocol {item!r} (protocols: all, {', '.join(PROTOCOLS)}; -NAME turns one off)")
        return value

    def enabled_protocols(self) -> list[str]:
        """The protocols on, in PROTOCOLS order: 'all' and names add, '-NAME' removes (applied left to right)."""
        on: set[str] = set()
        for item in self.protocols:
            names = set(PROTOCOLS) if item.removeprefix("-") == "all" else {item.removeprefix("-")}
            on = on - names if item.startswith("-") else on | names
        return [p for p in PROTOCOLS if p in on]

    def batch_limits(self, name: str | None = None) -> BatchLimits:
        """The batcher's share of the settings, with the model's own overrides."""
        merged = self._merged(name)
        return BatchLimits(
            merged["max_batch_tokens"], merged["max_batch_size"], merged["max_wait_ms"], merged["max_queue"],
            merged["max_queue_ms"], merged["batch_timeout_s"],
        )

    def _merged(self, name: str | None) -> dict[str, Any]:
        values = {key: getattr(self, key) for key in ModelOverrides.model_fields}
        overrides = self.per_model.get(name) if name else None
        if overrides is not None:
            values.update(overrides.model_dump(exclude_none=True))
        return values

    def load_options(self, name: str | None = None) -> LoadOptions:
        """The model loader's share of the settings; `name` picks up its [per_model.NAME] overrides."""
        merged = self._merged(name)
        return LoadOptions(
            task=merged["task"],
            runtime=merged["runtime"],
            workers=merged["workers"],
            threads=merged["threads"],
            lanes=merged["lanes"],
            cache_dir=self.cache_dir,
            limits=self.batch_limits(name),
            allow_pickle=self.allow_pickle,
            trust_handlers=self.trust_handlers,
            optimize=OptimizeRequest(merged["optimize"], self.calibration_file, dict(self.thresholds), self.optimize_force),
            on_verify_fail=self.on_verify_fail,
            verify_on_load=self.verify_on_load,
        )


def _gather(cls: type[Settings], flags: dict[str, Any]) -> dict[str, Any]:
    """The values of every source, merged: flags over BERTHING_* env over the TOML file (tables merge key by key)."""
    env = _env_values(cls)
    path = flags.get("config_file") or env.get("config_file")
    values = _toml_values(Path(path)) if path else {}
    for layer in (env, flags):
        values = _deep_merge(values, layer)
    return values


def _env_values(cls: type[Settings]) -> dict[str, Any]:
    """BERTHING_<FIELD> (any case) for each field: tables as JSON, lists as comma-separated text, the rest as text."""
    found: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        info = cls.model_fields.get(name)
        if info is None:  # other BERTHING_* variables (e.g. a test's) are not settings
            continue
        if typing.get_origin(info.annotation) is dict:
            try:
                found[name] = json.loads(raw)
            except ValueError as exc:
                raise SettingsError(f"{key} must be a JSON object: {exc}") from None
        else:
            found[name] = raw
    return found


def _toml_values(path: Path) -> dict[str, Any]:
    """The TOML file's tables and keys, as they are (unknown keys are refused by the model)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; where both hold a table, their keys merge (a per_model table from env and TOML)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
