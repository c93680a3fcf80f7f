#!/usr/bin/env bash
# Set up (first time) and start the local stack: Firestore + Pub/Sub emulators, the Alpaca
# simulator and every function of main.py on 127.0.0.1, seeded with a demo tenant. Needs the
# Google Cloud CLI (with the Firestore and Pub/Sub emulators) and Java.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements-dev.txt
exec python -m devtools.local_stack "$@"
