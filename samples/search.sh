#!/usr/bin/env bash
# snnc search on the trained samples: every method (sensitivity, gumbel, drift) at each
# budget (--max-bits 3.0, 2.0, 1.5) on each sample's float.pt (train.npz / val.npz), then
# each fine-tuned result compiled with --pack --verify test.npz --report, and the table of
# samples/README.md printed. Outputs go to out/search/b<BITS>/<sample>/ (or $OUT/...).
# About 45 minutes on 2 cores (BUDGETS, METHODS and SAMPLES choose a part of it).
# Needs snnc installed (bash .ci/install.sh, as samples/run.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/search}
for b in ${BUDGETS:-3.0 2.0 1.5}; do
  for s in ${SAMPLES:-digits digits_events}; do
    d="$OUT/b$b/$s"
    mkdir -p "$d"
    for m in ${METHODS:-sensitivity gumbel drift}; do
      echo "== $s: snnc search --method $m --max-bits $b"
      "$PY" -m snnc search "samples/$s/float.pt" \
        --train "samples/$s/train.npz" --val "samples/$s/val.npz" --method "$m" \
        --max-bits "$b" -o "$d/$m.json" --quantized "$d/$m.pt" --report "$d/search.png" -q
      "$PY" -m snnc compile "$d/$m.pt" -o "$d/$m.onnx" --pack "$d/$m.snnpack" \
        --verify "samples/$s/test.npz" --report "$d/${m}_report.json" -q
    done
  done
done
"$PY" samples/search_table.py "$OUT"
