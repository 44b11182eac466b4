"""Model names and versions end up in URLs and file names, so both keep to a safe alphabet."""

from __future__ import annotations

import re

from berthing.types import ModelLoadError

# fullmatch, not match: "$" also matches before a final newline, which let "name\n" through
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}")


def check_name(name: str) -> str:
    """Model names end up in URLs and file names: keep them to a safe alphabet."""
    if not _NAME_RE.fullmatch(name):
        raise ModelLoadError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' (at most 64, starting with a letter or digit)"
        )
    return name


def check_version(version: str) -> str:
    """Versions end up in URLs and file names, like model names."""
    if not _VERSION_RE.fullmatch(version):
        raise ModelLoadError(f"invalid version {version!r}: use letters, digits, '.', '_', '+', '-' (at most 32)")
    return version
