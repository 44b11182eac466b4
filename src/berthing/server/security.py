"""Management API safety (after TorchServe's ShellTorch, CVE-2023-43654): loopback by default, bearer tokens,
and model sources limited to the model store or an explicit allow-list."""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path

from berthing.config import Settings
from berthing.types import BadRequest, BerthingError

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class Unauthorized(BerthingError):
    code = 401
    type = "Unauthorized"


class Forbidden(BerthingError):
    code = 403
    type = "Forbidden"


def is_loopback(host: str) -> bool:
    """Only loopback addresses count; 0.0.0.0 and :: listen on every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse at start a management API open to the network without a token."""
    if not settings.management_auth and not is_loopback(settings.management_host):
        raise BerthingError(
            f"refusing to serve the management API on {settings.management_host} without a token: "
            "management_auth=false is allowed only on a loopback address (127.0.0.1, ::1, localhost)"
        )


def prepare_token(settings: Settings) -> str | None:
    """The management token (given, or random), written to a 0600 key file so local tools can read it."""
    if not settings.management_auth:
        return None
    token = settings.management_token or secrets.token_urlsafe(24)
    path = settings.management_token_file or (settings.model_store or settings.cache_dir) / "key_file.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"management": {"key": token}, "inference": {"key": settings.inference_token}}, handle)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
    return token


def check_token(header: str | None, token: str | None, what: str) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` (compared in constant time)."""
    if token is None:
        return
    if not header or not header.startswith("Bearer "):
        raise Unauthorized(f"the {what} API needs the header 'Authorization: Bearer <token>' (see the key file)")
    if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        raise Unauthorized(f"wrong token for the {what} API")


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _allowed(url: str, prefix: str) -> bool:
    """A path prefix allows what resolves under it (no '..' or link escapes); other prefixes match as text, no '..'."""
    if prefix.startswith(("/", "file://")):
        path = url.removeprefix("file://")
        return path.startswith("/") and _inside(Path(path).resolve(), Path(prefix.removeprefix("file://")).resolve())
    return bool(prefix) and url.startswith(prefix) and ".." not in url.split("/")


def check_source(url: str, store: Path | None, allowed: list[str]) -> str:
    """What sources.resolve may open for `url`: a path inside the store, or a source on the allow-list."""
    if not url:
        raise BadRequest("parameter 'url' is required: a package or folder in the model store")
    try:
        return _check_source(url, store, allowed)
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, a link loop: not the server's fault
        raise BadRequest(f"source {url!r} is not a path that can be opened: {getattr(exc, 'strerror', None) or exc}") from None


def _check_source(url: str, store: Path | None, allowed: list[str]) -> str:
    if any(_allowed(url, prefix) for prefix in allowed):
        return url.removeprefix("file://")
    if _SCHEME_RE.match(url):
        raise Forbidden(f"source {url!r} is not allowed: only the model store, or a prefix on allowed_sources")
    if store is None:
        raise Forbidden(f"source {url!r} is not allowed: no model store is configured (--model-store)")
    root = store.resolve()
    given = Path(url)
    if given.is_absolute() and not _inside(Path(os.path.normpath(given)), root):
        raise Forbidden(f"source {url!r} is outside the model store {root}")
    candidate = (root / given).resolve()
    if not _inside(candidate, root):
        raise Forbidden(f"source {url!r} resolves to {candidate}, outside the model store {root}")
    if not candidate.exists():
        raise BadRequest(f"source {url!r} not found in the model store {root}")
    if candidate.is_dir():
        for item in candidate.rglob("*"):
            if not _inside(item.resolve(), root):
                raise Forbidden(f"source {url!r} holds {item.relative_to(candidate)}, a link outside the model store {root}")
    return str(candidate)
