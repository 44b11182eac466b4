"""HTTPS with --ssl-certfile/--ssl-keyfile: a certificate made here, a real `berthing serve`, clients that verify it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import cli_server


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "berthing test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_inference_and_management_over_https(tiny_model_dir, settings, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    args = [f"sentiment={tiny_model_dir('classify')}", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--cache-dir", str(settings.cache_dir)]
    with cli_server(args, env={"BERTHING_MANAGEMENT_TOKEN": "m4nage"}) as (proc, url):
        assert url.startswith("https://127.0.0.1:")
        answer = httpx.post(f"{url}/predictions/sentiment", json={"input": "hi"}, verify=trusted)
        assert answer.status_code == 200 and answer.json()["label"] in ("negative", "neutral", "positive")
        management = re.search(r"management API at (https://127\.0\.0\.1:\d+)", proc.startup_output).group(1)
        models = httpx.get(f"{management}/models", headers={"Authorization": "Bearer m4nage"}, verify=trusted)
        assert models.status_code == 200 and models.json()["models"][0]["modelName"] == "sentiment"
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate refuses the server
            httpx.get(f"{url}/ping")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port gets no answer
            httpx.get(url.replace("https://", "http://") + "/ping")
        assert httpx.get(f"{url}/ping", verify=trusted).status_code == 200


def test_a_key_without_a_certificate_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from berthing.config import Settings

    _, key = _certificate(tmp_path)
    with pytest.raises(ValidationError, match="needs both ssl_certfile and ssl_keyfile"):
        Settings(ssl_keyfile=key)
    with pytest.raises(ValidationError, match="is not a file"):
        Settings(ssl_keyfile=key, ssl_certfile=tmp_path / "missing.pem")
