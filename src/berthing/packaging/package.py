"""Model packages (.berth): an exported ONNX artifact plus MANIFEST.json with checksums, as a zip or a folder.

Packing needs torch (the export happens once, at pack time); opening a package needs only the standard
library, so a serving host never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from berthing.names import check_name, check_version
from berthing.packaging.archive import ArchiveLimits, extract
from berthing.packaging.checkpoint import read_checkpoint
from berthing.spec import TASKS
from berthing.types import InvalidPackage, ModelLoadError
from berthing.version import __version__

MANIFEST = "MANIFEST.json"
SUFFIX = ".berth"
ARTIFACT_FILES = ("model.onnx", "tokenizer.json", "berthing.json")
FORMAT = 1
_REQUIRED = ("format", "name", "version", "task", "files", "artifact")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _apply_labels(folder: Path, target: Path, spec: Any, labels: list[str] | None, origin: str) -> None:
    """Copy config.json, with id2label/label2id replaced when labels are given (they must match the head)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if labels:
        if spec.task not in ("classify", "ner"):
            raise ModelLoadError(f"{origin} applies to classify and ner models; this one is {spec.task}")
        if len(labels) != len(spec.labels):
            raise ModelLoadError(f"{origin} gives {len(labels)} labels but the model's head has {len(spec.labels)} outputs")
        spec.labels = list(labels)
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
    (target / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def build_package(
    checkpoint: Path,
    target: Path,
    name: str,
    version: str,
    *,
    task: str | None = None,
    labels: list[str] | None = None,
    labels_origin: str = "--labels",
    handler: Path | None = None,
    allow_pickle: bool = False,
    source: dict[str, Any] | None = None,
    optimize: Any = None,
    progress: Callable[[str], None] | None = None,
    int8_only: bool = False,
) -> dict[str, Any]:
    """Export `checkpoint` into the empty folder `target` and write its manifest; return the manifest.

    An int8 package also carries the fp32 graph (fp32/model.onnx), served where the int8 graph fails its probe on
    the loading CPU, unless `int8_only` (for size-bound images: ~4x smaller).

    `optimize` (a tune.OptimizeRequest) picks and verifies the graph's optimization level; None keeps fp32."""
    from berthing.packaging.export import write_artifact
    from berthing.runtime.torch import check_weights

    check_name(name)
    check_version(version)
    spec = read_checkpoint(checkpoint, task)
    check_weights(checkpoint, allow_pickle)
    _apply_labels(checkpoint, target, spec, labels, labels_origin)
    if handler is not None:
        if not handler.is_file():
            raise ModelLoadError(f"handler {handler} not found")
        try:  # a syntax error found at pack time, not at the first load in production
            compile(handler.read_text("utf-8"), str(handler), "exec")
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"handler {handler} does not compile: {exc}") from None
        shutil.copy2(handler, target / "handler.py")
    if progress:
        progress("exporting to ONNX and checking it against PyTorch")
    verification = write_artifact(checkpoint, spec, target, allow_pickle)
    optimization = None
    if optimize is not None:
        from berthing.packaging.tune import tune

        optimization = tune(
            checkpoint, spec, target, optimize, allow_pickle=allow_pickle, progress=progress, keep_fp32=not int8_only
        )
    files = {
        p.relative_to(target).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(target.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "task": spec.task,
        "labels": spec.labels,
        "max_length": spec.max_length,
        "pooling": spec.pooling if spec.task == "embed" else None,
        "normalize": spec.normalize,
        "model_type": spec.model_type,
        "artifact": list(ARTIFACT_FILES),
        "files": files,
        "handler": "handler.py" if handler is not None else None,
        "verification": verification,
        "optimization": optimization,
        "probe": json.loads((target / "berthing.json").read_text(encoding="utf-8")).get("probe"),
        "berthing_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source or {"checkpoint": checkpoint.name},
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def pack(
    checkpoint: Path, out_dir: Path, name: str, version: str, *, archive: bool = True, **options: Any
) -> tuple[Path, dict[str, Any]]:
    """Write DIR/NAME-VERSION.berth (or the folder DIR/NAME-VERSION with archive=False); return its path and manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (f"{name}-{version}{SUFFIX}" if archive else f"{name}-{version}")
    if final.exists():
        raise ModelLoadError(f"{final} already exists; remove it or pick another version")
    work = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=out_dir))
    try:
        manifest = build_package(checkpoint, work, name, version, **options)
        if archive:
            tmp_zip = work.with_suffix(".zip-partial")
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(work / MANIFEST, MANIFEST)
                for rel in manifest["files"]:
                    zf.write(work / rel, rel)
            tmp_zip.rename(final)
        else:
            work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        work.with_suffix(".zip-partial").unlink(missing_ok=True)
    return final, manifest


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a package folder or .berth archive (read from the zip without extracting)."""
    try:
        if path.is_dir():
            raw = (path / MANIFEST).read_bytes()
        else:
            with zipfile.ZipFile(path) as zf:
                raw = zf.read(MANIFEST)
    except KeyError:
        raise InvalidPackage(f"{path} is not a berthing package: it has no {MANIFEST}") from None
    except zipfile.BadZipFile as exc:
        raise InvalidPackage(f"cannot read the manifest of {path}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read the manifest of {path}: {exc}") from exc
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise InvalidPackage(f"{path}: {MANIFEST} is not valid JSON: {exc}") from exc
    return check_manifest(manifest, path)


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """Refuse manifests this version cannot trust or serve, naming what is wrong."""
    if not isinstance(manifest, dict):
        raise InvalidPackage(f"{path}: {MANIFEST} is not a JSON object")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise InvalidPackage(f"{path}: {MANIFEST} lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise InvalidPackage(f"{path}: package format {manifest['format']!r} is not supported (this berthing reads {FORMAT})")
    if manifest["task"] not in TASKS:
        raise InvalidPackage(f"{path}: unknown task {manifest['task']!r} in {MANIFEST} (tasks: {', '.join(TASKS)})")
    check_name(str(manifest["name"]))
    check_version(str(manifest["version"]))
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()):
        raise InvalidPackage(f"{path}: {MANIFEST} 'files' must map each file to its sha256")
    absent = [name for name in manifest["artifact"] if name not in files]
    if absent:
        raise InvalidPackage(f"{path}: {MANIFEST} lists no checksum for {', '.join(absent)}")
    return manifest


def verify(folder: Path, manifest: dict[str, Any]) -> None:
    """Check every file against its manifest checksum, and that no unlisted file was slipped in."""
    for rel, entry in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise InvalidPackage(f"package {manifest['name']}-{manifest['version']}: {rel} is missing")
        if sha256_file(path) != entry["sha256"]:
            raise InvalidPackage(
                f"package {manifest['name']}-{manifest['version']}: checksum mismatch for {rel} (the file was changed)"
            )
    extra = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    unlisted = [rel for rel in extra if rel not in manifest["files"]]
    if unlisted:
        raise InvalidPackage(f"package {manifest['name']}-{manifest['version']}: {unlisted[0]} is not in {MANIFEST}")
    if manifest.get("handler") not in (None, "handler.py") or (manifest.get("handler") and "handler.py" not in manifest["files"]):
        raise InvalidPackage(f"package {manifest['name']}-{manifest['version']}: 'handler' must name handler.py, listed in files")


def is_package(path: Path) -> bool:
    """A folder with MANIFEST.json, or a file ending in .berth."""
    return (path.is_dir() and (path / MANIFEST).is_file()) or (path.is_file() and path.suffix == SUFFIX)


def open_package(
    path: Path, cache_dir: Path, limits: ArchiveLimits | None = None, progress: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]]:
    """A verified package folder and its manifest: a folder as is, an archive extracted once into the cache."""
    if path.is_dir():
        manifest = read_manifest(path)
        verify(path, manifest)
        return path, manifest
    manifest = read_manifest(path)
    target = cache_dir / "packages" / sha256_file(path)[:32]
    if not target.is_dir():
        if progress:
            progress(f"extracting {path.name}")
        extract(path, target, limits)
    manifest = read_manifest(target)
    verify(target, manifest)
    return target, manifest
