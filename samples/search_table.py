"""Print the table of samples/README.md from the outputs of samples/search.sh.

    python3 samples/search_table.py OUT_DIR

Per budget (OUT_DIR/b<BITS>/), sample and method: average bits, compression of the pack against float32, test accuracy
(PyTorch, quantized) against the float model's (the sample's results.json), compiled top-1
agreement with the quantized source on the test split, and the search's time: choosing the
configuration, and in all with the fine-tuning (QAT) every method does alike.
"""

import json
import math
import os
import sys

from accuracy_table import print_table  # samples/ is this script's directory

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "out/search"
    head = ["sample", "method", "budget", "avg bits", "pack vs float32", "test acc",
            "float test acc", "vs float", "agreement", "search time", "with QAT"]
    rows = []
    budgets = sorted((d for d in os.listdir(out) if d.startswith("b")) if os.path.isdir(out)
                     else [], key=lambda d: -float(d[1:]))
    for sample in sorted({s for b in budgets for s in os.listdir(os.path.join(out, b))}):
        results = os.path.join(HERE, sample, "results.json")
        if not os.path.isfile(results):
            continue
        with open(results) as f:
            float_accuracy = json.load(f)["float_accuracy"]
        for budget in budgets:
            folder = os.path.join(out, budget, sample)
            search = os.path.join(folder, "search.json")
            seconds = {}
            if os.path.isfile(search):
                with open(search) as f:
                    seconds = {m: (e.get("search_seconds"), e.get("seconds"))
                               for m, e in json.load(f)["methods"].items()}
            for method in ("sensitivity", "gumbel", "drift"):
                path = os.path.join(folder, f"{method}_report.json")
                if not os.path.isfile(path):
                    continue
                with open(path) as f:
                    report = json.load(f)
                v, t = report["verify"], report["totals"]
                rows.append([sample, method, budget[1:], f"{t['average_bits']:.2f}",
                             f"{t['float32_bytes'] / t['packed_bytes']:.1f}x "
                             f"({t['packed_bytes'] / 1024:.1f} / "
                             f"{t['float32_bytes'] / 1024:.1f} KiB)",
                             f"{100 * v['source_accuracy']:.2f} %",
                             f"{100 * float_accuracy:.2f} %",
                             f"{100 * (v['source_accuracy'] - float_accuracy):+.2f}",
                             f"{100 * v['top1_agreement']:.2f} %",
                             *(f"{s or math.nan:.0f} s" for s in seconds.get(method, (None, None)))])
    if not rows:
        sys.exit(f"no search results under {out}: run bash samples/search.sh first")
    print_table(head, rows)


if __name__ == "__main__":
    main()
