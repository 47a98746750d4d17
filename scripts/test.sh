#!/usr/bin/env bash
# Install everything the tests need (venv in .venv, Debian test tools), then run the test suite,
# then the Colab notebook headless in its CI mode (nbmake: smoke models, one request per family).
# Extra arguments go to pytest and skip the notebook run, e.g. `scripts/test.sh -k jobs`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
export HF_HUB_OFFLINE=1
set +e
"${ENFOADS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
if [ "$rc" -ne 0 ] || [ "$#" -gt 0 ]; then exit "$rc"; fi
set +e
"${ENFOADS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=600 notebooks/
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no notebook was collected" >&2; exit 1; fi
exit "$rc"
