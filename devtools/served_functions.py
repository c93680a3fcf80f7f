"""Deployed functions served for tests, one per process, by functions-framework on 127.0.0.1 —
the same server Cloud Functions runs them in.

A function is served with the environment it has once deployed: plain variables (what ``.env``
gives every function: emulator hosts, the project, ``EXEC_*``, URL overrides) and only the secrets
its entry in the deploy manifest declares. Serving every function with every secret hides a
function whose manifest lacks one (it works here and fails in deployment).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from devtools.emulators import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]

BUILD_MANIFEST = """
from firebase_functions.private.serving import functions_as_yaml, get_functions
print(functions_as_yaml(get_functions()))
"""


@cache
def _manifest_text() -> str:
    # A fresh interpreter in the source folder, as the CLI's discovery does (params are global).
    return subprocess.run(
        [sys.executable, "-c", BUILD_MANIFEST], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=120,
    ).stdout  # fmt: skip


def deploy_manifest() -> dict[str, Any]:
    """The manifest ``firebase deploy`` reads from main.py, built offline (a fresh copy per call)."""
    return yaml.safe_load(_manifest_text())  # type: ignore[no-any-return]


@cache
def manifest_secrets() -> dict[str, frozenset[str]]:
    """The secret names each function declares (``secretEnvironmentVariables``)."""
    return {
        name: frozenset(secret["key"] for secret in endpoint.get("secretEnvironmentVariables") or [])
        for name, endpoint in deploy_manifest()["endpoints"].items()
    }


def all_secret_names() -> frozenset[str]:
    return frozenset().union(*manifest_secrets().values())


class ServedFunction:
    def __init__(self, target: str, env: dict[str, str], signature_type: str = "http") -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.signature_type = signature_type
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"function-{target}-{self.port}.log"
        self.process_env: dict[str, str] | None = None  # what the process was started with
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_manifest(
        cls, target: str, env: Mapping[str, str], secrets: Mapping[str, str], signature_type: str = "http"
    ) -> ServedFunction:
        """``target`` as deployed: the plain ``env`` and, of ``secrets``, only those its manifest
        entry declares. A declared secret must be given; a secret passed as plain env is refused."""
        declared = manifest_secrets()[target]
        smuggled = all_secret_names() & env.keys()
        if smuggled:
            raise ValueError(f"{sorted(smuggled)} are secrets: pass them as secrets, not plain env")
        missing = declared - secrets.keys()
        if missing:
            raise ValueError(f"{target} declares the secrets {sorted(missing)}: give them a value")
        return cls(target, {**env, **{name: secrets[name] for name in declared}}, signature_type)

    def environment(self) -> dict[str, str]:
        """The process environment: this process's own, without any secret of the manifest (a
        secret set here must not reach a function that does not declare it), then ``env``."""
        withheld = all_secret_names()
        inherited = {name: value for name, value in os.environ.items() if name not in withheld}
        return {**inherited, **self.env}

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "functions_framework", "--target", self.target,
            "--source", str(ROOT / "main.py"), "--signature-type", self.signature_type,
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.process_env = self.environment()
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command, cwd=ROOT, env=self.process_env, stdout=log, stderr=subprocess.STDOUT,
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
