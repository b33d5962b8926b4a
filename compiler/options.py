"""Compile options shared by the pipeline, its passes and the emitters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    opset: int = 21
    timesteps: str = "unroll"  # or "stream": one step, membranes as inputs and outputs
    debug_outputs: bool = False  # expose every neuron's spikes as extra ONNX outputs
    weight_container: str = "int8"  # "int4": <= 4-bit weights as native int4 (opset 21)
    integer_kernels: bool = True  # spike-input layers as u8 x int8 GEMMs (lower_integer)
    pot_lowering: str = "int8"  # "shift": PoT codes decoded in the graph with BitShift
    external_weights: bool = False  # quantized weights as references into the pack file
    pack_location: str = ""  # the pack's file name in those references (set by compile_file)
    max_neuron_steps: int = 20_000  # per sample, T x neuron layers (snnc.frontend.budget)
    batch: int | None = None  # a static batch (passes/static_batch.py); None: symbolic "N"


DEFAULT = Options()
