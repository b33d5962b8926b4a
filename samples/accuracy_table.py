"""Print the accuracy table of the samples compiled by samples/run.sh.

    python3 samples/accuracy_table.py OUT_DIR

Reads OUT_DIR/<sample>/float_report.json and report.json (snnc compile --verify --report of
float.pt and quantized.pt) and prints, per sample, accuracy on the test split in PyTorch and
in ONNX Runtime, top-1 agreement, whether the .ort equals the .onnx, bits and sizes.
"""

import json
import os
import sys


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "out/samples"
    rows = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "report.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            quantized = json.load(f)
        with open(os.path.join(out, name, "float_report.json")) as f:
            float_ = json.load(f)
        q, fl, t = quantized["verify"], float_["verify"], quantized["totals"]
        ort = q.get("ort_max_abs_diff")
        rows.append([name, str(q["n"]), f"{100 * fl['source_accuracy']:.2f}",
                     f"{100 * fl['compiled_accuracy']:.2f}",
                     f"{100 * q['source_accuracy']:.2f}", f"{100 * q['compiled_accuracy']:.2f}",
                     f"{100 * q['top1_agreement']:.2f} %",
                     "-" if ort is None else ("identical" if ort == 0 else f"{ort:.2g}"),
                     f"{t['average_bits']:.2f}",
                     f"{t['packed_bytes'] / 1024:.1f} / {t['float32_bytes'] / 1024:.1f} KiB"])
    if not rows:
        sys.exit(f"no samples compiled under {out}: run bash samples/run.sh first")
    head = ["sample", "test n", "float PyTorch %", "float ORT %", "quantized PyTorch %",
            "quantized ORT %", "top-1 agreement", ".ort vs .onnx", "avg bits",
            "packed / float32"]
    print_table(head, rows)


def print_table(head: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell (samples/search_table.py prints with it too)."""
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
