#!/usr/bin/env bash
# Mutation testing of the critical modules (mutmut 3), run by hand; see "Testing" in README.md.
#   scripts/mutation.sh                 # every module (long: an hour or more on 2 cores)
#   scripts/mutation.sh auth timeline   # some modules (paths or short names)
#   scripts/mutation.sh --report-only auth   # the last run's survivors again
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${ENFOADS_VENV:-.venv}/bin/python" scripts/mutation.py "$@"
