"""Deployed functions served for tests, one per process, by functions-framework on 127.0.0.1 —
the same server Cloud Functions runs them in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.emulators import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]


class ServedFunction:
    def __init__(self, target: str, env: dict[str, str], signature_type: str = "http") -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.signature_type = signature_type
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"function-{target}-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "functions_framework", "--target", self.target,
            "--source", str(ROOT / "main.py"), "--signature-type", self.signature_type,
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.target} exited: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                with urllib.request.urlopen(f"{self.url}/", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.target} did not start in {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process_group(self._process)
        self._process = None
