"""Safe zip extraction for .berth packages and TorchServe .mar files: no path escapes, links or zip bombs.

Every entry is checked before anything is written, and sizes are counted again while streaming, so a
central directory that lies about sizes cannot fill the disk.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from berthing.types import InvalidPackage

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may unpack to; generous for real models, fatal for bombs."""

    max_bytes: int = 4 * 1024**3
    max_entries: int = 10_000
    max_ratio: float = 200.0  # uncompressed / compressed, checked on entries of at least ratio_min_bytes
    ratio_min_bytes: int = 1 << 16


def _entry_parts(archive: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components, refusing every form that could land outside the target folder."""
    name = info.filename
    where = f"archive {archive.name}: unsafe entry {name!r}"
    if "\0" in name:
        raise InvalidPackage(f"{where} (a NUL byte in its name)")
    normalized = name.replace("\\", "/")
    if _DRIVE_RE.match(normalized):
        raise InvalidPackage(f"{where} (a drive letter)")
    if normalized.startswith("/"):
        raise InvalidPackage(f"{where} (an absolute path)")
    parts = PurePosixPath(normalized).parts
    if ".." in parts:
        raise InvalidPackage(f"{where} (a '..' component)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidPackage(f"{where} (a symbolic link)")
    return tuple(p for p in parts if p not in ("", "."))


def check_archive(archive: Path, limits: ArchiveLimits | None = None) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Validate every entry of the central directory; return the entries with their safe path parts."""
    limits = limits or ArchiveLimits()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidPackage(f"{archive} is not a readable zip archive: {exc}") from exc
    if len(infos) > limits.max_entries:
        raise InvalidPackage(f"archive {archive.name} has {len(infos)} entries, over the limit of {limits.max_entries}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_bytes:
        raise InvalidPackage(
            f"archive {archive.name} unpacks to {total} bytes, over the limit of {limits.max_bytes} (zip bomb?)"
        )
    checked = []
    for info in infos:
        parts = _entry_parts(archive, info)
        if info.file_size >= limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise InvalidPackage(
                f"archive {archive.name}: entry {info.filename!r} compresses {ratio:.0f}:1, "
                f"over the limit of {limits.max_ratio:.0f}:1 (zip bomb?)"
            )
        if parts:
            checked.append((info, parts))
    return checked


def extract(archive: Path, target: Path, limits: ArchiveLimits | None = None) -> Path:
    """Extract into `target` (created through a temporary sibling and a rename, so it is whole or absent)."""
    limits = limits or ArchiveLimits()
    entries = check_archive(archive, limits)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_entries(archive, entries, tmp, limits)
        try:
            os.rename(tmp, target)
        except OSError:  # another process extracted the same archive first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_entries(
    archive: Path, entries: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], root: Path, limits: ArchiveLimits
) -> None:
    """Write checked entries under root, counting bytes as they stream rather than trusting the headers."""
    base = root.resolve()
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info, parts in entries:
            dest = root.joinpath(*parts)
            if not dest.resolve().is_relative_to(base):
                where = f"archive {archive.name}: unsafe entry {info.filename!r}"
                raise InvalidPackage(f"{where} (resolves outside the target folder)")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            if dest.exists():
                raise InvalidPackage(f"archive {archive.name}: duplicate entry {info.filename!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, dest.open("xb") as out:
                    for chunk in iter(lambda src=src: src.read(_CHUNK), b""):
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise InvalidPackage(
                                f"archive {archive.name} unpacks to more than {limits.max_bytes} bytes (zip bomb?)"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # zipfile checks sizes and CRCs as it reads
                raise InvalidPackage(f"archive {archive.name}: entry {info.filename!r} is corrupt ({exc})") from exc
