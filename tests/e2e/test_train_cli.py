"""`berthing train` as a user runs it: a package that `berthing serve` serves with the report's figures, bad data as a
clear error (exit 2, no traceback), Ctrl-C as a saved checkpoint and the command that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from berthing.train.data import load_data, sentiment_tsv
from tests.support.servers import cli_server

SMALL = ["--base", "scratch", "--scratch-hidden", "32", "--max-length", "64", "--batch-size", "8", "--optimize", "none"]


def _berthing(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BERTHING_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "berthing.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_train_pack_serve_same_accuracy(tmp_path, cache_dir) -> None:
    data = sentiment_tsv(tmp_path / "reviews.tsv", per_class=40)
    done = _berthing("train", "classify", str(data), "-o", str(tmp_path / "mobile"), "--epochs", "2", *SMALL, cache=cache_dir)
    assert done.returncode == 0, done.stderr
    package = Path(done.stdout.strip().splitlines()[-1])
    assert package == tmp_path / "mobile" / "mobile-1.0.berth" and package.is_file()
    metrics = json.loads((tmp_path / "mobile" / "metrics.json").read_text("utf-8"))
    test = load_data(data, "classify", seed=42).test
    with cli_server([str(package)], env={"BERTHING_CACHE_DIR": str(cache_dir)}) as (_, url):
        answers = httpx.post(f"{url}/predictions/mobile", json={"input": [e.text for e in test]}, timeout=60).json()
    right = sum(a["label"] == e.labels[0] for a, e in zip(answers, test, strict=True))
    assert right / len(test) == metrics["test"]["accuracy"]


def test_bad_data_is_a_clear_error(tmp_path, cache_dir) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tgood phone\n\tno label here\n0\tbad phone\n", encoding="utf-8")
    done = _berthing("train", "classify", str(bad), "-o", str(tmp_path / "out"), *SMALL, cache=cache_dir)
    assert done.returncode == 2
    assert "bad.tsv:2" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, cache_dir) -> None:
    data = sentiment_tsv(tmp_path / "r.tsv", per_class=40)
    out = tmp_path / "out"
    env = {**os.environ, "BERTHING_CACHE_DIR": str(cache_dir)}
    args = ["train", "classify", str(data), "-o", str(out), "--epochs", "100", "--log-every", "0", "--no-pack", *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "berthing.cli", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # bounded: the run ends by itself after 100 epochs at worst
        if line.startswith("epoch ") and " step " in line:  # a training step is done: the handler is installed
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130, rest
    assert "interrupted at step" in rest and "resume with" in rest and "--resume" in rest and "Traceback" not in rest
    assert list((out / "runs").glob("checkpoint-*"))
