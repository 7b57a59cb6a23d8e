#!/usr/bin/env bash
# Create .venv (if missing) and install Taskplane with its dev and test extras, pinned by
# requirements-dev.lock. Quiet and quick when nothing changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
cd "$ROOT"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
fi
stamp="$VENV/.taskplane-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q -c requirements-dev.lock -e '.[dev,test]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import taskplane, celery, flask, redis" # fail loudly if the install did not take
  touch "$stamp"
fi
