#!/usr/bin/env bash
# The test command: installs what the tests need (.ci/install.sh, at the versions pinned in
# .ci/constraints.txt), then runs the suite. Benchmarks are not tests: they are scripts run
# by hand, e.g. python3 runtime_tests/benchmarks/bench_spine.py (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
exec "${PYTHON:-python3}" -m pytest -q --durations=20 runtime_tests "$@"
