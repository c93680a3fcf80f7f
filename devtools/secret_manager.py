"""A local Secret Manager for the Firebase CLI's functions emulator: it answers
``GET /v1/projects/P/secrets/NAME/versions/latest:access`` from a dict.

The emulator resolves, per function, only the secrets that function's manifest declares — from
``.secret.local`` if present (which hands every secret in it to every function), otherwise from
Secret Manager at ``CLOUD_SECRET_MANAGER_URL`` (a plain-http URL needs no login). Pointed here, each
function gets exactly its declared secrets, as deployed; the names asked for are recorded.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ACCESS = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/secrets/(?P<name>[^/]+)/versions/(?P<version>[^/:]+):access$"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    secrets: Mapping[str, str]
    asked: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        match = _ACCESS.match(self.path.split("?", 1)[0])
        name = match["name"] if match else None
        if name is not None:
            self.server.asked.append(name)
        if name is None or name not in self.server.secrets:
            self._answer(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": f"no secret {name}"}})
            return
        data = base64.b64encode(self.server.secrets[name].encode()).decode()
        version = f"projects/{match['project']}/secrets/{name}/versions/1" if match else ""
        self._answer(200, {"name": version, "payload": {"data": data}})

    def _answer(self, status: int, body: Mapping[str, object]) -> None:
        encoded = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def secret_manager(secrets: Mapping[str, str]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``secrets`` on a free 127.0.0.1 port; yields the URL and the list of names asked for."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.secrets, server.asked = dict(secrets), []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.asked
    finally:
        server.shutdown()
        server.server_close()
