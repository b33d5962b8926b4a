#!/usr/bin/env bash
# snnc search on the trained samples: both methods (sensitivity, gumbel) at --max-bits 3.0 on
# each sample's float.pt (train.npz / val.npz), then each fine-tuned result compiled with
# --pack --verify test.npz --report, and the table of samples/README.md printed.
# Outputs go to out/search/<sample>/ (or $OUT/<sample>/). About 10 minutes on 2 cores.
# Needs snnc installed (bash .ci/install.sh, as samples/run.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/search}
BITS=${BITS:-3.0}
for s in ${SAMPLES:-digits digits_events}; do
  mkdir -p "$OUT/$s"
  for m in ${METHODS:-sensitivity gumbel}; do
    echo "== $s: snnc search --method $m --max-bits $BITS"
    "$PY" -m snnc search "samples/$s/float.pt" \
      --train "samples/$s/train.npz" --val "samples/$s/val.npz" --method "$m" \
      --max-bits "$BITS" -o "$OUT/$s/$m.json" --quantized "$OUT/$s/$m.pt" \
      --report "$OUT/$s/search.png"
    "$PY" -m snnc compile "$OUT/$s/$m.pt" -o "$OUT/$s/$m.onnx" --pack "$OUT/$s/$m.snnpack" \
      --verify "samples/$s/test.npz" --report "$OUT/$s/${m}_report.json" -q
  done
done
"$PY" samples/search_table.py "$OUT"
