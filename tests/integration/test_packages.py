"""Packages end to end: `berthing pack` / `inspect`, loading .berth archives and folders, checksums, pickle, .mar."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import httpx
import pytest

import berthing
from berthing.config import Settings
from berthing.packaging.package import read_manifest
from berthing.types import ModelLoadError
from tests.support.models import LABELS
from tests.support.servers import cli_server, repo_root

TEXTS = ["物流很快, 包装完好", "the parcel came late", "ok"]


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "berthing.cli", *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout
    return " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def packs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """The tiny classifier packed once as sentiment-2.0.berth and as the folder sentiment-2.0/."""
    out = tmp_path_factory.mktemp("packs")
    ckpt = str(tiny_model_dir("classify"))
    archive = Path(_cli("pack", ckpt, "--name", "sentiment", "--version", "2.0", "-o", str(out)).stdout.strip())
    folder = Path(_cli("pack", ckpt, "--name", "sentiment", "--version", "2.0", "-o", str(out), "--no-archive").stdout.strip())
    return {"archive": archive, "folder": folder, "out": out}


def test_pack_writes_an_archive_with_manifest_and_checksums(packs) -> None:
    archive = packs["archive"]
    assert archive.name == "sentiment-2.0.berth"
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    manifest = read_manifest(archive)
    fallback = {"fp32/model.onnx"} if manifest["optimization"]["level"] == "int8" else set()  # int8 keeps its fp32 graph
    assert names == {"MANIFEST.json", "model.onnx", "tokenizer.json", "berthing.json", "config.json", "probe.json"} | fallback
    assert (manifest["name"], manifest["version"], manifest["task"]) == ("sentiment", "2.0", "classify")
    assert manifest["labels"] == LABELS
    assert manifest["max_length"] == 128 and manifest["artifact"] == ["model.onnx", "tokenizer.json", "berthing.json"]
    assert set(manifest["files"]) == names - {"MANIFEST.json"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert 0 <= manifest["verification"]["max_abs_error"] <= manifest["verification"]["tolerance"] == 1e-3
    assert manifest["berthing_version"] == berthing.__version__ and manifest["created_at"].endswith("+00:00")
    folder = packs["folder"]
    listed = set(read_manifest(folder)["files"]) | {"MANIFEST.json"}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert folder.name == "sentiment-2.0" and on_disk == listed
    assert listed - {"fp32/model.onnx"} == names - {"fp32/model.onnx"}  # the two packs may keep different levels


def test_inspect_prints_the_manifest(packs) -> None:
    as_json = json.loads(_cli("inspect", str(packs["archive"]), "--json").stdout)
    assert as_json == read_manifest(packs["archive"])
    table = _cli("inspect", str(packs["folder"])).stdout
    assert "sentiment-2.0" in table and "max_abs_error" in table and "model.onnx" in table


@pytest.mark.parametrize("kind", ["archive", "folder"])
def test_loaded_package_predicts_as_the_checkpoint(packs, kind: str, load, tmp_path: Path) -> None:
    model = berthing.load(packs[kind], cache_dir=tmp_path)
    assert (model.name, model.version) == ("sentiment", "2.0")
    assert model.predict(TEXTS) == load("classify").predict(TEXTS)
    assert berthing.load(packs[kind], name="other", cache_dir=tmp_path).name == "other"


def test_archive_is_extracted_once_into_the_cache(packs, tmp_path: Path) -> None:
    berthing.load(packs["archive"], cache_dir=tmp_path)
    berthing.load(packs["archive"], cache_dir=tmp_path)
    extracted = list((tmp_path / "packages").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "MANIFEST.json").is_file()


def test_serve_a_package_as_a_process(packs, tmp_path: Path) -> None:
    env = {"BERTHING_CACHE_DIR": str(tmp_path)}
    with cli_server([str(packs["archive"]), f"copy={packs['folder']}"], env) as (_, url):
        one = httpx.post(f"{url}/predictions/sentiment/2.0", json={"input": "教练, 我想打篮球."}).json()
        assert one["label"] in LABELS and set(one["scores"]) == set(LABELS)
        assert httpx.post(f"{url}/predictions/copy", json={"input": "教练, 我想打篮球."}).json() == one


NO_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None
    sys.modules["transformers"] = None
    import berthing
    model = berthing.load(sys.argv[1], cache_dir=sys.argv[2])
    print(json.dumps(model.predict(json.loads(sys.argv[3]))))
    """
)


def test_serving_a_package_never_needs_torch(packs, load, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(packs["archive"]), str(tmp_path / "fresh"), json.dumps(TEXTS)],
        capture_output=True, text=True, cwd=repo_root(), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(load("classify").predict(TEXTS)))


def test_tampered_folder_is_refused_naming_the_file(packs, tmp_path: Path) -> None:
    copy = shutil.copytree(packs["folder"], tmp_path / "pkg")
    with (copy / "tokenizer.json").open("ab") as fh:
        fh.write(b" ")
    with pytest.raises(ModelLoadError) as info:
        berthing.load(copy, cache_dir=tmp_path)
    assert info.value.message == "package sentiment-2.0: checksum mismatch for tokenizer.json (the file was changed)"


def test_rewritten_zip_entry_is_refused_naming_the_file(packs, tmp_path: Path) -> None:
    forged = tmp_path / "forged.berth"
    with zipfile.ZipFile(packs["archive"]) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = data.replace(b"positive", b"POSITIVE")
            dst.writestr(info.filename, data)
    with pytest.raises(ModelLoadError) as info:
        berthing.load(forged, cache_dir=tmp_path)
    assert info.value.message == "package sentiment-2.0: checksum mismatch for config.json (the file was changed)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("files"), "MANIFEST.json lacks files"),
        (lambda m: m.update(task="summarize"), "unknown task 'summarize' in MANIFEST.json"),
        (lambda m: m.update(version="../1"), "invalid version '../1'"),
    ],
)
def test_bad_manifest_is_refused(packs, tmp_path: Path, change, message: str) -> None:
    copy = shutil.copytree(packs["folder"], tmp_path / "pkg")
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    change(manifest)
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(".", r"\.")):
        berthing.load(copy, cache_dir=tmp_path)


def test_labels_override_and_count_check(tiny_model_dir, tmp_path: Path) -> None:
    ckpt = str(tiny_model_dir("classify"))
    path = _cli("pack", ckpt, "--name", "s", "--version", "1", "-o", str(tmp_path), "--labels", "bad,meh,good").stdout.strip()
    assert set(berthing.load(path, cache_dir=tmp_path).predict("fine")["scores"]) == {"bad", "meh", "good"}
    wrong = _cli("pack", ckpt, "--name", "s", "--version", "2", "-o", str(tmp_path), "--labels", "a,b", check=False)
    assert "--labels gives 2 labels but the model's head has 3 outputs" in _error(wrong)


def _pickle_checkpoint(source: Path, target: Path) -> Path:
    """The same weights as pytorch_model.bin (pickle), as torch-model-archiver's --serialized-file takes them."""
    import torch
    from safetensors.torch import load_file

    target.mkdir(parents=True)
    torch.save(load_file(str(source / "model.safetensors")), target / "pytorch_model.bin")
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(source / name, target / name)
    return target


def test_pickle_weights_need_allow_pickle(tiny_model_dir, load, tmp_path: Path) -> None:
    ckpt = _pickle_checkpoint(tiny_model_dir("classify"), tmp_path / "pickled")
    refused = _cli("pack", str(ckpt), "--name", "p", "-o", str(tmp_path), check=False)
    assert "pickled holds pickle weights (pytorch_model.bin) and no model.safetensors" in _error(refused)
    assert "--allow-pickle" in _error(refused)
    with pytest.raises(ModelLoadError, match="pass --allow-pickle"):
        berthing.load(ckpt, cache_dir=tmp_path / "cache")  # refused before transformers opens the file
    onnx = tmp_path / "cache" / "onnx"  # no artifact (the remembered cache key in .hashes/ is not one)
    assert not onnx.exists() or not [p for p in onnx.iterdir() if not p.name.startswith(".")]
    path = _cli("pack", str(ckpt), "--name", "p", "-o", str(tmp_path), "--allow-pickle").stdout.strip()
    assert _close(berthing.load(path, cache_dir=tmp_path).predict(TEXTS), load("classify").predict(TEXTS))


def _close(got: list[dict], expected: list[dict]) -> bool:
    return all(
        g["label"] == e["label"] and all(abs(g["scores"][k] - v) < 1e-5 for k, v in e["scores"].items())
        for g, e in zip(got, expected, strict=True)
    )


def _mar(ckpt: Path, target: Path) -> Path:
    """A .mar as torch-model-archiver writes it: --serialized-file pytorch_model.bin --handler handler.py
    --extra-files config.json,vocab.txt,index_to_name.json,setup_config.json."""
    config = json.loads((ckpt / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(LABELS))}  # the names live in index_to_name.json
    config["label2id"] = {f"LABEL_{i}": i for i in range(len(LABELS))}
    manifest = {
        "createdOn": "22/11/2026 08:00:00", "runtime": "python",
        "model": {"modelName": "bert", "serializedFile": "pytorch_model.bin", "handler": "handler.py", "modelVersion": "1.0"},
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=4))
        zf.write(ckpt / "pytorch_model.bin", "pytorch_model.bin")
        zf.writestr("config.json", json.dumps(config))
        zf.write(ckpt / "vocab.txt", "vocab.txt")
        zf.writestr("index_to_name.json", json.dumps({str(i): name for i, name in enumerate(LABELS)}))
        zf.writestr("setup_config.json", json.dumps({"model_name": "bert-base-uncased", "mode": "sequence_classification",
                                                     "do_lower_case": True, "num_labels": "3", "max_length": "128"}))
        zf.writestr("handler.py", "from ts.torch_handler.base_handler import BaseHandler\n")
    return target


def test_pack_from_a_torchserve_mar(tiny_model_dir, load, tmp_path: Path) -> None:
    mar = _mar(_pickle_checkpoint(tiny_model_dir("classify"), tmp_path / "pickled"), tmp_path / "bert.mar")
    refused = _cli("pack", "--from-mar", str(mar), "-o", str(tmp_path / "out"), check=False)
    assert "--allow-pickle" in _error(refused)
    path = Path(_cli("pack", "--from-mar", str(mar), "-o", str(tmp_path / "out"), "--allow-pickle").stdout.strip())
    assert path.name == "bert-1.0.berth"
    manifest = read_manifest(path)
    assert (manifest["task"], manifest["labels"], manifest["handler"]) == ("classify", LABELS, None)
    assert manifest["source"] == {"mar": "bert.mar", "torchserve_handler": "handler.py"}
    model = berthing.load(path, cache_dir=tmp_path / "cache")
    assert (model.name, model.version) == ("bert", "1.0")
    assert _close(model.predict(TEXTS), load("classify").predict(TEXTS))


def test_unsafe_mar_is_refused(tmp_path: Path) -> None:
    mar = tmp_path / "evil.mar"
    with zipfile.ZipFile(mar, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", "{}")
        zf.writestr("../../escape.py", "print('owned')")
    refused = _cli("pack", "--from-mar", str(mar), "-o", str(tmp_path), check=False)
    assert "archive evil.mar: unsafe entry '../../escape.py' (a '..' component)" in _error(refused)


def test_a_package_serves_in_the_test_settings_cache(packs, settings: Settings) -> None:
    model = berthing.load(packs["archive"], cache_dir=settings.cache_dir)
    assert model.describe()["modelVersion"] == "2.0"
