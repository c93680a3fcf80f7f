"""Firebase ID tokens for tests, as the emulators accept them: unsigned (``alg: none``).

firebase-admin, with ``FIREBASE_AUTH_EMULATOR_HOST`` set, checks such a token's claims (audience,
issuer, expiry, subject) but not its signature, and does not need the Auth emulator to be running;
the Firestore emulator's rules engine accepts them the same way.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from devtools.emulators import PROJECT


def unsigned_token(claims: dict[str, Any], project: str = PROJECT, expires_in_s: int = 3600) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    now = int(time.time())
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "iat": now,
        "exp": now + expires_in_s,
        "auth_time": now,
        "sub": claims["uid"],
        "user_id": claims["uid"],
        **{k: v for k, v in claims.items() if k != "uid"},
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."
