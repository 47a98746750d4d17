#!/usr/bin/env bash
# Install (first run) and start the server. Arguments go to `python -m backend`, e.g. `--public`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${ENFOADS_VENV:-.venv}/bin/python" -m backend "$@"
