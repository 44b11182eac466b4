"""Lambda handler: cold start (import, model load, first inference) and warm latency, on this machine.

Why: seeds 001/002 fight Lambda cold starts. A container's init phase is the Python import of the handler module,
which loads the models; the first event then runs one inference. This script runs that sequence in fresh
processes, as Lambda would start a container, with the model baked in (a package folder) and, when moto is
installed, pulled from an S3-compatible server on 127.0.0.1 (first start downloads, later starts check the ETag).

    .venv/bin/python benchmarks/lambda_bench.py              # packs MiniLM once (verified int8) into .cache/bench
    .venv/bin/python benchmarks/lambda_bench.py --runs 10 --warm 500

Not Lambda itself (no Firecracker, no network file system, the CPU of this machine): the phases and their ratios
carry over, the absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import berthing.serverless.app  # the library: ONNX Runtime, tokenizers, starlette-free handler code
t_lib = time.perf_counter()
from berthing.serverless.lambda_handler import APP, handler  # Lambda's init phase: settings + model load
t_init = time.perf_counter()
def event(body):
    return {"version": "2.0", "rawPath": "/predictions/minilm", "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": "POST", "path": "/predictions/minilm"}, "stage": "$default"},
            "body": json.dumps(body), "isBase64Encoded": False}
answer = handler(event({"input": "how fast is the first answer"}))
t_first = time.perf_counter()
assert answer["statusCode"] == 200, answer
warm = []
one = event({"input": "where is my package"})
for _ in range(int(sys.argv[1])):
    t = time.perf_counter(); handler(one); warm.append((time.perf_counter() - t) * 1000)
many = event({"input": ["the customer reported a billing problem on Monday morning"] * 32})
warm32 = []
for _ in range(max(1, int(sys.argv[1]) // 10)):
    t = time.perf_counter(); handler(many); warm32.append((time.perf_counter() - t) * 1000)
torch = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"library_s": t_lib - t0, "load_s": t_init - t_lib, "first_s": t_first - t_init, "warm_ms": warm,
                  "warm32_ms": warm32, "torch_modules": torch, "name": APP.registry.names()}))
"""


def package(cache: Path) -> Path:
    """MiniLM packed once with berthing's defaults (verified int8), as a folder: what the image bakes in."""
    target = cache / "minilm-1.0"
    if not (target / "MANIFEST.json").is_file():
        from berthing.packaging.sources import default_model_path

        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "berthing.cli", "pack", str(default_model_path()), "--name", "minilm",
                        "--no-archive", "-o", str(cache)], check=True)
    return target


def start(model: str, warm: int, env_extra: dict[str, str]) -> dict:
    """One cold start in a fresh interpreter; wall = launch to first answer, as the client of a new container sees."""
    env = {**os.environ, "BERTHING_MODEL": model, "AWS_LAMBDA_FUNCTION_NAME": "berthing-bench", **env_extra}
    launched = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(warm)], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["process_s"] = time.perf_counter() - launched  # includes the warm loop: reported only for the total below
    return data


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(label: str, runs: list[dict]) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    warm = [v for r in runs for v in r["warm_ms"]]
    warm32 = [v for r in runs for v in r["warm32_ms"]]
    row = {
        "case": label, "runs": len(runs), "library_s": med("library_s"), "load_s": med("load_s"), "first_s": med("first_s"),
        "init_plus_first_s": statistics.median(r["library_s"] + r["load_s"] + r["first_s"] for r in runs),
        "warm_p50_ms": pct(warm, 0.5), "warm_p99_ms": pct(warm, 0.99), "warm32_p50_ms": pct(warm32, 0.5),
        "torch_modules": runs[0]["torch_modules"],
    }
    return row


def s3_runs(pkg: Path, runs: int, warm: int, cache: Path) -> list[dict] | None:
    """The same package as a .berth in moto's S3 server: the first start downloads, the next ones check the ETag."""
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        return None
    import shutil
    import zipfile

    from tests.integration.test_s3 import MotoServer

    archive = cache / "minilm-1.0.berth"
    if not archive.is_file():
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(pkg.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(pkg).as_posix())
    server = MotoServer()
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        client.upload_file(str(archive), "bench", "minilm-1.0.berth")
        tmp = cache / "lambda-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        env = {"BERTHING_S3_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
               "AWS_DEFAULT_REGION": "us-east-1", "BERTHING_CACHE_DIR": str(tmp)}
        first = start("s3://bench/minilm-1.0.berth", warm, env)
        later = [start("s3://bench/minilm-1.0.berth", warm, env) for _ in range(runs)]
        return [first, *later]
    finally:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="cold starts per case (default 5)")
    p.add_argument("--warm", type=int, default=200, help="warm single-sentence events per start (default 200)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    pkg = package(args.cache)
    rows = [summarize("baked-in package folder", [start(str(pkg), args.warm, {}) for _ in range(args.runs)])]
    s3 = s3_runs(pkg, args.runs, args.warm, args.cache)
    if s3 is not None:
        rows.append(summarize("s3:// package, first start (download)", s3[:1]))
        rows.append(summarize("s3:// package, later starts (ETag unchanged)", s3[1:]))
    print("| case | import berthing | model load | first answer | init + first | warm p50 / p99 (1 sentence) | warm p50 (32) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        warm = f"{r['warm_p50_ms']:.1f} / {r['warm_p99_ms']:.1f} ms | {r['warm32_p50_ms']:.0f} ms"
        print(f"| {r['case']} ({r['runs']} runs) | {r['library_s']:.2f} s | {r['load_s']:.2f} s | {r['first_s'] * 1000:.0f} ms | "
              f"**{r['init_plus_first_s']:.2f} s** | {warm} |")
    print(f"torch/transformers modules imported: {rows[0]['torch_modules'] or 'none'}")
    out = HERE / "results" / f"lambda-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
