"""Firebase ID tokens for tests: unsigned ones as the emulators accept them (``alg: none``), and
RS256 ones signed with a local key, as Google signs them, for production-mode verification against
a local certificate server (``devtools/auth_servers.py``).

In emulator mode (``FIREBASE_AUTH_EMULATOR_HOST`` set) ``functions.id_tokens`` checks an unsigned
token's claims (audience, issuer, times, subject) but not its signature, and needs no Auth emulator;
the Firestore emulator's rules engine accepts such tokens the same way.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from devtools.emulators import PROJECT


def _part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def token_claims(claims: dict[str, Any], project: str = PROJECT, expires_in_s: int = 3600) -> dict[str, Any]:
    """A Firebase ID token's payload for ``claims`` (``uid`` and custom claims), issued now."""
    now = int(time.time())
    return {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "iat": now,
        "exp": now + expires_in_s,
        "auth_time": now,
        "sub": claims["uid"],
        "user_id": claims["uid"],
        **{k: v for k, v in claims.items() if k != "uid"},
    }


def unsigned_token(claims: dict[str, Any], project: str = PROJECT, expires_in_s: int = 3600) -> str:
    payload = token_claims(claims, project, expires_in_s)
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(payload)}."


@dataclass(frozen=True)
class SigningKey:
    """An RSA key and its self-signed certificate, as Google publishes its securetoken keys."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate_pem: str

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256())
        )
        return cls(kid, key, certificate.public_bytes(serialization.Encoding.PEM).decode())

    def sign(self, signed: bytes) -> bytes:
        return self.private_key.sign(signed, padding.PKCS1v15(), hashes.SHA256())


def signed_token(
    claims: dict[str, Any],
    key: SigningKey,
    project: str = PROJECT,
    expires_in_s: int = 3600,
    *,
    payload: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
) -> str:
    """An RS256 token signed by ``key``; ``payload`` and ``header`` override (or, with None values,
    remove) fields, to make the tokens an attacker or a broken client would send."""
    body = {**token_claims(claims, project, expires_in_s), **(payload or {})}
    head = {"alg": "RS256", "kid": key.kid, "typ": "JWT", **(header or {})}
    body = {k: v for k, v in body.items() if v is not None}
    head = {k: v for k, v in head.items() if v is not None}
    signed = f"{_part(head)}.{_part(body)}"
    return f"{signed}.{base64.urlsafe_b64encode(key.sign(signed.encode())).decode().rstrip('=')}"
