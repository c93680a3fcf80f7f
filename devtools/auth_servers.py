"""Local stand-ins for the two Google endpoints token verification calls, so production-mode
verification (``functions.id_tokens``) is tested over real sockets, misbehaviour included.

- ``CertificateServer``: Google's securetoken certificates, ``{kid: PEM}`` with Cache-Control.
- ``UsersServer``: Identity Toolkit's ``POST /v1/projects/{project}/accounts:lookup``, answering
  from a table of users (disabled, revoked at a second); an unknown user is not found.

Both switch ``mode`` at runtime: ``ok``; ``refuse`` (nothing listens on the port: connection
refused); ``hang`` (accepts, never answers); ``garbage`` (200 with a body that is not what was asked
for); ``error`` (503). Every request is counted, with its Authorization header.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devtools.tokens import SigningKey


class Mode(StrEnum):
    OK = "ok"
    REFUSE = "refuse"
    HANG = "hang"
    GARBAGE = "garbage"
    ERROR = "error"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    endpoint: _Endpoint


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length) if length else b"")

    def _answer(self, body: bytes = b"") -> None:
        endpoint = self.server.endpoint
        endpoint.requests.append((self.command, self.path, self.headers.get("Authorization")))
        if endpoint.mode is Mode.HANG:
            endpoint.released.wait(120)  # until the server stops
            return
        if endpoint.mode is Mode.ERROR:
            status, headers, payload = 503, {}, b'{"error": "unavailable"}'
        elif endpoint.mode is Mode.GARBAGE:
            status, headers, payload = 200, {"Cache-Control": "max-age=3600"}, b"<html>not this</html>"
        else:
            status, headers, payload = endpoint.answer(self.command, self.path, body)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Endpoint(ABC):
    """One local server on a fixed port, which ``refuse`` closes and any other mode reopens."""

    def __init__(self) -> None:
        self.mode = Mode.OK
        self.requests: list[tuple[str, str, str | None]] = []
        self.released = threading.Event()
        self._server: _Server | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @abstractmethod
    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The answer in mode ``ok``: (status, headers, body)."""

    def set_mode(self, mode: Mode | str) -> None:
        self.mode = Mode(mode)
        if self.mode is Mode.REFUSE:
            self._close()
        elif self._server is None:
            self._listen()

    def start(self) -> _Endpoint:
        self.released.clear()
        self._listen()
        return self

    def stop(self) -> None:
        self.released.set()
        self._close()

    def __enter__(self) -> _Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.endpoint = self
        self._server, self._port = server, server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class CertificateServer(_Endpoint):
    """Google's securetoken certificate list for ``keys``, kept for ``max_age_s`` (Cache-Control)."""

    def __init__(self, keys: list[SigningKey], max_age_s: int = 3600) -> None:
        super().__init__()
        self.keys, self.max_age_s = keys, max_age_s

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        document = {key.kid: key.certificate_pem for key in self.keys}
        cache_control = f"public, max-age={self.max_age_s}, must-revalidate, no-transform"
        return 200, {"Cache-Control": cache_control}, json.dumps(document).encode()


@dataclass
class User:
    disabled: bool = False
    valid_since: int | None = None  # epoch second of the last revocation


class UsersServer(_Endpoint):
    """``accounts:lookup`` of one project, from ``users``; ``url`` is the Identity Toolkit base
    (``EXEC_AUTH_USERS_URL``)."""

    def __init__(self, project: str) -> None:
        super().__init__()
        self.project = project
        self.users: dict[str, User] = {}

    @property
    def url(self) -> str:
        return f"{super().url}/v1"

    def lookups(self) -> int:
        return len(self.requests)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method != "POST" or path != f"/v1/projects/{self.project}/accounts:lookup":
            return 404, {}, b'{"error": {"code": 404, "message": "not found"}}'
        uids = json.loads(body or b"{}").get("localId") or []
        found = []
        for uid in uids:
            user = self.users.get(uid)
            if user is not None:
                record: dict[str, Any] = {"localId": uid, "disabled": user.disabled}
                if user.valid_since is not None:
                    record["validSince"] = str(user.valid_since)
                found.append(record)
        document: dict[str, Any] = {"kind": "identitytoolkit#GetAccountInfoResponse"}
        if found:
            document["users"] = found
        return 200, {}, json.dumps(document).encode()
