"""Safe extraction refuses every escape, link and bomb with a precise message, and extracts honest archives."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from berthing.packaging.archive import ArchiveLimits, extract
from berthing.types import ModelLoadError


def _zip(path: Path, entries: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _refused(archive: Path, target: Path, limits: ArchiveLimits | None = None) -> str:
    with pytest.raises(ModelLoadError) as info:
        extract(archive, target, limits)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [archive.name]  # no temporary folder left behind
    return info.value.message


def test_honest_archive_extracts_whole(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", {"a.txt": b"a", "sub/b.txt": b"b" * 100})
    out = extract(archive, tmp_path / "out")
    assert (out / "a.txt").read_bytes() == b"a" and (out / "sub" / "b.txt").read_bytes() == b"b" * 100


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("../x", "a '..' component"),
        ("ok/../../x", "a '..' component"),
        ("/etc/passwd", "an absolute path"),
        ("C:/Windows/x.dll", "a drive letter"),
        ("..\\x", "a '..' component"),
    ],
)
def test_path_escapes_are_refused(tmp_path: Path, entry: str, why: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"x", entry: b"owned"})
    assert _refused(archive, tmp_path / "out") == f"archive bad.zip: unsafe entry {entry!r} ({why})"


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("model.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path / "link.zip", {link: b"/etc/passwd"})
    assert _refused(archive, tmp_path / "out") == "archive link.zip: unsafe entry 'model.onnx' (a symbolic link)"


def test_total_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"a": b"x" * 600, "b": b"y" * 600})
    message = _refused(archive, tmp_path / "out", ArchiveLimits(max_bytes=1000))
    assert message == "archive bomb.zip unpacks to 1200 bytes, over the limit of 1000 (zip bomb?)"


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(6)})
    message = _refused(archive, tmp_path / "out", ArchiveLimits(max_entries=5))
    assert message == "archive many.zip has 6 entries, over the limit of 5"


def test_compression_ratio_over_the_limit_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "zeros.zip", {"zeros.bin": bytes(4 << 20)})
    with zipfile.ZipFile(archive) as zf:
        ratio = zf.getinfo("zeros.bin").file_size / zf.getinfo("zeros.bin").compress_size
    message = _refused(archive, tmp_path / "out")
    assert message == f"archive zeros.zip: entry 'zeros.bin' compresses {ratio:.0f}:1, over the limit of 200:1 (zip bomb?)"


def test_lying_sizes_are_refused(tmp_path: Path) -> None:
    """A central directory that understates a size: zipfile stops at the stated size and the CRC check fails;
    (the bytes counted while writing would stop it at the limit as well)."""
    archive = _zip(tmp_path / "liar.zip", {"a": b"x" * 5000})
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size in the central directory
    archive.write_bytes(bytes(data))
    message = _refused(archive, tmp_path / "out", ArchiveLimits(max_bytes=1000))
    assert message == "archive liar.zip: entry 'a' is corrupt (Bad CRC-32 for file 'a')"


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf, pytest.warns(UserWarning):
        zf.writestr("model.onnx", b"a")
        zf.writestr("model.onnx", b"b")
    assert _refused(tmp_path / "dup.zip", tmp_path / "out") == "archive dup.zip: duplicate entry 'model.onnx'"


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.berth"
    bogus.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"x\.berth is not a readable zip archive"):
        extract(bogus, tmp_path / "out")
