#!/usr/bin/env bash
# Install snnc and what it needs on these machines (idempotent), at the versions the suite
# is tested with (.ci/constraints.txt, passed to every pip install). docs/install.md says
# why each step looks the way it does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=.ci/constraints.txt
pip_q() { "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }
# torch first: 2.13.0 is a local CPU wheel; any other spec pulls a multi-GB CUDA build.
"$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip_q torch==2.13.0
pip_q -e ".[test]"
# spikingjelly declares torchvision/torchaudio, which have no CPU build here: --no-deps,
# then what it imports at run time.
"$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('spikingjelly') != '2.0.0')" \
  2>/dev/null || pip_q --no-deps spikingjelly==2.0.0
pip_q loguru h5py
# The NIR tests' frameworks (test only, never runtime dependencies): snnTorch and Norse export
# the networks test_nir_frameworks.py compares against. norse declares torchvision (no CPU
# build here) and none of the three needs more than torch, nir and numpy: --no-deps.
"$PY" -c "import importlib.metadata as m, sys; sys.exit(any(m.version(p) != v for p, v in
  (('snntorch', '1.0.0'), ('nirtorch', '2.6'), ('norse', '1.1.0'))))" 2>/dev/null \
  || pip_q --no-deps snntorch==1.0.0 nirtorch==2.6 norse==1.1.0
