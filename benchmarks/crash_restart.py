"""Restart to ready after a native crash, against the plain cold start, with a package (what a supervisor sees).

    .venv/bin/python benchmarks/crash_restart.py [--package dist/minilm-1.0.berth] [--cycles 5]

A native crash (ONNX Runtime or tokenizers aborting) ends the process: no Python runs to answer what is in flight.
A supervisor (deploy/systemd, deploy/kubernetes) starts it again. This measures what that restart costs, from the
new process's launch to its first 200 on GET /health/ready, on the same port and cache a supervisor would reuse:

- first start: an empty cache, so the package archive is extracted (what a new Pod or host pays once);
- cold start: a start after a clean stop (SIGTERM, drained, exit 0), the cache in place;
- restart after SIGKILL (the OOM killer, a kubelet's kill) and after SIGABRT (what ONNX Runtime's or tokenizers'
  abort() raises), each sent while 4 clients keep requests in flight; their failed requests are counted.

Every start is checked to answer a sentence with the same vector as before the crash. Without --package, the default
model is packed once (`berthing pack`, ~1 minute) into the cache folder. The supervisor's own delay comes on top
(systemd's RestartSec=1; the kubelet's back-off, 10 s at the first crash). Figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BERTHING = REPO / ".venv" / "bin" / "berthing"
SENTENCE = json.dumps({"input": "How do I deploy a BERT model?"}).encode()
CLIENTS = 4  # request loops in flight when the crash comes
CRASH_AFTER_S = 0.5  # of that load before the signal
# KServe gRPC and bert-serving's ZeroMQ pair on free ports (a restart gets new ones; the HTTP port stays the same)
OWN_PORTS = {"BERTHING_GRPC_PORT": "0", "BERTHING_BERT_SERVING_PORT": "0", "BERTHING_BERT_SERVING_PORT_OUT": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_line() -> str:
    """The CPU's model name and the vector extensions that decide ONNX Runtime's kernels."""
    text = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{name} ({', '.join(f for f in wanted if f in flags) or 'no avx2'}; {os.cpu_count()} cores)"


def pack_default(folder: Path) -> Path:
    """The default model as a package, packed once (torch and the export extra needed here, not where it serves)."""
    target = folder / "minilm-1.0.berth"
    if not target.is_file():
        from berthing.packaging.sources import default_model_path

        folder.mkdir(parents=True, exist_ok=True)
        print(f"packing the default model into {target} (once)", flush=True)
        cmd = [str(BERTHING), "pack", str(default_model_path()), "--name", "minilm", "--version", "1.0", "-o", str(folder)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return target


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class Server:
    """One `berthing serve PACKAGE` process on a fixed port and cache, as a supervisor (re)starts it."""

    def __init__(self, package: Path, port: int, cache: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTHING_")}
        env |= {"BERTHING_CACHE_DIR": str(cache), "PYTHONFAULTHANDLER": "1", "HF_HUB_OFFLINE": "1", **OWN_PORTS}
        cmd = [str(BERTHING), "serve", f"minilm={package}", "--host", "127.0.0.1", "--port", str(port),
               "--management-port", "0"]
        self.port = port
        self.log = log.open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(  # no core file: a supervisor's (systemd-coredump) would keep it, not this
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
        )

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from launch to the first 200 on /health/ready (polled every 10 ms)."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berthing serve exited with {self.proc.returncode} (log: {self.log.name})")
            try:
                if request(self.port, "GET", "/health/ready", timeout=2)[0] == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"not ready within {timeout:.0f} s")

    def vector(self) -> list[float]:
        status, body = request(self.port, "POST", "/predictions/minilm", SENTENCE)
        assert status == 200, (status, body[:200])
        return json.loads(body)

    def stop(self) -> int:
        """SIGTERM: drain and exit (0 after a complete drain)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code

    def crash(self, sig: signal.Signals) -> tuple[int, int, int]:
        """Send `sig` under load; (exit code, requests answered, requests failed) of the clients in flight."""
        answered, failed, stop = [0], [0], threading.Event()

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            while not stop.is_set():
                try:
                    conn.request("POST", "/predictions/minilm", SENTENCE, {"Content-Type": "application/json"})
                    answer = conn.getresponse()
                    answer.read()
                    answered[0] += answer.status == 200
                except (OSError, http.client.HTTPException):
                    failed[0] += 1
                    return  # the server is gone: this client's request in flight is lost
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(CRASH_AFTER_S)
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        stop.set()
        for thread in threads:
            thread.join(15)
        self.log.close()
        return code, answered[0], failed[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=None, help="a .berth package (default: the default model, packed once)")
    parser.add_argument("--cycles", type=int, default=5, help="cold start, SIGKILL restart, SIGABRT restart: this many each")
    parser.add_argument("--pack-dir", type=Path, default=Path(tempfile.gettempdir()) / "berthing-bench",
                        help="where the default model's package is packed (kept for later runs)")
    args = parser.parse_args()
    package = args.package or pack_default(args.pack_dir)
    print(f"cpu: {cpu_line()}\npackage: {package} ({package.stat().st_size / 2**20:.0f} MiB)", flush=True)
    port = free_port()  # one port throughout: a supervisor restarts the same command line
    results: dict[str, list[float]] = {}
    lost: dict[str, list[tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="berthing-crash-") as work:
        cache, log = Path(work) / "cache", Path(work) / "serve.log"
        first = Server(package, port, cache, log)
        results["first start (empty cache: the package is extracted)"] = [first.wait_ready()]
        reference = first.vector()
        assert first.stop() == 0
        for cycle in range(args.cycles):
            server = Server(package, port, cache, log)
            results.setdefault("cold start (after a clean SIGTERM stop)", []).append(server.wait_ready())
            for sig in (signal.SIGKILL, signal.SIGABRT):
                code, answered, failed = server.crash(sig)
                assert code == -sig, f"exit {code} after {sig.name}"
                lost.setdefault(sig.name, []).append((answered, failed))
                server = Server(package, port, cache, log)
                label = f"restart after {sig.name} (under load)"
                results.setdefault(label, []).append(server.wait_ready())
                vector = server.vector()
                assert max(abs(a - b) for a, b in zip(vector, reference, strict=True)) < 1e-5, "another answer"
            assert server.stop() == 0
            print(f"  cycle {cycle + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.2f} s" for k, v in results.items()
                                                     if not k.startswith("first")), flush=True)
        aborted = "Fatal Python error: Aborted" in log.read_text("utf-8", "replace")
    print("\n| start | starts | median s | min s | max s |\n|---|---|---|---|---|")
    for label, times in results.items():
        print(f"| {label} | {len(times)} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    for name, counts in lost.items():
        print(f"{name}: clients' requests in flight that failed per crash: {[f for _, f in counts]} "
              f"(of {CLIENTS} clients; answered before it: {[a for a, _ in counts]})")
    print(f"faulthandler wrote the Python stacks at SIGABRT (PYTHONFAULTHANDLER=1): {aborted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
