"""s3:// for `berthing predict --ray`: one pyarrow S3FileSystem, configured as every other berthing s3:// access is.

Left to itself, Ray Data builds a filesystem from the URL, which knows nothing of BERTHING_S3_ENDPOINT_URL. This one
points at that endpoint when it is set (http or https as its URL says), takes its region from AWS_REGION or
AWS_DEFAULT_REGION (else, on AWS, the bucket's own), and its credentials from boto3's standard chain on the driver, as
berthing.packaging.s3 does. It pickles with all of that and travels with the read and write tasks to every node, so
a node needs neither the variables nor the keys. Roles a node has itself (an instance profile, an ECS task role, a
web identity) are not copied: each node's own chain renews them, where a copy from the driver would expire.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from berthing.packaging.s3 import ENDPOINT_ENV, is_s3
from berthing.types import BerthingError

ROLE_METHODS = frozenset({"iam-role", "container-role", "assume-role-with-web-identity"})  # botocore's names for them


def resolve(url: str) -> tuple[Any, str]:
    """(filesystem, path as it takes it: bucket/key, no scheme) for an s3:// URL; (None, url) for anything else,
    which Ray resolves itself."""
    if not is_s3(url):
        return None, url
    path = url.removeprefix("s3://").rstrip("/")
    return s3_filesystem(path.partition("/")[0]), path


def s3_filesystem(bucket: str) -> Any:
    """pyarrow's S3FileSystem for `bucket`: endpoint, region and credentials as the module's docstring says."""
    from pyarrow import fs

    endpoint = os.environ.get(ENDPOINT_ENV) or None
    options: dict[str, Any] = credentials()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint and bucket:
        try:
            region = fs.resolve_s3_region(bucket)  # what Ray's own s3:// resolution does
        except OSError:
            region = None  # the first request says what is wrong, with the bucket's name
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)


def credentials() -> dict[str, str]:
    """The driver's keys as S3FileSystem takes them: from boto3's chain (variables, AWS_PROFILE, ~/.aws, SSO, ...) when
    boto3 is installed, else the AWS_* variables; none for a role a node has itself, or when there are none."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
    except ImportError:
        key, secret, token = (os.environ.get(f"AWS_{name}") for name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN"))
        found = {"access_key": key, "secret_key": secret, "session_token": token} if key and secret else {}
        return {name: value for name, value in found.items() if value}
    try:
        chain = boto3.Session().get_credentials()
        if chain is None or chain.method in ROLE_METHODS:
            return {}
        frozen = chain.get_frozen_credentials()
    except BotoCoreError as exc:  # a profile that is not there, an SSO session that expired, ...
        raise BerthingError(f"AWS credentials for s3://: {exc}") from None
    found = {"access_key": frozen.access_key, "secret_key": frozen.secret_key}
    return {**found, "session_token": frozen.token} if frozen.token else found


def listing(filesystem: Any, path: str, url: str) -> list[str] | None:
    """The names at `path`: the object's own, or those directly under the prefix; None when there is neither."""
    from pyarrow import fs

    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            return None
        if info.type == fs.FileType.File:
            return [PurePosixPath(path).name]
        return sorted(PurePosixPath(entry.path).name for entry in filesystem.get_file_info(fs.FileSelector(path)))
    except OSError as exc:  # access denied, no such bucket, endpoint unreachable: pyarrow's message names them
        raise BerthingError(f"cannot read {url}: {exc}") from None
