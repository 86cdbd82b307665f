"""TLS termination with a given certificate, and HTTP/2 to clients, on a real gateway process.

HTTP/2 is checked with curl (Debian ``curl``, built with nghttp2): httpx's
httpcore offers ALPN "http/1.1" before "h2" and the gateway honours the
client's order, so httpx clients get HTTP/1.1 here.

The certificate chain (a test CA and a leaf for 127.0.0.1) is made here with
``cryptography``; the client trusts only that CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatewatch.commands import serve_command
from gatewatch.keys import add_key
from gatewatch.netutil import free_port, wait_for_port
from gatewatch.settings import GatewatchSettings


def make_chain(tmp: Path) -> tuple[Path, Path]:
    """(gateway PEM with key + leaf certificate, CA certificate PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatewatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = tmp / "gateway.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
                    + leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return pem, ca_pem


@pytest.fixture
def tls_gateway(settings: GatewatchSettings, sample_api: str, tmp_path: Path):
    pem, ca = make_chain(tmp_path)
    raw = add_key(tmp_path / "keys.toml", "key_tls", owner="tls")
    s = settings.model_copy(update={"upstream": sample_api, "listen_port": free_port(),
                                    "keys_file": tmp_path / "keys.toml", "admin_port": 0,
                                    "spool_dir": tmp_path / "spool", "tls_cert": pem})
    proc = subprocess.Popen(serve_command(s), env=os.environ | s.to_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(s.listen_host, s.listen_port, timeout_s=20)
        yield f"https://{s.listen_host}:{s.listen_port}", ca, raw
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert "not a leaf certificate" not in out


def test_tls_with_the_given_certificate(tls_gateway) -> None:
    base, ca, raw = tls_gateway
    with httpx.Client(verify=str(ca), http2=True) as client:
        health = client.get(f"{base}/health")
        assert health.status_code == 200 and health.http_version == "HTTP/1.1"
        denied = client.get(f"{base}/users/1")  # the policy runs behind TLS as in plain HTTP
        assert denied.status_code == 401 and denied.headers["x-request-id"]
        passed = client.get(f"{base}/users/1", headers={"X-API-Key": raw})
        assert passed.status_code == 401 and passed.json() == {"error": "login required"}  # the upstream's answer


def curl(*args: str) -> str:
    binary = shutil.which("curl")
    assert binary, "curl is not installed: apt-get install curl (make test does)"
    return subprocess.run([binary, "-s", *args], capture_output=True, text=True, timeout=30, check=True).stdout


def test_http2_to_clients(tls_gateway, tmp_path: Path) -> None:
    base, ca, raw = tls_gateway
    out = curl("--http2", "--cacert", str(ca), "-o", str(tmp_path / "body"), "-w", "%{http_version} %{http_code}",
               f"{base}/health")
    assert out == "2 200" and (tmp_path / "body").read_text().startswith('{"status"')
    denied = curl("--http2", "--cacert", str(ca), "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                  f"{base}/users/1")
    assert denied == "2 401"  # the policy runs on HTTP/2 streams too
    passed = curl("--http2", "--cacert", str(ca), "-H", f"X-API-Key: {raw}", "-w", " %{http_version} %{http_code}",
                  f"{base}/users/1")
    assert passed.endswith(" 2 401") and '"login required"' in passed  # the upstream's own answer


def test_clients_that_do_not_trust_the_ca_fail_the_handshake(tls_gateway) -> None:
    base, _, _ = tls_gateway
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", verify=True)
