"""Turn a resolved source (a checkpoint, an exported artifact, a package folder) into a served Model.

Above packaging and handler.py: a checkpoint is exported (and optimized) once through packaging, then the engine's
Model is built from the artifact's spec, its tokenizer and the runtimes, and a trusted package's handler is attached.
The exporter, packages and handler.py are imported inside the functions: config.py imports LoadOptions from here, and
a command that loads no model does not need them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from berthing.engine.batcher import BatchLimits
from berthing.engine.model import Model
from berthing.packaging.sources import ModelSource
from berthing.packaging.tune import OptimizeRequest
from berthing.registry import Registry
from berthing.runtime.base import Runtime
from berthing.runtime.threads import threads_per_worker
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoder
from berthing.types import ModelLoadError


@dataclass
class LoadOptions:
    """How to load a model; the server fills it from Settings, the Python API from keywords."""

    task: str | None = None
    runtime: str = "onnx"
    workers: int = 1
    threads: int = 0
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "berthing")
    limits: BatchLimits = field(default_factory=BatchLimits)
    version: str = "1.0"
    allow_pickle: bool = False
    trust_handlers: bool = False  # run a package's handler.py (its own Python code)
    registry: Registry | None = None  # the server's models, handed to custom handlers for ensembles
    optimize: OptimizeRequest | None = None  # for a checkpoint's first load; None serves the fp32 export
    lanes: bool = True  # under sustained load, add up to MAX_LANES sessions that split the (single) worker's cores
    on_verify_fail: str = "fallback"  # a package failing its probe here: fallback (its fp32 graph) | refuse | serve
    verify_on_load: str = "auto"  # run the probe: auto (CPU class or onnxruntime differs) | always | never


def _make_runtime(
    kind: str, graph: Path, folder: Path, spec: ModelSpec, threads: int, allow_pickle: bool = False
) -> Runtime:
    if kind == "onnx":
        from berthing.runtime.onnx import OnnxRuntime

        return OnnxRuntime(graph, threads)
    if kind == "torch":
        from berthing.runtime.torch import TorchRuntime

        return TorchRuntime(folder, spec, threads, allow_pickle)
    raise ModelLoadError(f"unknown runtime {kind!r} (runtimes: onnx, torch)")


def check_served(task: str, name: str) -> None:
    """Refuse a task this version cannot serve, naming the ones it can."""
    from berthing.tasks.registry import TASK_CLASSES, task_class

    if task_class(task) is None:
        served = [t for t in TASK_CLASSES if task_class(t) is not None]
        raise ModelLoadError(f"task {task!r} of {name} is not served yet (served tasks: {', '.join(served)})")


def load_model(
    source: ModelSource, options: LoadOptions, progress: Callable[[str], None] | None = None
) -> Model:
    """Load a checkpoint or artifact folder: export to ONNX if needed (cached), build runtimes."""
    from berthing.packaging.checkpoint import read_checkpoint
    from berthing.packaging.export import ensure_tokenizer_json, is_artifact, prepare

    started = time.perf_counter()
    folder = source.path
    if options.runtime == "torch":
        if is_artifact(folder):
            raise ModelLoadError(f"{folder} is an ONNX artifact; --runtime torch needs the original checkpoint")
        spec = read_checkpoint(folder, options.task)
        artifact = options.cache_dir / "tokenizers" / source.name
        artifact.mkdir(parents=True, exist_ok=True)
        ensure_tokenizer_json(folder, artifact)
    else:
        if not is_artifact(folder):
            check_served(read_checkpoint(folder, options.task).task, source.name)  # before a useless export
        artifact = prepare(folder, options.task, options.cache_dir, progress, options.allow_pickle, options.optimize)
        meta = json.loads((artifact / "berthing.json").read_text("utf-8"))
        spec = ModelSpec.from_dict(meta)
    check_served(spec.task, source.name)
    encoder = Encoder(artifact / "tokenizer.json", spec.max_length, spec.uses_token_types)
    # a request may make up to max_queue windows (model.py refuses more after tokenizing); the encoder's own cap,
    # which refuses before tokenizing, must not be the smaller one
    encoder.max_windows = max(encoder.max_windows, options.limits.max_queue)
    workers = max(1, options.workers)
    threads = threads_per_worker(workers, options.threads)
    graph = [artifact / "model.onnx"]  # the fp32 fallback may replace it after the load check

    def make(lane_threads: int = threads) -> Runtime:
        return _make_runtime(options.runtime, graph[0], folder, spec, lane_threads, options.allow_pickle)

    model = Model(
        source.name, source.version or options.version, spec, encoder, [make() for _ in range(workers)], options.limits,
        folder, 0.0,
    )
    model.optimization = meta.get("optimization") if options.runtime == "onnx" else None
    if options.runtime == "onnx":
        from berthing.load_check import check_on_load

        def rebuild(fallback: Path) -> None:
            graph[0] = fallback
            model.runtimes[:] = [make() for _ in model.runtimes]

        check = check_on_load(model, artifact, meta, options.on_verify_fail, options.verify_on_load, rebuild)
        model.verification = check.to_dict()
    model.load_seconds = time.perf_counter() - started
    model.make_runtime = make
    if options.lanes and options.runtime == "onnx":  # torch keeps one set of weights per runtime: no lanes
        model.make_lane = make
    weights = [graph[0]] if options.runtime == "onnx" else list(folder.glob("*.safetensors"))
    model.memory_bytes = sum(p.stat().st_size for p in weights if p.is_file())
    attach_handler(model, folder, options)
    return model


def attach_handler(model: Model, folder: Path, options: LoadOptions) -> None:
    """A package with handler.py: refuse it unless handlers are trusted, else import and initialize the handler."""
    from berthing.handler import HANDLER_FILE, Context, HandlerNotTrusted, bind, load_handler
    from berthing.packaging.package import MANIFEST

    if not (folder / MANIFEST).is_file():
        return
    manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    if not manifest.get("handler"):
        return
    if not options.trust_handlers:
        raise HandlerNotTrusted(
            f"package {manifest['name']}-{manifest['version']} carries {HANDLER_FILE} (custom Python code); it runs only "
            "when the server is started with --trust-handlers (BERTHING_TRUST_HANDLERS=true, or trust_handlers=True "
            "in berthing.load)"
        )
    context = Context(model.name, model.version, folder, manifest, model, options.registry)
    model.handler = bind(load_handler(folder, context), context)
