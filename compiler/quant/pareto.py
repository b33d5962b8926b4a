"""snnc search --report: every configuration a search evaluated, as JSON and one PNG with
validation accuracy against average bits and against estimated energy, each method's
Pareto frontier and its chosen point (a ring; a star after fine-tuning). A report file keeps
the other methods' points for the same model and validation data, so running every method
with the same --report puts them all on one figure."""

from __future__ import annotations

import json
import math
import os


def merge(path_json: str, key: str, method: str, entry: dict) -> dict:
    """The report's JSON with `method`'s entry replaced; other methods' entries kept when they
    searched the same model on the same validation data (`key`)."""
    report = {"format": "snnc-search-report", "key": key, "methods": {}}
    if os.path.isfile(path_json):
        try:
            with open(path_json, encoding="utf-8") as f:
                old = json.load(f)
            if isinstance(old, dict) and old.get("key") == key and \
                    isinstance(old.get("methods"), dict):
                report["methods"] = {m: e for m, e in old["methods"].items()
                                     if m != method and _plottable(e)}
        except (OSError, ValueError, RecursionError):
            pass  # an unreadable old report is replaced
    report["methods"][method] = entry
    return report


def _real(value) -> bool:
    """A finite int or float (not a bool) that a float holds: JSON's integers have no bound,
    and math.isfinite(10**400) overflows."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _plottable(entry) -> bool:
    """An old report's entry png() can draw: points (and the final point) with real-number
    bits, energy and accuracy. The file is a user's; anything else is dropped, not drawn."""
    def point(p) -> bool:
        return isinstance(p, dict) and all(_real(p.get(k))
                                           for k in ("bits", "energy_nj", "accuracy"))

    return isinstance(entry, dict) and isinstance(entry.get("points"), list) \
        and all(point(p) for p in entry["points"]) \
        and all(entry.get(k) is None or point(entry[k]) for k in ("final", "chosen")) \
        and all(entry.get(k) is None or _real(entry[k]) for k in ("float_accuracy", "max_bits",
                                                                   "float_energy_nj"))


def frontier(points: list[dict], x: str) -> list[dict]:
    """Points no other point beats: fewer (or equal) `x` and higher accuracy."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p[x], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


COLORS = {"sensitivity": "tab:blue", "gumbel": "tab:orange", "drift": "tab:green"}


def png(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, x, label in ((axes[0], "bits", "average bits per weight (weighted by parameters)"),
                         (axes[1], "energy_nj", "estimated energy per sample (nJ; "
                                                "docs/verify.md)")):
        for method, entry in sorted(report["methods"].items()):
            color = COLORS.get(method, "tab:gray")
            points = entry["points"]
            ax.scatter([p[x] for p in points], [100 * p["accuracy"] for p in points], s=10,
                       alpha=0.35, color=color, label=f"{method}: visited ({len(points)})")
            front = frontier(points, x)
            ax.step([p[x] for p in front], [100 * p["accuracy"] for p in front], where="post",
                    color=color, lw=1.5, label=f"{method}: frontier")
            chosen = entry.get("chosen")
            if chosen:  # the search's choice among the visited points, before fine-tuning
                ax.scatter([chosen[x]], [100 * chosen["accuracy"]], marker="o", s=90,
                           facecolor="none", edgecolor=color, lw=1.8, zorder=4,
                           label=f"{method}: chosen")
            final = entry.get("final")
            if final:
                ax.scatter([final[x]], [100 * final["accuracy"]], marker="*", s=160,
                           color=color, edgecolor="black", zorder=5,
                           label=f"{method}: chosen, fine-tuned")
            if entry.get("float_accuracy") is not None:
                ax.axhline(100 * entry["float_accuracy"], color="gray", ls=":", lw=1)
            if x == "bits" and entry.get("max_bits"):
                ax.axvline(entry["max_bits"], color=color, ls="--", lw=0.8)
        floats = {e["float_energy_nj"] for e in report["methods"].values()
                  if e.get("float_energy_nj") is not None}
        if x == "energy_nj" and len(floats) == 1:
            label += f"\nthe same operations with float32 weights: {floats.pop():,.1f} nJ"
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("snnc search: configurations evaluated (before fine-tuning); rings: chosen; "
                 "stars: chosen, fine-tuned; dotted line: float", fontsize=9)
    from snnc.check.report import figure_bytes

    return figure_bytes(fig, 110)


def dumps(report: dict) -> bytes:
    return (json.dumps(report, indent=1) + "\n").encode()
