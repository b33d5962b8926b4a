"""How much work a program asks for per sample, read from its graph before any of that work.

A neuron layer runs once per timestep; unrolled, a multi-step layer of T steps becomes T
neuron steps in the IR and the ONNX file, and PyTorch or ONNX Runtime run T steps of it per
sample. A small file can ask for any T (an allowlisted factory's `T=10**7`), so every
command counts a program's neuron steps (each neuron call's input has its steps on axis 0:
T for a multi-step layer, 1 for a call of a single-step loop) and refuses it beyond
`--max-neuron-steps` (Options.max_neuron_steps) before lifting, unrolling, building the
real model or running it. docs/model_files.md, "Size limits".
"""

from __future__ import annotations

import torch

from snnc.errors import BadInputError
from snnc.frontend.lifter import dims, op_name
from snnc.options import Options

# About 0.5 ms of compile and 1.2 KB of ONNX per neuron step (spikformer_small, measured):
# about 10 s and 25 MB at the limit, and about 2 minutes for snnc's demo factories, which
# calibrate BatchNorm by running the model when they build it. Published spiking networks
# run far fewer (Spikformer on CIFAR-10 at T=4: 104; a 150-layer SEW-ResNet at T=4: 600).
MAX_NEURON_STEPS = Options.max_neuron_steps


def neuron_steps(program: torch.export.ExportedProgram, one_step: bool = False) -> int:
    """Neuron steps per sample: over every SpikingJelly neuron call (any `sj_*` op), the
    steps of its input (axis 0), or 1 each with `one_step` (--timesteps stream). A dynamic
    or unreadable size counts as one step."""
    total = 0
    for node in program.graph.nodes:
        if node.op != "call_function" or not op_name(node).startswith("sj_"):
            continue
        x = node.args[0] if node.args else None
        try:
            steps = dims(x)[0] if isinstance(x, torch.fx.Node) else 1
        except Exception:  # no tensor shape: the lift refuses it with its own message
            steps = 1
        total += steps if isinstance(steps, int) and steps > 0 and not one_step else 1
    return total


def check(program: torch.export.ExportedProgram, limit: int, where: str,
          one_step: bool = False) -> None:
    """Refuse a program of more than `limit` neuron steps per sample (per step: one_step)."""
    count = neuron_steps(program, one_step)
    if count > limit:
        raise BadInputError(
            f"{where} runs {count:,} neuron steps per sample (timesteps x neuron layers), more "
            f"than the limit ({limit:,}; unrolled, each step is nodes of the ONNX file and "
            "work in every run). Check the model's number of timesteps; compile with --timesteps stream to "
            "run one step per call, or raise the limit with --max-neuron-steps N if the "
            "model really is this large.")
