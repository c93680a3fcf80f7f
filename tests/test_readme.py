"""The README's API example runs as written and says what the README says it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its API example"
    monkeypatch.chdir(tmp_path)
    for name in ("EXEC_SQLITE_PATH", "EXEC_STORE", "FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.status == "downgraded"  # type: ignore[attr-defined]
    assert result.routing.reason == "Spread 0.20% exceeds threshold 0.10%"  # type: ignore[attr-defined]
    assert (tmp_path / ".msr" / "ledger.sqlite3").exists()
