"""snnc compile --report: per layer, the quantization (scheme, bits, parameters, packed
bytes) and, with --verify data, the activity on that data (input firing rate, synaptic
operations, estimated energy), as JSON, a readable table and one PNG figure; and per layer
the ops that are not spike-driven (float islands: LayerNorm, softmax, GELU, ...), which
run in float32 whatever the weights.

Energy (snnc.check.energy, docs/verify.md "The energy estimate"): per layer, its synaptic
operations at the cost its weights' format needs (k-bit integer adds, PoT shift-adds,
float32), the model `snnc search` uses, so both give one configuration the same figure; and
the same operations with float32 weights ("float"), as the search's baseline. Attention's
matmuls of two activations carry no weights and count as float32.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from snnc.check import energy
from snnc.check.accuracy import Verification
from snnc.ir.graph import Graph
from snnc.ir.islands import by_layer
from snnc.quant.weights import code_bytes, stored_bits


@dataclass
class Row:
    layer: str
    op: str
    scheme: str  # uniform, pot, ternary, binary, float; "-" for a matmul of two activations
    bits: float | None  # stored bits per weight (ternary 1.6); None for a matmul
    parameters: int
    packed_bytes: int  # codes at their bit width + float32 scales; float32 for float layers
    input_rate: float | None = None  # mean input value (firing rate for binary spikes)
    spike_input: bool | None = None  # input nonnegative integers (spikes / counts)
    macs: float | None = None  # dense MACs per sample, all timesteps
    sops: float | None = None  # synaptic operations per sample (ACs) or MACs if not spiking
    energy_pj: float | None = None  # per sample, at the weights' format (snnc.check.energy)
    float_energy_pj: float | None = None  # per sample, the same operations in float32


def weight_layers(graph: Graph) -> list[Row]:
    """The conv / linear layers of a traced graph with their quantization."""
    producers = {out: node for node in graph.nodes for out in node.outputs}
    rows = []
    for node in graph.nodes:
        if node.op not in ("conv", "linear"):
            continue
        weight = node.inputs[1]
        n = math.prod(weight.shape)
        source = producers.get(weight)
        if source is not None and source.op == "dequantize":
            scheme, code_bits = source.attrs["scheme"], source.attrs["bits"]
            bits = stored_bits(scheme, code_bits)  # ternary: 1.6, five trits a byte
            packed = code_bytes(n, scheme, code_bits) + 4 * weight.shape[0]
        else:
            scheme, bits, packed = "float", 32, 4 * n
        rows.append(Row(node.source.layer, node.op, scheme, bits, n, packed))
    return rows


def build(graph: Graph, verification: Verification | None, extra: dict) -> dict:
    """The report as a JSON-ready dict."""
    rows = weight_layers(graph)
    neurons = {}
    if verification is not None and verification.activity is not None:
        layers = verification.activity.layers
        known = {row.layer for row in rows}
        for name, act in layers.items():
            if act.op == "matmul" and name not in known:
                rows.append(Row(name, "matmul", "-", None, 0, 0))
        for row in rows:
            act = layers.get(row.layer)
            if act is None:
                continue
            row.macs = act.per_sample_macs()
            row.input_rate = act.input_mean
            row.spike_input = act.integer_input
            row.sops = row.macs * act.input_mean if act.integer_input else row.macs
            row.energy_pj = row.sops * energy.op_pj(row.scheme, row.bits, act.integer_input)
            row.float_energy_pj = row.sops * energy.float_op_pj(act.integer_input)
        neurons = verification.firing_rates
    weighted = [r for r in rows if r.bits is not None]
    params = sum(r.parameters for r in weighted)
    quantized = [r for r in weighted if r.scheme != "float"]
    totals = {
        "parameters": params,
        "average_bits": sum(r.bits * r.parameters for r in weighted) / params if params else 0,
        "packed_bytes": sum(r.packed_bytes for r in weighted),
        "float32_bytes": 4 * params,
        "quantized_layers": len(quantized),
    }
    totals["compression"] = totals["float32_bytes"] / max(totals["packed_bytes"], 1)
    if any(r.energy_pj is not None for r in rows):
        active = [r for r in rows if r.energy_pj is not None]
        totals["sops"] = sum(r.sops for r in active if r.spike_input)  # accumulates
        totals["real_input_macs"] = sum(r.macs for r in active if not r.spike_input)
        totals["energy_nj"] = sum(r.energy_pj for r in active) / 1e3
        totals["float_energy_nj"] = sum(r.float_energy_pj for r in active) / 1e3
        # attention's activation matmuls (no weights, float32), part of both figures above
        totals["matmul_energy_nj"] = sum(r.energy_pj for r in active if r.bits is None) / 1e3
        # a non-spiking network of the same shape: every MAC in float32
        totals["ann_energy_nj"] = sum(r.macs for r in active) * energy.FLOAT32_MAC_PJ / 1e3
    report = dict(extra)
    report.update({
        "energy_constants": energy.constants(),
        "layers": [asdict(r) for r in rows],
        "neurons": neurons,
        # per layer (provenance), the ops that are not spike-driven: float islands
        "float_ops": [{"layer": where, "ops": ops} for where, ops in by_layer(graph.nodes).items()],
        "totals": totals,
    })
    if verification is not None:
        report["verify"] = verification.as_json()
    return report


def format_table(report: dict) -> str:
    rows = report["layers"]
    width = max([len(r["layer"]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'scheme':<7} {'bits':>4} {'params':>9} {'packed B':>9} "
             f"{'in rate':>7} {'SOPs/sample':>12} {'energy nJ':>9}"]

    def opt(value, fmt):
        return format(value, fmt) if value is not None else "-"

    for r in rows:
        rate = r["input_rate"]
        if rate is None:
            rate = "-"
        elif r["spike_input"] is False:
            rate = "real"
        else:  # a firing rate, or a mean spike count per input (event counts)
            rate = f"{100 * rate:.1f}%" if rate <= 1 else f"{rate:.2f}/in"
        lines.append(f"{r['layer']:<{width}}  {r['scheme']:<7} {opt(r['bits'], '>4g')} "
                     f"{r['parameters']:>9,} {r['packed_bytes']:>9,} {rate:>7} "
                     f"{opt(r['sops'], '>12,.0f')} "
                     f"{opt(None if r['energy_pj'] is None else r['energy_pj'] / 1e3, '>9.2f')}")
    t = report["totals"]
    lines.append(f"{len([r for r in rows if r['bits'] is not None])} weight layers, "
                 f"{t['parameters']:,} weights, average {t['average_bits']:.2f} bits; packed "
                 f"{t['packed_bytes']:,} B vs float32 {t['float32_bytes']:,} B "
                 f"({t['compression']:.2f}x)")
    if "energy_nj" in t:
        e, f, m = t["energy_nj"], t["float_energy_nj"], t["matmul_energy_nj"]
        lines.append(f"per sample: {t['sops']:,.0f} synaptic ops (accumulates) and "
                     f"{t['real_input_macs']:,.0f} MACs on real-valued input")
        lines.append(f"estimated energy per sample: {e:,.1f} nJ at these bit widths, "
                     f"{f:,.1f} nJ with float32 weights ({f / max(e, 1e-12):.1f}x)"
                     + (f"; of these conv/linear {e - m:,.1f} nJ (what snnc search "
                        f"estimates) and activation matmuls {m:,.1f} nJ (float32)" if m else "")
                     + f"; a non-spiking float32 network of this shape {t['ann_energy_nj']:,.1f}"
                     " nJ (Horowitz, ISSCC 2014, 45 nm: docs/verify.md)")
    else:
        lines.append("(firing rates, synaptic operations and energy need data: add --verify "
                     "DATA.npz)")
    if report.get("float_ops"):
        lines.append("not spike-driven (float ops, per layer): " + "; ".join(
            f"{entry['layer']}: {', '.join(entry['ops'])}" for entry in report["float_ops"]))
    if report["neurons"]:
        lines.append("neuron firing rates: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in report["neurons"].items()))
    return "\n".join(lines)


def _label(name: str) -> str:
    """A layer name as the table prints it, as literal text: matplotlib reads $...$ as math."""
    return name.replace("$", r"\$")


def title(report: dict) -> str:
    """What the figure is of: the model file, its bits and compression, the accuracy and
    energy on the verify data (where the report has them)."""
    import os

    t = report["totals"]
    parts = [os.path.basename(report["model"])] if report.get("model") else []
    if t["quantized_layers"]:
        parts.append(f"average {t['average_bits']:.2f} bits, {t['compression']:.1f}x smaller "
                     "than float32")
    else:
        parts.append("float32 (not quantized)")
    verify = report.get("verify") or {}
    if verify.get("compiled_accuracy") is not None:
        parts.append(f"accuracy {100 * verify['compiled_accuracy']:.2f} % "
                     f"({verify['n']} verify samples)")
    if "energy_nj" in t:
        parts.append(f"estimated energy {t['energy_nj']:,.1f} nJ/sample" + (
            f" (float32 weights: {t['float_energy_nj']:,.1f})" if t["quantized_layers"] else ""))
    return "; ".join(parts)


def figure(report: dict):
    """The matplotlib figure: bits per weight layer coloured by scheme (the axis to the
    largest quantized width, float32 layers hatched; no panel for a model not quantized:
    the title says float32), and firing rate per neuron layer; layers named as in the table."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["layers"] if r["bits"] is not None]
    neurons = report["neurons"]
    quantized = any(r["scheme"] != "float" for r in rows)
    panels = int(quantized) + int(bool(neurons)) or 1
    height = max(len(rows), len(neurons), 4) * 0.28 + 2.2
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, height), squeeze=False)
    axes = list(axes[0])
    fig.suptitle(textwrap.fill(title(report), 95 * panels), fontsize=9)
    if quantized:
        _bits_panel(axes.pop(0), rows, report["totals"]["average_bits"])
    if neurons:
        right = axes.pop(0)
        right.barh([_label(k) for k in neurons][::-1],
                   [100 * v for v in neurons.values()][::-1], color="#55A868")
        right.set_xlabel("firing rate (%)")
        right.set_title("firing rate per neuron layer (verify data)", pad=22)
    if axes:  # neither panel
        axes[0].text(0.5, 0.5, "no quantized layers, no firing rates:\ncompile with --verify "
                     "DATA.npz for firing rates", ha="center", va="center")
        axes[0].set_axis_off()
    for axis in fig.axes:
        axis.tick_params(axis="y", labelsize=7)
    return fig


SCHEME_COLOURS = {"uniform": "#4C72B0", "pot": "#DD8452", "ternary": "#55A868",
                  "binary": "#8172B2", "float": "#999999"}


def _bits_panel(axis, rows: list[dict], average: float) -> None:
    """Bits per weight layer, coloured by scheme; the axis runs to the largest quantized
    width, and a float32 layer's bar, hatched, across it."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    top = max(r["bits"] for r in rows if r["scheme"] != "float")
    rows = rows[::-1]  # the table's first layer at the top
    axis.barh([_label(r["layer"]) for r in rows],
              [top if r["scheme"] == "float" else r["bits"] for r in rows],
              color=[SCHEME_COLOURS.get(r["scheme"], "#999999") for r in rows],
              hatch=["//" if r["scheme"] == "float" else "" for r in rows])
    axis.set_xlim(0, top)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    floats = any(r["scheme"] == "float" for r in rows)
    axis.set_xlabel("weight bits" + (" (hatched: float32)" if floats else ""))
    axis.set_title(f"bits per layer (average {average:.2f})", pad=22)
    axis.legend(handles=[Patch(color=c, label=k) for k, c in SCHEME_COLOURS.items()
                         if any(r["scheme"] == k for r in rows)],
                loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8,
                frameon=False)  # above the bars, below the title: it covers none


def figure_png(report: dict) -> bytes:
    """One PNG: figure(report)."""
    return figure_bytes(figure(report), 100)


def figure_bytes(fig, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes (laid out, then closed)."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def to_json(report: dict) -> bytes:
    return (json.dumps(report, indent=2) + "\n").encode()
