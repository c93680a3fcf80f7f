#!/usr/bin/env bash
# Set up (first time) and run the whole test suite: lint, format check, then pytest.
# pytest exits non-zero when it collects no test, so an empty run cannot pass.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements-dev.txt
ruff check .
ruff format --check .
python -m pytest "$@"
