"""A transformers 4.57 reference environment: the QuestionAnsweringPipeline that transformers 5 removed.

Built once per machine with `pip install --target` into the tests' gitignored cache (a file lock and an atomic
rename make concurrent builds safe); the reference runs as a child of this same Python with the folder first on
PYTHONPATH, so transformers 4.57, tokenizers 0.22 and huggingface_hub 0.x come from the folder and torch and
numpy from the venv. Run as `python -m tests.support.hf457` it is that child: JSON cases on stdin, answers out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUIREMENTS = ("transformers==4.57.*", "tokenizers>=0.22,<0.23", "huggingface_hub<1.0")
BUILD_VERSION = "1"  # bump when REQUIREMENTS change: a new folder is built beside the old one
REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("BERTHING_TEST_CACHE", REPO / ".cache" / "tests")) / "hf457"
MARKER = "berthing-hf457.json"
# The venv's copies are used instead: one numpy for torch and transformers alike.
SHADOWED = ("numpy", "numpy.libs", "torch")
INSTALL_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600


def _installer(target: Path) -> list[str]:
    """pip for this Python, or uv where the venv has no pip (uv-made venvs)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                "--target", str(target), *REQUIREMENTS]
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("building the transformers 4.57 reference needs pip or uv for " + sys.executable)
    return [uv, "pip", "install", "--quiet", "--python", sys.executable, "--target", str(target), *REQUIREMENTS]


def _drop_shadowed(folder: Path) -> None:
    """Remove packages the venv already has and that must stay single (numpy), with their metadata."""
    for entry in folder.iterdir():
        name = entry.name.split("-", 1)[0] if entry.name.endswith(".dist-info") else entry.name
        if name in SHADOWED and entry.is_dir():
            shutil.rmtree(entry)
        elif name in SHADOWED:
            entry.unlink()


def ensure(root: Path = ROOT) -> Path:
    """The environment's folder, built first if missing; idempotent and safe when several processes race."""
    import fcntl

    target = root / f"v{BUILD_VERSION}"
    if (target / MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process builds; the others wait and find it built
        if (target / MARKER).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            started = time.monotonic()
            done = subprocess.run(_installer(tmp), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"building {target} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
            _drop_shadowed(tmp)
            info = {"requirements": REQUIREMENTS, "python": sys.executable, "seconds": round(time.monotonic() - started, 1)}
            (tmp / MARKER).write_text(json.dumps(info, indent=2))
            shutil.rmtree(target, ignore_errors=True)  # a leftover without marker (a build killed mid-rename)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def env(folder: Path) -> dict[str, str]:
    """The child's environment: the folder first on PYTHONPATH, the hub offline, quiet logs."""
    return {
        **os.environ,
        "PYTHONPATH": str(folder),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
    }


def question_answering(model_dir: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Run transformers 4.57's pipeline("question-answering") on each case.

    A case is {"inputs": [{"question", "context"}, ...], "options": {...pipeline keywords}}; the answer is
    {"versions": {...}, "results": [per case: [per input: the pipeline's answer, a list when top_k > 1]]}.
    """
    answer = question_answering_many({"model": model_dir}, cases)
    return {"versions": answer["versions"], "results": answer["results"]["model"]}


def question_answering_many(model_dirs: dict[str, Path], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The same cases on several models in one child process (transformers is imported once, not per model).

    The answer is {"versions": {...}, "results": {name: [per case: [per input: the pipeline's answer]]}}.
    """
    folder = ensure()
    request = json.dumps({"models": {name: str(path) for name, path in model_dirs.items()}, "cases": cases})
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.hf457"], input=request, capture_output=True, text=True,
        cwd=REPO, env=env(folder), timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the transformers 4.57 reference failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def _main() -> None:
    """The child: answer every case with the real pipeline, one input per call as a user would."""
    import tokenizers
    import torch
    import transformers
    from transformers import pipeline

    if not transformers.__version__.startswith("4.57."):
        raise SystemExit(f"expected transformers 4.57.x on PYTHONPATH, got {transformers.__version__}")
    torch.set_num_threads(1)
    request = json.load(sys.stdin)
    results: dict[str, list[Any]] = {}
    for name, model in request["models"].items():
        qa = pipeline("question-answering", model=model, tokenizer=model, device="cpu")
        per_case = []
        for case in request["cases"]:
            options = case.get("options", {})
            answers = []
            for item in case["inputs"]:
                answer = qa(question=item["question"], context=item["context"], **options)
                if options.get("top_k", 1) > 1 and isinstance(answer, dict):
                    answer = [answer]  # the pipeline unwraps a list of one answer
                answers.append(answer)
            per_case.append(answers)
        results[name] = per_case
    versions = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "torch": torch.__version__}
    json.dump({"versions": versions, "results": results}, sys.stdout)


if __name__ == "__main__":
    _main()
