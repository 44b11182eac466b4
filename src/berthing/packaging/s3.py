"""`s3://bucket/key` as a model source: a .berth package or a tar.gz of a checkpoint, fetched once per ETag.

The object is downloaded into the cache (`<cache>/s3/<hash of bucket/key>/`) next to the ETag it had; a later
start (a Lambda cold start, a server restart) asks S3 for the ETag only and downloads again only when it changed.
Credentials come from boto3's standard chain (env, profile, instance or Lambda role); BERTHING_S3_ENDPOINT_URL
points at an S3-compatible store (MinIO, moto, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berthing.types import ModelLoadError

ENDPOINT_ENV = "BERTHING_S3_ENDPOINT_URL"
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHUNK = 8 * 1024 * 1024
_MAX_TAR_BYTES = 8 * 1024**3  # a tar.gz of a checkpoint may hold a large model; still bounded


@dataclass(frozen=True)
class S3Object:
    """Where a fetched object lies locally, and what S3 said of it."""

    url: str
    path: Path  # the downloaded object
    etag: str
    downloaded: bool  # False when the cached copy had the current ETag


def is_s3(source: str) -> bool:
    return source.startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); anything else is a clear error."""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ModelLoadError(f"{url!r} is not an S3 object: write s3://BUCKET/KEY (a .berth package or a .tar.gz checkpoint)")
    return bucket, key


def client() -> Any:
    """A boto3 S3 client: the standard credential chain, the endpoint override when set."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ModelLoadError("s3:// sources need boto3: pip install 'berthing[s3]' (AWS Lambda's Python runtime has it)") from exc
    endpoint = os.environ.get(ENDPOINT_ENV) or None
    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 3, "mode": "standard"}))


def _explain(exc: Exception, url: str, bucket: str, key: str) -> ModelLoadError:
    """botocore's errors as one sentence that says what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ModelLoadError(
            f"cannot read {url}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run with an instance or Lambda role)"
        )
    if isinstance(exc, EndpointConnectionError):
        return ModelLoadError(f"cannot read {url}: S3 endpoint unreachable ({exc}); check {ENDPOINT_ENV} and the network")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return ModelLoadError(f"cannot read {url}: bucket {bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ModelLoadError(f"cannot read {url}: no object {key!r} in bucket {bucket!r}")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return ModelLoadError(
                f"cannot read {url}: access denied ({code or status}); the credentials in use need s3:GetObject on "
                f"arn:aws:s3:::{bucket}/{key}"
            )
        return ModelLoadError(f"cannot read {url}: S3 answered {code or status}: {error.get('Message', exc)}")
    return ModelLoadError(f"cannot read {url}: {type(exc).__name__}: {exc}")


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None


def _bucket_exists(s3: Any, bucket: str) -> bool:
    """False only when S3 says the bucket is not there (a 403 means it exists, owned by someone else)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - any other failure: let the object's own error speak
        return _status(exc) != 404
    return True


def fetch(url: str, cache_dir: Path, progress: Callable[[str], None] | None = None) -> S3Object:
    """The object at `url` in the cache, downloaded only when its ETag differs from the cached copy's."""
    bucket, key = split_url(url)
    say = progress or (lambda _message: None)
    s3 = client()
    folder = cache_dir / "s3" / hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:32]
    meta_file = folder / "object.json"
    name = Path(key).name
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        etag = str(head.get("ETag", "")).strip('"')
        if head.get("ContentLength", 0) == 0:
            raise ModelLoadError(f"cannot read {url}: the object is empty")
        cached = json.loads(meta_file.read_text("utf-8")) if meta_file.is_file() else {}
        target = folder / name
        if cached.get("etag") == etag and target.is_file():
            return S3Object(url, target, etag, downloaded=False)
        say(f"downloading {url} ({head.get('ContentLength', 0) / 1e6:.1f} MB)")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            # IfMatch: the bytes we keep are the ones whose ETag we record, even if the object is replaced meanwhile
            body = s3.get_object(Bucket=bucket, Key=key, IfMatch=head.get("ETag"))["Body"]
            with tmp.open("wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every botocore failure becomes one clear sentence
        if _status(exc) == 404 and not _bucket_exists(s3, bucket):  # HEAD answers a bare 404 for both
            raise ModelLoadError(f"cannot read {url}: bucket {bucket!r} does not exist") from None
        raise _explain(exc, url, bucket, key) from None
    meta_file.write_text(json.dumps({"url": url, "etag": etag}), "utf-8")
    return S3Object(url, target, etag, downloaded=True)


def checkpoint_folder(obj: S3Object) -> Path:
    """A fetched tar(.gz) extracted next to it (once per ETag); the folder that holds config.json."""
    target = obj.path.parent / f"checkpoint-{obj.etag[:16]}"
    if not target.is_dir():
        for old in obj.path.parent.glob("checkpoint-*"):  # an older ETag's copy
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=obj.path.parent))
        try:
            with tarfile.open(obj.path) as tar:
                members = tar.getmembers()
                total = sum(m.size for m in members if m.isfile())
                if total > _MAX_TAR_BYTES:
                    limit = f"{_MAX_TAR_BYTES / 1e9:.0f} GB"
                    raise ModelLoadError(f"{obj.url} unpacks to {total / 1e9:.1f} GB, over the limit of {limit}")
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', links out of the folder, devices
            os.rename(tmp, target)
        except tarfile.FilterError as exc:  # a subclass of TarError: caught first, or its message is lost
            raise ModelLoadError(f"{obj.url} holds an unsafe entry: {exc}") from None
        except tarfile.TarError as exc:
            raise ModelLoadError(f"{obj.url} is not a readable tar archive: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    configs = sorted(target.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelLoadError(f"{obj.url} holds no config.json: a checkpoint tar.gz has the model folder's files")
    return configs[0].parent


def is_tar(key: str) -> bool:
    return key.lower().endswith(_TAR_SUFFIXES)
