"""Hostile texts against a live server: what one huge text costs, and what a one-word request sent meanwhile waits.

Why: a single text under the body limit (2 million CJK characters, 8 MB with no space, millions of emoji) used to
be tokenized whole, on the event loop, so every other request waited behind it (issue 18: 9.8 s, and 8.7 s for a
one-word request sent meanwhile). This sends each hostile text to the default model (minilm) and, while it is in
flight, one-word requests one after another on another connection, and reports both.

    .venv/bin/python benchmarks/hostile_texts.py                    # starts `berthing serve` itself (default model)
    .venv/bin/python benchmarks/hostile_texts.py --url http://127.0.0.1:8080 --model minilm
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/hostile_texts.py   # the server from another checkout

The server is started with the same interpreter and environment as this script, so PYTHONPATH picks the code.
No figure here is a pass/fail: the tests check behaviour (statuses, order), never time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CASES = {
    "cjk-2M": "中文字符测试" * 333_334,  # 2,000,004 characters, 6 MB of UTF-8: the case
    "nospace-8MB": "abcdefghij" * 800_000,  # 8,000,000 characters, no space
    "emoji-2M": "😀" * 2_000_000,  # 2,000,000 emoji, 8 MB of UTF-8
}


def cpu() -> str:
    """The CPU's model name and its AVX2/AVX-512 flags, from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    found = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    flags = set(found.group(1).split()) if found else set()
    simd = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512vnni") if f in flags]
    return f"{name.group(1) if name else 'unknown'} ({', '.join(simd) or 'no avx2'}), {os.cpu_count()} cores"


@contextmanager
def server(model: str | None) -> Iterator[str]:
    """`berthing serve` on a free loopback port, run by this interpreter; yields its base URL."""
    env = {**os.environ, "BERTHING_MANAGEMENT_PORT": "0"}
    args = [sys.executable, "-m", "berthing.cli", "serve", *([model] if model else []), "--host", "127.0.0.1",
            "--port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    assert proc.stdout is not None
    url = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"on (https?://127\.0\.0\.1:\d+)", line)
        url = found.group(1) if found else url
        if url and "startup complete" in line:
            break
    if url is None:
        proc.kill()
        raise SystemExit("the server did not start")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def one_word(client: httpx.Client, url: str) -> float:
    """Seconds for one one-word request (checked to be answered 200)."""
    started = time.perf_counter()
    response = client.post(url, json={"input": "hello"})
    response.raise_for_status()
    return time.perf_counter() - started


def case(url: str, text: str, truncate: bool) -> dict[str, object]:
    """One huge request; one-word requests on another connection, back to back, until it is answered."""
    body = json.dumps({"input": text, "truncate": truncate}, ensure_ascii=False).encode()
    result: dict[str, object] = {"body_bytes": len(body)}
    done = threading.Event()

    def huge() -> None:
        with httpx.Client(timeout=600) as client:
            started = time.perf_counter()
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            result["huge_s"] = time.perf_counter() - started
            result["status"] = response.status_code
            result["message"] = response.json().get("message", "") if response.status_code != 200 else ""
        done.set()

    waits: list[float] = []
    with httpx.Client(timeout=600) as small:
        one_word(small, url)
        thread = threading.Thread(target=huge)
        thread.start()
        time.sleep(0.02)
        while not done.is_set():
            waits.append(one_word(small, url))
        thread.join()
    result["small_n"] = len(waits)
    result["small_max_ms"] = max(waits) * 1000 if waits else None
    result["small_p50_ms"] = statistics.median(waits) * 1000 if waits else None
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server's base URL (default: start `berthing serve` here)")
    p.add_argument("--model", default="minilm", help="the model's name in the URL (default minilm)")
    p.add_argument("--serve", default=None, help="what `berthing serve` is given to serve (default: its default)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    with (server(args.serve) if args.url is None else _given(args.url)) as base:
        url = f"{base}/predictions/{args.model}"
        with httpx.Client(timeout=60) as client:
            for _ in range(5):
                one_word(client, url)
            idle = statistics.median(one_word(client, url) for _ in range(30)) * 1000
        rows = []
        for name, text in CASES.items():
            for truncate in (True, False):
                row = {"case": name, "truncate": truncate, **case(url, text, truncate)}
                rows.append(row)
                print(
                    f"{name:12s} truncate={str(truncate).lower():5s} -> {row['status']} in {row['huge_s']:.3f} s; "
                    f"one-word meanwhile: {row['small_n']} sent, max {_ms(row['small_max_ms'])}, "
                    f"p50 {_ms(row['small_p50_ms'])}",
                    flush=True,
                )
    print(f"one-word request, idle server: p50 {idle:.1f} ms")
    print(f"CPU: {cpu()}")
    print(f"python: {sys.version.split()[0]}; berthing from {_berthing_path()}")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu(), "idle_ms": idle, "rows": rows}, indent=2))


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"  # type: ignore[arg-type]


def _berthing_path() -> str:
    """Where the server's code comes from: the first `berthing` package on this interpreter's path."""
    found = subprocess.run([sys.executable, "-c", "import berthing; print(berthing.__file__)"], capture_output=True,
                           text=True, env=os.environ)
    return found.stdout.strip() or found.stderr.strip()[-200:]


if __name__ == "__main__":
    main()
