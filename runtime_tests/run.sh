#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the default suite
# (benchmarks are marked slow and excluded; run them with: python3 -m pytest -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
exec "${PYTHON:-python3}" -m pytest -q runtime_tests "$@"
