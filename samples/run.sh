#!/usr/bin/env bash
# The main job on the bundled samples trained on real data (scikit-learn's digits, static and
# emulated events): install, compile the float and the quantized model of each with snnc
# (ONNX, .ort for ONNX Runtime Mobile, .snnpack), verify both against their PyTorch source on
# the test split, write the per-layer reports, and print the accuracy table.
# Outputs go to out/samples/<sample>/ (or $OUT/<sample>/).
# pip's own lines go to $OUT/install.log (named on the screen), not between snnc's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/samples}
mkdir -p "$OUT"
echo "== installing snnc and what it needs (pip's output: $OUT/install.log)"
if ! bash .ci/install.sh > "$OUT/install.log" 2>&1; then
  tail -n 20 "$OUT/install.log"
  echo "install failed: the whole log is $OUT/install.log" >&2
  exit 1
fi
for s in digits digits_events; do
  mkdir -p "$OUT/$s"
  echo "== $s: float.pt"
  "$PY" -m snnc compile "samples/$s/float.pt" -o "$OUT/$s/float.onnx" -q \
    --verify "samples/$s/test.npz" --report "$OUT/$s/float_report.json"
  echo "== $s: quantized.pt"
  "$PY" -m snnc compile "samples/$s/quantized.pt" -o "$OUT/$s/model.onnx" \
    --pack "$OUT/$s/model.snnpack" --ort \
    --verify "samples/$s/test.npz" --report "$OUT/$s/report.json"
done
echo
"$PY" samples/accuracy_table.py "$OUT"
