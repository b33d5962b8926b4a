"""How much work a program asks for per sample, read from its graph before any of that work.

A neuron layer runs once per timestep; unrolled, a multi-step layer of T steps becomes T
neuron steps in the IR and the ONNX file, and PyTorch or ONNX Runtime run T steps of it per
sample. A small file can ask for any T (an allowlisted factory's `T=10**7`), so every
command counts a program's neuron steps (each neuron call's input has its steps on axis 0:
T for a multi-step layer, 1 for a call of a single-step loop) and refuses it beyond
`--max-neuron-steps` (Options.max_neuron_steps) before lifting, unrolling, building the
real model or running it. The same trace bounds the largest tensor any operation makes
per example (SNNC_MAX_TENSOR_VALUES): channels, image size and T together can ask for a
tensor of any size within both other limits. docs/model_files.md, "Size limits".
"""

from __future__ import annotations

import os

import torch

from snnc.errors import BadInputError
from snnc.frontend.lifter import dims, op_name
from snnc.options import Options

# About 0.5 ms of compile and 1.2 KB of ONNX per neuron step (spikformer_small, measured):
# about 10 s and 25 MB at the limit, and about 2 minutes for snnc's demo factories, which
# calibrate BatchNorm by running the model when they build it. Published spiking networks
# run far fewer (Spikformer on CIFAR-10 at T=4: 104; a 150-layer SEW-ResNet at T=4: 600).
MAX_NEURON_STEPS = Options.max_neuron_steps
# Values one operation may make per example (SNNC_MAX_TENSOR_VALUES): 2^26, 256 MiB as
# float32. Spikformer-8-768 on ImageNet (224 x 224, T=4) makes at most 1.9e7; snnc's
# conv_snn factory asked for channels=1000, steps=5000 made 7.2e8 and, calibrating
# BatchNorm on 8 examples as it builds, tried to allocate 23 GB.
MAX_TENSOR_VALUES = 1 << 26


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


def largest_tensor(program: torch.export.ExportedProgram) -> tuple[int, str]:
    """The most values any one operation of the program makes per example (the traced
    input's first axis), and that operation's name. A dynamic size counts as 1."""
    batch = 1
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            try:
                batch = max(1, int(dims(node)[0]))
            except Exception:
                pass
            break
    most, name = 0, ""
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        value = node.meta.get("val")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            try:
                count = int(v.numel()) if isinstance(v, torch.Tensor) else 0
            except Exception:  # a symbolic size
                count = 0
            if count > most:
                most, name = count, node.name
    return -(-most // batch), name


def max_tensor_values() -> int:
    """SNNC_MAX_TENSOR_VALUES (a positive integer), default MAX_TENSOR_VALUES."""
    text = os.environ.get("SNNC_MAX_TENSOR_VALUES", "").strip()
    if not text:
        return MAX_TENSOR_VALUES
    if not text.isdigit() or int(text) == 0:
        raise BadInputError(f"SNNC_MAX_TENSOR_VALUES={text[:40]!r} is not a positive integer "
                            "(for example 268435456)")
    return int(text)


def check(program: torch.export.ExportedProgram, limit: int, where: str,
          one_step: bool = False) -> None:
    """Refuse a program of more than `limit` neuron steps per sample (per step: one_step),
    or one whose largest tensor holds more than max_tensor_values() values per example.
    Steps first: a huge T makes huge tensors too, and its message names T."""
    count = neuron_steps(program, one_step)
    if count > limit:
        raise BadInputError(
            f"{where} runs {count:,} neuron steps per sample (timesteps x neuron layers), more "
            f"than the limit ({limit:,}; unrolled, each step is nodes of the ONNX file and "
            "work in every run). Check the model's number of timesteps; compile with "
            "--timesteps stream to run one step per call, or raise the limit with "
            "--max-neuron-steps N if the model really is this large.")
    most, name = largest_tensor(program)
    values = max_tensor_values()
    if most > values:
        raise BadInputError(
            f"{where}: its operation {name} makes {most:,} values per example, more than the "
            f"limit ({values:,}; 256 MiB as float32, and every run, the compile's checks and "
            "a factory's calibration hold several such tensors). Check the model's sizes "
            "(channels, image size, timesteps), or raise the limit with "
            f"SNNC_MAX_TENSOR_VALUES={most} if the model really is this large.")
