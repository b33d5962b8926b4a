"""snnc compile --report: per layer, the quantization (scheme, bits, parameters, packed
bytes) and, with --verify data, the activity on that data (input firing rate, synaptic
operations, estimated energy), as JSON, a readable table and one PNG figure; and per layer
the ops that are not spike-driven (float islands: LayerNorm, softmax, GELU, ...), which
run in float32 whatever the weights.

Energy model (docs/verify.md), the one the spiking-transformer literature uses (Spikformer,
Zhou et al., ICLR 2023; SpikingJelly's op counter): 45 nm CMOS estimates from Horowitz,
"Computing's energy problem", ISSCC 2014: a 32-bit float multiply-accumulate (MAC) costs
4.6 pJ (3.7 multiply + 0.9 add), an accumulate (AC) 0.9 pJ. A layer whose input is spikes
(or spike counts: nonnegative integers) does one AC per input spike per synapse: SOPs = MACs
x mean input value (= MACs x firing rate for binary spikes); a layer with real-valued input
(the first conv on an image) does all its MACs. These are float32 costs; integer adds on
k-bit codes cost less still (Horowitz: 0.03 pJ for an 8-bit add), so the estimate is an
upper bound for the quantized model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from snnc.check.accuracy import Verification
from snnc.ir.graph import Graph
from snnc.ir.islands import by_layer

MAC_PJ = 4.6
AC_PJ = 0.9
ENERGY_SOURCE = ("Horowitz, 'Computing's energy problem (and what we can do about it)', "
                 "ISSCC 2014, 45 nm: 32-bit float multiply 3.7 pJ + add 0.9 pJ; the "
                 "constants of Spikformer (Zhou et al., ICLR 2023) and SpikingJelly's op counter")


@dataclass
class Row:
    layer: str
    op: str
    scheme: str  # uniform, pot, float; "-" for a matmul of two activations
    bits: int | None
    parameters: int
    packed_bytes: int  # codes at their bit width + float32 scales; float32 for float layers
    input_rate: float | None = None  # mean input value (firing rate for binary spikes)
    spike_input: bool | None = None  # input nonnegative integers (spikes / counts)
    macs: float | None = None  # dense MACs per sample, all timesteps
    sops: float | None = None  # synaptic operations per sample (ACs) or MACs if not spiking
    energy_pj: float | None = None  # per sample


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
            scheme, bits = source.attrs["scheme"], source.attrs["bits"]
            packed = -(-n * bits // 8) + 4 * weight.shape[0]
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
            if act.integer_input:
                row.sops = row.macs * act.input_mean
                row.energy_pj = row.sops * AC_PJ
            else:
                row.sops = row.macs
                row.energy_pj = row.macs * MAC_PJ
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
        totals["energy_uj"] = sum(r.energy_pj for r in active) / 1e6
        totals["ann_energy_uj"] = sum(r.macs for r in active) * MAC_PJ / 1e6
        totals["energy_reduction"] = totals["ann_energy_uj"] / max(totals["energy_uj"], 1e-12)
    report = dict(extra)
    report.update({
        "energy_constants": {"mac_pj": MAC_PJ, "ac_pj": AC_PJ, "source": ENERGY_SOURCE},
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
        lines.append(f"{r['layer']:<{width}}  {r['scheme']:<7} {opt(r['bits'], '>4')} "
                     f"{r['parameters']:>9,} {r['packed_bytes']:>9,} {rate:>7} "
                     f"{opt(r['sops'], '>12,.0f')} "
                     f"{opt(None if r['energy_pj'] is None else r['energy_pj'] / 1e3, '>9.2f')}")
    t = report["totals"]
    lines.append(f"{len([r for r in rows if r['bits'] is not None])} weight layers, "
                 f"{t['parameters']:,} weights, average {t['average_bits']:.2f} bits; packed "
                 f"{t['packed_bytes']:,} B vs float32 {t['float32_bytes']:,} B "
                 f"({t['compression']:.2f}x)")
    if "energy_uj" in t:
        lines.append(f"per sample: {t['sops']:,.0f} synaptic ops (accumulates) and "
                     f"{t['real_input_macs']:,.0f} MACs on real-valued input, estimated "
                     f"{t['energy_uj']:.3f} "
                     f"uJ ({t['energy_reduction']:.1f}x less than the same MACs in float: "
                     f"{t['ann_energy_uj']:.3f} uJ); {MAC_PJ} pJ/MAC, {AC_PJ} pJ/AC "
                     "(Horowitz, ISSCC 2014, 45 nm)")
    else:
        lines.append("(firing rates, synaptic operations and energy need data: add --verify "
                     "DATA.npz)")
    if report.get("float_ops"):
        lines.append("not spike-driven (float ops, per layer): " + "; ".join(
            f"{entry['layer']}: {', '.join(entry['ops'])}" for entry in report["float_ops"]))
    if report["neurons"]:
        lines.append("neuron firing rates: " + ", ".join(
            f"{_short(k)} {100 * v:.1f}%" for k, v in report["neurons"].items()))
    return "\n".join(lines)


def _label(name: str) -> str:
    """A layer name as literal text on the figure: matplotlib reads $...$ as math."""
    return _short(name).replace("$", r"\$")


def _short(name: str) -> str:
    for noise in ("net.", ".conv_bn.block", ".conv_bn", "patch_embed.", "blocks."):
        name = name.replace(noise, "" if noise != "blocks." else "b")
    return name


def figure_png(report: dict) -> bytes:
    """One PNG: bits per weight layer coloured by scheme, and firing rate per neuron layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in report["layers"] if r["bits"] is not None]
    neurons = report["neurons"]
    colours = {"uniform": "#4C72B0", "pot": "#DD8452", "float": "#999999"}
    height = max(len(rows), len(neurons), 4) * 0.28 + 1.5
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, height))
    names = [_label(r["layer"]) for r in rows][::-1]
    left.barh(names, [r["bits"] for r in rows][::-1],
              color=[colours.get(r["scheme"], "#999999") for r in rows][::-1])
    left.set_xlabel("weight bits")
    left.set_title(f"bits per layer (average {report['totals']['average_bits']:.2f})")
    left.set_xlim(0, max([r["bits"] for r in rows] + [8]) + 4)
    left.legend(handles=[Patch(color=c, label=k) for k, c in colours.items()
                         if any(r["scheme"] == k for r in rows)], loc="lower right")
    if neurons:
        right.barh([_label(k) for k in neurons][::-1],
                   [100 * v for v in neurons.values()][::-1], color="#55A868")
        right.set_xlabel("firing rate (%)")
        right.set_title("firing rate per neuron layer (verify data)")
    else:
        right.text(0.5, 0.5, "no firing rates:\ncompile with --verify DATA.npz",
                   ha="center", va="center")
        right.set_axis_off()
    for axis in (left, right):
        axis.tick_params(axis="y", labelsize=7)
    return figure_bytes(fig, 100)


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
