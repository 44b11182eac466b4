"""moto's standalone S3-compatible server for the tests that talk to S3 (tests/integration/test_s3.py, and
`berthing predict --ray` in tests/cluster/test_ray_data_s3.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from berthing.packaging.s3 import ENDPOINT_ENV
from tests.support.http import free_port


class MotoServer:
    """moto's standalone S3-compatible server as a child process on a free loopback port."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def client(self, key: str = "testing", secret: str = "testing"):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def env(self) -> dict[str, str]:
        """The variables that point the standard credential chain and berthing's s3:// access at this server."""
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                ENDPOINT_ENV: self.url}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
