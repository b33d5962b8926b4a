"""A NIR file or graph to the torch.export program snnc compiles: `load_program(path,
settings)` is what `snnc compile MODEL.nir --dt DT --timesteps T` runs, `checkpoint` what
snnc quantize and snnc search start from (docs/nir.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from snnc.errors import BadInputError

EXAMPLE_BATCH = 2  # an example batch of 2: no unit axis for the batch to hide behind


@dataclass(frozen=True)
class Settings:
    """What a NIR graph does not say: the time step (seconds), the number of steps, the
    readout over the steps (None: the sequences) and the discretization (euler or exp)."""

    dt: float | None = None
    steps: int | None = None
    readout: str | None = None
    discretize: str = "euler"


def load_program(path: str, settings: Settings, one_step: bool = False,
                 max_neuron_steps: int | None = None):
    """The torch.export program of the NIR file at `path` (one_step: --timesteps stream,
    any number of steps)."""
    from snnc.nir.reader import read
    graph = read(path)
    return program(graph, settings, path, one_step, max_neuron_steps)


def program(graph, settings: Settings, where: str = "the NIR graph", one_step: bool = False,
            max_neuron_steps: int | None = None):
    """The torch.export program of a nir.NIRGraph (see load_program)."""
    from snnc.frontend.budget import MAX_NEURON_STEPS
    from snnc.nir.module import NIRModule
    dt, steps = settings.dt, settings.steps
    if dt is None:
        raise BadInputError(f"{where}: a NIR graph carries no time step: give --dt SECONDS "
                            "(dt= in Python; snnTorch exports assume 1e-4 s; docs/nir.md)")
    if steps is None and not one_step:
        raise BadInputError(f"{where}: a NIR graph carries no number of steps: give "
                            "--timesteps T, the length of the input sequences (steps= in "
                            "Python), or --timesteps stream")
    dt = float(dt)
    module = NIRModule(graph, dt, settings.readout, settings.discretize).eval()
    steps = 2 if one_step else int(steps)
    neurons = sum(1 for m in module.modules() if type(m).__module__ == "snnc.nir.neurons"
                  and type(m).__name__ != "Recurrent")
    limit = max_neuron_steps or MAX_NEURON_STEPS
    if steps < 1 or steps * max(neurons, 1) > limit:
        raise BadInputError(f"{where}: {steps} steps of {neurons} neuron layers is outside "
                            f"1 to {limit:,} neuron steps per sample (--max-neuron-steps)")
    return export_module(module, steps, graph, where)


def export_module(module, steps: int, graph, where: str = "the NIR graph",
                  batch: int = EXAMPLE_BATCH):
    """torch.export of a NIRModule (or the quantized copy snnc.quantize makes of one) on
    `steps` steps of the graph's input at an example batch of `batch`."""
    import torch
    shape = input_shape(graph, where)
    example = torch.zeros(steps, batch, *shape)
    try:
        with torch.no_grad():
            return torch.export.export(module.eval(), (example,))
    except BadInputError:
        raise
    except Exception as error:  # noqa: BLE001 - shapes that do not fit surface here
        raise BadInputError(f"{where}: the NIR graph does not run on an input of shape "
                            f"{list(shape)} per step ({type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0][:300]}); check the "
                            "nodes' shapes") from None


def input_shape(graph, where: str) -> list[int]:
    """The per-step, per-sample shape of the graph's Input node."""
    from snnc.nir.module import flatten_graph
    nodes, _ = flatten_graph(graph)
    inputs = [v for v in nodes.values() if type(v).__name__ == "Input"]
    shape = inputs[0].input_type.get("input") if len(inputs) == 1 else None
    if shape is None or len(shape) == 0 or any(int(d) < 1 for d in shape) or \
            math.prod(int(d) for d in shape) > 2 ** 26:
        raise BadInputError(f"{where}: the NIR graph needs one Input node with a shape of "
                            f"positive sizes (it has {len(inputs)} Input node(s), shape "
                            f"{None if shape is None else list(shape)})")
    return [int(d) for d in shape]


def checkpoint(path: str, settings: Settings) -> dict:
    """The snnc checkpoint of the NIR file at `path`: factory snnc.nir.module:from_nir, the
    file's bytes as a uint8 tensor, dt, readout and discretization; input_shape [steps,
    EXAMPLE_BATCH, ...].
    snnc quantize and snnc search write it with the quantization; snnc compile reads it."""
    import torch

    from snnc.nir.module import NIRModule
    from snnc.nir.reader import read
    dt, steps, readout = settings.dt, settings.steps, settings.readout
    if dt is None or steps is None:
        raise BadInputError(f"{path} is a NIR graph, which carries no time step and no number "
                            "of steps: give --dt SECONDS and --timesteps T (docs/nir.md)")
    graph = read(path)
    module = NIRModule(graph, float(dt), readout, settings.discretize)
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    kwargs = {"nir": data, "dt": float(dt), "readout": readout,
              "discretize": settings.discretize}
    return {"format": "snnc-checkpoint", "version": 1, "factory": "snnc.nir.module:from_nir",
            "kwargs": kwargs, "state_dict": module.state_dict(),  # as loader.make_checkpoint
            "input_shape": [int(steps), EXAMPLE_BATCH, *input_shape(graph, path)]}
