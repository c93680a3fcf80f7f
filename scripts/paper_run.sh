#!/usr/bin/env bash
# Set up (first time) and run the local paper run on the real quote tapes. Options pass through:
#   ./scripts/paper_run.sh --max-spread FOREX=0.0002 --strategy multi_asset
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements.txt
exec msr paper-run "$@"
