"""Make a searched model a sample's quantized.pt (samples/README.md, "Searched quantization").

    python3 samples/adopt_search.py SAMPLE OUT_DIR      (OUT_DIR: one budget's, out/search/b3.0)

Reads OUT_DIR/SAMPLE/{sensitivity,gumbel,drift}.pt and their *_report.json (written by
samples/search.sh), picks the method whose result has the best validation accuracy after
fine-tuning (ties: fewer bits) from OUT_DIR/SAMPLE/search.json (the test split plays no
part in the choice), and writes it as samples/SAMPLE/quantized.pt with results.json updated:
its configuration, average bits, test accuracy (from its report) and where it came from.
The hand-set configuration's figures stay in results.json under "hand_set".
"""

import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    sample, out = sys.argv[1], sys.argv[2]
    folder = os.path.join(out, sample)
    with open(os.path.join(folder, "search.json")) as f:
        methods = json.load(f)["methods"]
    method = max(methods, key=lambda m: (methods[m]["final"]["accuracy"],
                                          -methods[m]["final"]["bits"]))
    with open(os.path.join(folder, f"{method}_report.json")) as f:
        report = json.load(f)
    path = os.path.join(HERE, sample, "results.json")
    with open(path) as f:
        results = json.load(f)
    if "hand_set" not in results:
        results["hand_set"] = {k: results[k] for k in ("quantized_before_finetune",
                                                        "quantized_accuracy", "average_bits",
                                                        "config")}
    final = methods[method]["final"]
    results.update({
        "quantized_accuracy": report["verify"]["source_accuracy"],
        "average_bits": round(report["totals"]["average_bits"], 4),
        "quantized_by": f"snnc search --method {method} --max-bits "
                        f"{methods[method]['max_bits']} (seed 0; validation accuracy "
                        f"{100 * final['accuracy']:.2f} % after fine-tuning)",
        "search_seconds": methods[method]["seconds"],
        "config": final["config"],
    })
    results.pop("quantized_before_finetune", None)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    shutil.copyfile(os.path.join(folder, f"{method}.pt"),
                    os.path.join(HERE, sample, "quantized.pt.tmp"))
    os.replace(os.path.join(HERE, sample, "quantized.pt.tmp"),
               os.path.join(HERE, sample, "quantized.pt"))
    os.replace(tmp, path)
    print(f"{sample}: quantized.pt is now the {method} search's model "
          f"({results['average_bits']:.2f} bits, test {100 * results['quantized_accuracy']:.2f} %)")


if __name__ == "__main__":
    main()
