"""Turn a one-step graph into a streaming step: membranes become inputs and outputs.

Requires: a verified graph with a time spec (`graph.time`), as the frontend makes it.
Ensures: `graph.time is None` and no state. Inputs are the original inputs (one step's
input: the static image for "repeat" inputs, one [N, ...] slice for "seq" and "seq_batch_first" inputs)
followed by each state's membrane, in `graph.states` order; outputs are the original
outputs for this step (before any reduction over time) followed by each membrane's next
value, in the same order. `graph.metadata["snnc.stream"]` records the contract: steps,
input and output time modes, and each state's name, initial fill and shape. Meaning is
preserved exactly: feeding the initial states and stepping T times computes what the
unrolled graph computes, step by step.

Before:
    state %lif.v: f32[N,4] init=0.0
    %s: f32[N,4], %v1: f32[N,4] = neuron(%y, %lif.v) ...
    next %lif.v = %v1
    return %s
After:
    graph(%x: f32[N,4], %lif.v: f32[N,4])
    %s: f32[N,4], %v1: f32[N,4] = neuron(%y, %lif.v) ...
    return %s, %v1
"""

from __future__ import annotations

import json

from snnc.errors import BadInputError
from snnc.ir.graph import Graph
from snnc.options import DEFAULT, Options


def run(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    spec = graph.time
    if spec is None:
        return graph
    _check_streamable(graph)
    names_in = list(graph.input_names or [v.hint for v in graph.inputs])
    names_out = list(graph.output_names or [f"output{i}" for i in range(len(graph.outputs))])
    states = []
    for state in graph.states:
        names_in.append(f"state_in/{state.name}")
        names_out.append(f"state_out/{state.name}")
        states.append({"name": state.name, "input": f"state_in/{state.name}",
                       "output": f"state_out/{state.name}", "init": state.init,
                       "shape": list(state.read.shape)})
    contract = {"steps": spec.steps, "inputs": list(spec.inputs), "outputs": list(spec.outputs),
                "states": states}
    return graph.replace(
        inputs=graph.inputs + tuple(s.read for s in graph.states),
        outputs=graph.outputs + tuple(s.write for s in graph.states),
        states=(), time=None, input_names=tuple(names_in), output_names=tuple(names_out),
        metadata={**graph.metadata, "snnc.stream": json.dumps(contract)})


def _check_streamable(graph: Graph) -> None:
    """Stream mode returns each step's outputs: a program that reduces over time before
    more layers, or passes membranes itself (a single-step loop in forward), has no such
    step (re-rolling is not done)."""
    mix = next((n for n in graph.nodes if n.op in ("time_mix", "time_stack")), None)
    if mix is not None:
        raise BadInputError(
            f"--timesteps stream: {mix.source or 'a layer'} mixes all T timesteps at once (a "
            "parallel spiking neuron or an attention over time: step t reads later steps "
            "too), so the model cannot run "
            "one step per call; compile it without --timesteps stream (all steps unrolled)")
    if any(n.op == "time_reduce" for n in graph.nodes) or "once" in graph.time.outputs:
        raise BadInputError(
            "--timesteps stream: this model computes layers after reducing over time (a "
            "mean, sum, maximum or last step of all its steps; or "
            "runs its own time loop in forward), so it has no per-step outputs to stream; "
            "compile it without --timesteps stream (all steps unrolled)")
