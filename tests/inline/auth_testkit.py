"""Helpers for the bearer-token tests: test keys made at test time, token signing
and forging, and the authorization server (``authserver.py``) as a real process.

Not a conftest; test modules import what they need (pytest puts this folder on
``sys.path``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gatewatch.commands import gateway_command
from gatewatch.netutil import free_port
from gatewatch.settings import GatewatchSettings, IntrospectionSettings, JwtSettings
from inline_testkit import gateway_env, listening_process

AUDIENCE = "https://api.gatewatch.test"
GATEWAY_CLIENT = ("gateway", "gateway-secret:with/odd chars+")   # exercises RFC 6749 §2.3.1 encoding
APP_CLIENT = ("app", "app-secret")


@dataclass(frozen=True)
class SigningKey:
    """A test signing key: ``kid``, default ``alg``, the private key and its public JWK."""

    kid: str
    alg: str
    private: Any
    public_jwk: dict

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwk(kid: str, public: Any, to_jwk, alg: str | None) -> dict:
    data = to_jwk(public, as_dict=True)
    data.update({"kid": kid, "use": "sig"})
    if alg:
        data["alg"] = alg
    return data


def rsa_key(kid: str, bits: int = 2048, declare_alg: bool = False) -> SigningKey:
    """An RSA key; its JWK has no ``alg`` member unless ``declare_alg`` (so RS256 and PS256 both fit)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid, "RS256", private,
                      _jwk(kid, private.public_key(), RSAAlgorithm.to_jwk, "RS256" if declare_alg else None))


def make_keys() -> dict[str, SigningKey]:
    """Fresh test keys: ``rsa`` (2048-bit, RS256/PS256), ``ec`` (P-256, ES256), ``ed`` (Ed25519, EdDSA)."""
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ed_private = ed25519.Ed25519PrivateKey.generate()
    return {
        "rsa": rsa_key(f"rsa-{uuid.uuid4().hex[:8]}"),
        "ec": SigningKey("ec-1", "ES256", ec_private, _jwk("ec-1", ec_private.public_key(), ECAlgorithm.to_jwk,
                                                           "ES256")),
        "ed": SigningKey("ed-1", "EdDSA", ed_private, _jwk("ed-1", ed_private.public_key(),
                                                           OKPAlgorithm.to_jwk, None)),
    }


def jwks_document(*keys: SigningKey) -> bytes:
    """The JWK Set of the public halves of ``keys``."""
    return json.dumps({"keys": [k.public_jwk for k in keys]}).encode()


def claims(issuer: str, **overrides: Any) -> dict:
    """Valid claims for ``issuer`` and :data:`AUDIENCE`, expiring in 5 minutes; ``None`` removes one."""
    now = int(time.time())
    data = {"iss": issuer, "aud": AUDIENCE, "sub": "user-alice", "iat": now, "nbf": now - 1,
            "exp": now + 300, "jti": uuid.uuid4().hex}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def sign(key: SigningKey, payload: dict, alg: str | None = None, **headers: Any) -> str:
    """``payload`` signed by ``key`` with ``alg`` (default the key's), ``kid`` in the header.

    Signs the JSON bytes as they are (PyJWS), so that tests can sign claims
    PyJWT's encoder would refuse (a numeric ``iss``, an infinite ``exp``)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return jwt.PyJWS().encode(body, key.private, algorithm=alg or key.alg,
                              headers={"typ": "JWT", "kid": key.kid, **headers})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict, payload: dict, signature: bytes = b"") -> str:
    """A JWS compact serialization put together by hand (for forgeries)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)])


def forge_hs256(key: SigningKey, payload: dict) -> str:
    """The RS256/HS256 confusion: HS256 with the RSA *public key* PEM as the HMAC secret."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(key.public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def unsigned(key: SigningKey, payload: dict, alg: str = "none") -> str:
    """An ``alg: none`` token (RFC 7519 §6: unsecured JWT), empty signature."""
    return compact({"alg": alg, "typ": "JWT", "kid": key.kid}, payload)


@dataclass
class AuthServer:
    """A running ``authserver.py``: its base URL, issuer and JWKS file."""

    base: str
    jwks_file: Path
    proc: subprocess.Popen

    @property
    def issuer(self) -> str:
        return self.base

    def publish(self, *keys: SigningKey) -> None:
        """Serve these public keys from now on (key rotation)."""
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_bytes(jwks_document(*keys))
        tmp.replace(self.jwks_file)

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.base}/admin/stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(f"{self.base}/admin/reset", timeout=5).raise_for_status()

    def faults(self, **faults: int) -> None:
        httpx.post(f"{self.base}/admin/faults", json=faults, timeout=5).raise_for_status()

    def issue(self, client: tuple[str, str] = APP_CLIENT, **fields: Any) -> str:
        """A new opaque access token (client credentials grant) shaped by ``fields``."""
        response = httpx.post(f"{self.base}/token", auth=client, timeout=5,
                              data={"grant_type": "client_credentials", **fields})
        response.raise_for_status()
        return response.json()["access_token"]

    def revoke(self, token: str, client: tuple[str, str] = APP_CLIENT) -> None:
        httpx.post(f"{self.base}/revoke", auth=client, data={"token": token}, timeout=5).raise_for_status()

    def jwt_settings(self, **overrides: Any) -> JwtSettings:
        return JwtSettings(**{"jwks_url": f"{self.base}/jwks", "issuer": self.issuer, "audience": [AUDIENCE],
                              **overrides})

    def introspection_settings(self, **overrides: Any) -> IntrospectionSettings:
        return IntrospectionSettings(**{"url": f"{self.base}/introspect", "client_id": GATEWAY_CLIENT[0],
                                        "client_secret": GATEWAY_CLIENT[1], **overrides})


@contextmanager
def auth_server(workdir: Path, *keys: SigningKey) -> Iterator[AuthServer]:
    """Start ``authserver.py`` on a free loopback port serving ``keys``; stop it afterwards.

    Fails (AssertionError with its output) if it does not listen within 15 s.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    jwks_file = workdir / "jwks.json"
    jwks_file.write_bytes(jwks_document(*keys))
    log = workdir / "authserver.log"
    script = Path(__file__).with_name("authserver.py")
    cmd = [sys.executable, str(script), "--port", str(port), "--jwks-file", str(jwks_file), "--issuer", base,
           "--client", ":".join(GATEWAY_CLIENT), "--client", ":".join(APP_CLIENT)]
    with listening_process(cmd, log, port, "authserver", timeout_s=15) as proc:
        yield AuthServer(base, jwks_file, proc)


@contextmanager
def logging_mitmdump(settings: GatewatchSettings, log_path: Path) -> Iterator[subprocess.Popen]:
    """The gateway as :func:`inline_testkit.mitmdump` starts it, but logging every line
    (``termlog_verbosity=debug``) so that tests can check the log for secrets.

    ``--quiet`` is dropped because mitmdump lets it override ``--set
    termlog_verbosity``; ``flow_detail=0`` keeps the per-flow dump off, as
    ``--quiet`` does.
    """
    cmd = [c for c in gateway_command(settings) if c != "--quiet"]
    cmd += ["--set", "termlog_verbosity=debug", "--set", "flow_detail=0"]
    with listening_process(cmd, log_path, settings.listen_port, "mitmdump", gateway_env(settings),
                           settings.listen_host) as proc:
        yield proc
