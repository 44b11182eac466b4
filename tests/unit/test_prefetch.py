"""The startup-file list: where it lives, what a start records in it, and a read-ahead helper that never blocks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from berthing import prefetch


def test_the_list_lives_in_the_cache_folder_the_command_line_or_env_names(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert prefetch.list_path(["minilm"], env) == tmp_path / "xdg" / "berthing" / "startup-files.txt"
    env["BERTHING_CACHE_DIR"] = str(tmp_path / "env")
    assert prefetch.list_path(["--port", "0"], env) == tmp_path / "env" / "startup-files.txt"
    assert prefetch.list_path(["--cache-dir", str(tmp_path / "a")], env) == tmp_path / "a" / "startup-files.txt"
    assert prefetch.list_path([f"--cache-dir={tmp_path / 'b'}", "x"], env) == tmp_path / "b" / "startup-files.txt"


def test_a_start_records_its_modules_libraries_and_model_files_once(tmp_path: Path) -> None:
    model = tmp_path / "artifact" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx")
    env = {"BERTHING_CACHE_DIR": str(tmp_path / "cache")}
    path = prefetch.record([], [model, tmp_path / "gone.json"], env)
    assert path == tmp_path / "cache" / "startup-files.txt"
    listed = path.read_text(encoding="utf-8").splitlines()
    assert len(listed) == len(set(listed)) and all(os.path.isfile(p) for p in listed)
    assert str(model) in listed and str(tmp_path / "gone.json") not in listed
    assert np.__spec__.cached in listed or np.__file__ in listed  # a module, as bytecode where there is some
    if sys.platform == "linux":  # mapped libraries come from /proc/self/maps: numpy's native core, never /dev files
        assert any("_multiarray_umath" in p and p.endswith(".so") for p in listed)
        assert not any(p.startswith(("/dev/", "/proc/")) for p in listed)
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    assert prefetch.record([], [model], env) == path and path.stat().st_mtime_ns == before - 10**9  # same list: not rewritten
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert prefetch.record(["--cache-dir", str(blocked / "cache")], [], env) is None


def test_the_helper_reads_ahead_regular_files_and_skips_the_rest_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening a FIFO for reading would wait for a writer forever
    regular = tmp_path / "weights.bin"
    regular.write_bytes(b"\0" * 65536)
    cache = tmp_path / "cache"
    assert prefetch.start(["--cache-dir", str(cache)]) is None  # no list yet: nothing runs
    cache.mkdir()
    listed = [str(fifo), "/dev/zero", str(tmp_path), str(tmp_path / "gone"), str(regular)]
    (cache / "startup-files.txt").write_text("\n".join(listed))
    helper = prefetch.start(["--cache-dir", str(cache)])
    assert helper is not None and helper.wait(timeout=30) == 0


def test_over_the_limit_modules_give_way_to_the_models_files(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    listed = prefetch.startup_files([model], limit=3)
    assert len(listed) == 3 and listed[-1] == str(model.resolve())
