#!/usr/bin/env bash
# The main job on the bundled sample: install, generate the sample model, compile it with
# snnc, and compare ONNX Runtime with PyTorch. Outputs go to out/sample/ (or $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install.sh
PY=${PYTHON:-python3}
OUT=${OUT:-out/sample}
mkdir -p "$OUT"
"$PY" samples/spikformer_cifar10/make_model.py -o "$OUT/model.pt"
"$PY" -m snnc compile "$OUT/model.pt" -o "$OUT/model.onnx" --dump-ir "$OUT/ir"
"$PY" samples/spikformer_cifar10/check.py "$OUT/model.pt" "$OUT/model.onnx"
