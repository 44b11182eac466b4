"""Cold start of `berthing serve`: launch -> first answer, with the page cache warm and with it dropped.

    .venv/bin/python benchmarks/cold_start.py [--starts 5] [--model NAME=SOURCE] [--modes warm,dropped] [--before SRC]

Each start is a new process on 127.0.0.1 polled every 10 ms until it answers one sentence. "dropped" first evicts
the files a start reads from the page cache (posix_fadvise DONTNEED over the venv, the interpreter's library, the
berthing cache and sources: what a new container, a reboot or memory reclaim on an idle machine leaves), and is run
with and without the startup-file list (berthing.prefetch) to show what the read-ahead is worth. Dropping needs no
privileges, but every dropped start reads ~150 MB again: on a disk with a burst budget, later figures can be slower.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from berthing.prefetch import default_cache_dir

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop_page_cache(roots: list[Path]) -> int:
    """Evict every regular file under `roots` from the page cache; returns how many files were asked."""
    count = 0
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                try:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                except OSError:
                    pass
                finally:
                    os.close(fd)
    return count


def launch_command(src: Path | None) -> tuple[list[str], dict[str, str]]:
    """How to start `berthing`: the installed script, or another source tree's (an older commit's) through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTHING_")}
    if src is None:
        return [str(REPO / ".venv" / "bin" / "berthing")], env
    module = "berthing" if (src / "berthing" / "__main__.py").is_file() else "berthing.cli"
    return [str(REPO / ".venv" / "bin" / "python"), "-m", module], env | {"PYTHONPATH": str(src)}


def serve_command(src: Path | None, model: str | None, cache_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`berthing serve` of `model` on 127.0.0.1:port with `cache_dir`, everything else its defaults."""
    head, env = launch_command(src)
    args = ["serve", *([model] if model else []), "--host", "127.0.0.1", "--port", str(port), "--management-port", "0"]
    return head + args, env | {"BERTHING_CACHE_DIR": str(cache_dir)}


def one_start(model: str | None, cache_dir: Path, src: Path | None = None, timeout: float = 60.0) -> float:
    """Seconds from launching `berthing serve` to its first 200 answer."""
    port = free_port()
    cmd, env = serve_command(src, model, cache_dir, port)
    name = (model.split("=", 1)[0] if model and "=" in model else None) or "minilm"
    body = json.dumps({"input": "How do I deploy a BERT model?"}).encode()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", f"/predictions/{name}", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                if answer.status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"no answer within {timeout:.0f} s")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="starts per mode")
    parser.add_argument("--model", default=None, help="what `berthing serve` gets (default: the default model)")
    parser.add_argument("--modes", default="warm,dropped", help="warm and/or dropped (each with and without the list)")
    parser.add_argument("--before", type=Path, default=None,
                        help="also start this source tree's berthing (e.g. a `git worktree` of an older commit's src/)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="berthing's cache (default: BERTHING_CACHE_DIR or its own)")
    args = parser.parse_args()
    args.cache_dir = args.cache_dir or Path(os.environ.get("BERTHING_CACHE_DIR") or default_cache_dir())
    listed = args.cache_dir / "startup-files.txt"
    print(f"priming: a start that exports/optimizes if needed and lives until it has written {listed}")
    listed.unlink(missing_ok=True)
    port = free_port()
    cmd, env = serve_command(None, args.model, args.cache_dir, port)
    keeper = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1800
    while not listed.is_file() and keeper.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    keeper.terminate()
    keeper.wait(30)
    if not listed.is_file():
        print(f"the priming start wrote no {listed} (exit {keeper.returncode})")
        return 1
    saved = listed.with_suffix(".bench")
    if listed.is_file():
        shutil.copy2(listed, saved)
    roots = [REPO / ".venv", Path(sysconfig.get_paths()["stdlib"]), args.cache_dir, REPO / "src",
             Path(sys.base_prefix) / "lib"]
    cases: list[tuple[str, Path | None, bool]] = []
    for mode in args.modes.split(","):
        cases += [(mode, args.before, False)] if args.before else []
        cases += [(mode, None, False), (mode, None, True)]
    results: dict[str, list[float]] = {}
    try:
        for _ in range(args.starts):  # interleaved, so drift hits every case alike
            for mode, src, with_list in cases:
                label = f"{mode}, " + (f"before ({src})" if src else f"{'with' if with_list else 'without'} the startup list")
                if with_list and saved.is_file():
                    shutil.copy2(saved, listed)
                else:
                    listed.unlink(missing_ok=True)
                if mode == "dropped":
                    drop_page_cache([*roots, *([src] if src else [])])
                    time.sleep(1.0)
                results.setdefault(label, []).append(one_start(args.model, args.cache_dir, src))
                print(f"  {label}: {results[label][-1]:.3f} s", flush=True)
    finally:
        if saved.is_file():
            shutil.move(saved, listed)
    print("\n| case | starts | median s | min s | max s |\n|---|---|---|---|---|")
    for label, times in results.items():
        print(f"| {label} | {len(times)} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
