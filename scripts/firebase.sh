#!/usr/bin/env bash
# The project's pinned Firebase CLI (scripts/firebase-cli, installed with `npm ci` on first use), run
# from the repository root with a Java >= 21 and the Google Cloud CLI's Firestore and Pub/Sub
# emulators, offline. Arguments pass through:
#   ./scripts/firebase.sh emulators:start --only functions,firestore,pubsub,auth --project demo-msr
#   ./scripts/firebase.sh deploy --only functions,firestore:rules,firestore:indexes --project <project-id>
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements-dev.txt
exec python -m devtools.firebase_cli "$@"
