"""Self-verifying packages: a package checks its graph on the CPU that loads it and falls back, refuses or warns.

The packages here are real `berthing pack --optimize int8` outputs of the tiny embedding model; "another CPU" is a
manifest whose recorded CPU class differs from this host's, and a damaged graph is one whose int8 weight scales
were rewritten (the manifest re-signed, as a packer with a bad toolchain would ship it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import berthing
from berthing.packaging.package import MANIFEST, read_manifest, sha256_file
from berthing.runtime.cpu import detect
from berthing.types import ModelLoadError
from tests.support.servers import cli_server

TEXTS = ["the parcel came late", "物流很快, 包装完好", "ok", "a somewhat longer sentence about a delivery that went wrong"]
AMX = {"arch": "x86_64", "model": "Intel(R) Xeon(R) Platinum 8488C", "class": "amx",
       "features": ["amx_int8", "avx2", "avx512_vnni", "avx512bw", "avx512f", "avx_vnni"]}
AVX2 = {"arch": "x86_64", "model": "AMD EPYC", "class": "avx2", "features": ["avx2"]}


def _other_cpu() -> dict:
    return AVX2 if detect().cpu_class == "amx" else AMX


def _pack(ckpt: Path, out: Path, *extra: str) -> Path:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "pack", str(ckpt), "--name", "e", "-o", str(out), "--no-archive",
         "--optimize", "int8", *extra], capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def _resign(folder: Path) -> None:
    """Recompute every file's checksum in the manifest (files removed from the folder leave it)."""
    manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    manifest["files"] = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    manifest["probe"] = json.loads((folder / "berthing.json").read_text("utf-8")).get("probe")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "berthing.json").read_text("utf-8"))
    change(meta)
    (folder / "berthing.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    _resign(folder)


def _from_other_cpu(folder: Path) -> None:
    _edit_meta(folder, lambda meta: meta["probe"].update(cpu=_other_cpu()))


def _damage_scales(folder: Path) -> int:
    """Scale every int8 weight's per-channel scales by 4 or 1/4 (alternating channels): it still runs, wrongly."""
    model = onnx.load(str(folder / "model.onnx"))
    names = {t.name for t in model.graph.initializer}
    damaged = 0
    for tensor in model.graph.initializer:
        if tensor.name.endswith("_scale") and tensor.name[: -len("_scale")] + "_quantized" in names:
            values = numpy_helper.to_array(tensor)
            factors = np.where(np.arange(values.size).reshape(values.shape) % 2, 4.0, 0.25)
            tensor.CopyFrom(numpy_helper.from_array((values * factors).astype(np.float32), tensor.name))
            damaged += 1
    onnx.save(model, str(folder / "model.onnx"))
    _resign(folder)
    return damaged


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """The tiny embedder packed once with its fp32 fallback and once with --int8-only."""
    out = tmp_path_factory.mktemp("selfcheck")
    ckpt = tiny_model_dir("embed")
    full = _pack(ckpt, out / "full")
    lean = _pack(ckpt, out / "lean", "--int8-only")
    return {"full": full, "lean": lean, "ckpt": ckpt}


def _copy(packed: dict[str, Path], which: str, tmp_path: Path) -> Path:
    target = tmp_path / f"e-{which}"
    shutil.copytree(packed[which], target)
    return target


def test_pack_records_the_cpu_the_probe_and_the_fp32_fallback(packed) -> None:
    manifest = read_manifest(packed["full"])
    probe = manifest["probe"]
    assert probe["cpu"] == detect().to_dict() and probe["passed"] and probe["inputs"] >= 16
    assert set(probe["thresholds"]) == {"cosine_min", "cosine_mean"} and probe["file"] == "probe.json"
    assert {"probe.json", "fp32/model.onnx", "model.onnx"} <= set(manifest["files"])
    assert "fp32/model.onnx" not in read_manifest(packed["lean"])["files"]
    stored = json.loads((packed["full"] / "probe.json").read_text("utf-8"))
    assert stored["task"] == "embed" and len(stored["inputs"]) == len(stored["results"]) == probe["inputs"]


def test_on_the_cpu_it_was_verified_on_the_probe_does_not_run(packed, tmp_path: Path) -> None:
    model = berthing.load(packed["full"], cache_dir=tmp_path / "cache")
    check = model.describe()["verification"]
    assert check["outcome"] == "not-needed" and check["graph"] == "model.onnx"
    assert check["note"] == f"same CPU class; verified on {detect().describe()}"


def test_a_package_from_another_cpu_class_is_probed_at_load(packed, tmp_path: Path) -> None:
    folder = _copy(packed, "full", tmp_path)
    _from_other_cpu(folder)
    model = berthing.load(folder, cache_dir=tmp_path / "cache")
    check = model.verification
    assert check["outcome"] == "passed" and check["graph"] == "model.onnx"
    assert check["reason"] == f"CPU class {detect().cpu_class} here, {_other_cpu()['class']} where it was verified"
    assert check["metrics"]["cosine_min"] >= 0.98 and check["seconds"] > 0
    assert check["note"].startswith("int8 passed its probe here (cosine_min ")


@pytest.mark.parametrize("policy", ["fallback", "refuse", "serve"])
def test_a_damaged_int8_graph_falls_back_refuses_or_warns(packed, tmp_path: Path, policy: str, caplog) -> None:
    folder = _copy(packed, "full", tmp_path)
    assert _damage_scales(folder) > 0
    _from_other_cpu(folder)
    if policy == "refuse":
        with pytest.raises(ModelLoadError) as refused:
            berthing.load(folder, cache_dir=tmp_path / "cache", on_verify_fail="refuse")
        other = _other_cpu()
        pattern = (
            re.escape(f"model e: its int8 graph fails its probe on this CPU, {detect().describe()} (")
            + r"cosine_(min|mean) 0\.\d{4} < 0\.9(8|95)(; cosine_mean 0\.\d{4} < 0\.995)?"
            + re.escape(f"; verified on {other['model']} ({'amx, vnni' if other['class'] == 'amx' else 'avx2, no vnni'}); "
                        f"CPU class {detect().cpu_class} here, {other['class']} where it was verified). Start with "
                        "--on-verify-fail fallback or serve to load it anyway")
        )
        assert re.fullmatch(pattern, refused.value.message), refused.value.message
        return
    with caplog.at_level(logging.WARNING, logger="berthing.load_check"):
        model = berthing.load(folder, cache_dir=tmp_path / "cache", on_verify_fail=policy)
    check = model.verification
    assert check["metrics"]["cosine_min"] < 0.98 or check["metrics"]["cosine_mean"] < 0.995
    reference = berthing.load(packed["ckpt"], cache_dir=tmp_path / "cache", optimize="none").predict(TEXTS)
    got, want = np.asarray(model.predict(TEXTS)), np.asarray(reference)
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    if policy == "fallback":
        assert (check["outcome"], check["graph"]) == ("fallback", "fp32/model.onnx")
        assert check["fallbackMetrics"]["cosine_min"] > 0.9999
        assert cosines.min() > 0.9999  # what clients get is the fp32 graph's
        assert "serving its fp32 graph instead (on_verify_fail=fallback)" in caplog.text
    else:
        assert (check["outcome"], check["graph"]) == ("failed-served", "model.onnx")
        assert check["note"].startswith("int8 FAILED its probe here (cosine_min ")
        assert cosines.min() < 0.9999  # served as asked: the damaged graph's vectors, not the fp32 ones
        assert "serving it anyway (on_verify_fail=serve)" in caplog.text


def test_an_int8_only_package_that_fails_cannot_fall_back(packed, tmp_path: Path) -> None:
    folder = _copy(packed, "lean", tmp_path)
    _damage_scales(folder)
    with pytest.raises(ModelLoadError, match=r"The package carries no fp32 graph \(packed with --int8-only\)"):
        berthing.load(folder, cache_dir=tmp_path / "cache", verify_on_load="always")
    model = berthing.load(folder, cache_dir=tmp_path / "cache", verify_on_load="never")
    assert model.verification["outcome"] == "skipped"


def test_a_package_without_a_probe_still_loads_with_a_note(packed, tmp_path: Path) -> None:
    folder = _copy(packed, "full", tmp_path)
    (folder / "probe.json").unlink()
    _edit_meta(folder, lambda meta: meta.pop("probe"))
    model = berthing.load(folder, cache_dir=tmp_path / "cache", verify_on_load="always")
    assert model.verification["outcome"] == "no-probe"
    assert model.verification["note"] == "no probe (packed before berthing recorded one): not checked on this CPU"
    assert len(model.predict(TEXTS)) == len(TEXTS)


def test_an_old_int8_package_without_pair_bounded_weights_is_flagged_where_it_can_overflow(packed, tmp_path: Path) -> None:
    folder = _copy(packed, "full", tmp_path)
    (folder / "probe.json").unlink()

    def old(meta: dict) -> None:
        meta.pop("probe")
        meta["optimization"]["int8"].pop("pair_bound")

    _edit_meta(folder, old)
    note = berthing.load(folder, cache_dir=tmp_path / "cache").verification["note"]
    flagged = f"; its int8 weights are not pair-bounded and can overflow on this CPU ({detect().describe()}): repack it"
    assert note == "no probe (packed before berthing recorded one): not checked on this CPU" + (
        flagged if detect().saturates_u8s8 else ""
    )


def test_the_start_line_and_metrics_say_what_the_check_did(packed, tmp_path: Path) -> None:
    folder = _copy(packed, "full", tmp_path)
    _damage_scales(folder)
    _from_other_cpu(folder)
    with cli_server([str(folder), "--cache-dir", str(tmp_path / "cache")]) as (proc, url):
        out = " ".join(proc.startup_output.split())
        assert f"cpu: {detect().describe()} -> fp32; load check: fallback (int8 FAILED its probe here (cosine_min " in out
        metrics = httpx.get(f"{url}/metrics").text
        assert 'berthing_model_verification{graph="fp32/model.onnx",model="e",outcome="fallback",version="1.0"} 1.0' in metrics
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output).group(1)
        token = json.loads((tmp_path / "cache" / "key_file.json").read_text())["management"]["key"]
        described = httpx.get(f"{admin}/models/e", headers={"authorization": f"Bearer {token}"}).json()
        check = described[0]["verification"]
        assert (check["outcome"], check["graph"], check["cpu"]) == ("fallback", "fp32/model.onnx", detect().describe())
