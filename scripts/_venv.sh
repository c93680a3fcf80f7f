# Sourced by the scripts here: create (once) and activate the project's virtualenv in .venv (and
# link venv to it, the name the Firebase CLI looks for),
# install the requirements file given as $1, then the project itself (editable), which puts the
# `msr` command on the venv's PATH. Needs only python3 (3.11+) and a package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11+ is required (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The Firebase CLI runs main.py in a virtualenv named `venv` next to it: the same one, linked.
if [ ! -e venv ] && [ ! -L venv ]; then
  ln -s .venv venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r "$1"
# The editable install follows code changes by itself; only pyproject.toml (the console script,
# the packages) needs it redone, and redoing it costs a build (seconds), so reruns skip it.
if [ ! -x .venv/bin/msr ] || [ pyproject.toml -nt .venv/bin/msr ]; then
  python -m pip install --quiet --disable-pip-version-check --no-deps --editable .
fi
