"""Google's Firestore emulator for the tests: started on a free 127.0.0.1 port in its own process
group (stopping the gcloud wrapper alone would leave the Java child holding the port), wiped
between tests, stopped at the end.

Where the emulator is not installed the Firestore tests skip and say so; with
``MSR_REQUIRE_EMULATORS=1`` (set by .ci/run on machines that have it) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT = "demo-test"
REQUIRE_ENV = "MSR_REQUIRE_EMULATORS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulators_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing_reason() -> str | None:
    if shutil.which("gcloud") is None:
        return "gcloud (Google Cloud CLI with the Firestore emulator) is not installed"
    if shutil.which("java") is None:
        return "java (needed by the Firestore emulator) is not installed"
    return None


def stop_process_group(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process started with ``start_new_session``, children included (the gcloud wrapper
    alone would leave the Java emulator holding its port)."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


class _Emulator:
    name = "emulator"

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{self.name}-emulator-{self.port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Start in a new process group; ready when ``GET /`` answers ``Ok``."""
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} emulator exited: {self._log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
                    if response.read().strip() == b"Ok":
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} emulator not ready after {timeout}s: {self._log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        stop_process_group(self._process)
        self._process = None


class FirestoreEmulator(_Emulator):
    name = "firestore"

    def __init__(self, rules: Path | None = None) -> None:
        super().__init__()
        self.rules = rules

    def command(self) -> list[str]:
        command = ["gcloud", "emulators", "firestore", "start", f"--host-port={self.host}"]
        return [*command, f"--rules={self.rules}"] if self.rules is not None else command

    def wipe(self) -> None:
        request = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents",
            method="DELETE",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


class PubSubEmulator(_Emulator):
    """Google's Pub/Sub emulator. It has no reset: tests use their own subscription names."""

    name = "pubsub"

    def command(self) -> list[str]:
        return [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port={self.host}",
            f"--project={PROJECT}",
        ]
