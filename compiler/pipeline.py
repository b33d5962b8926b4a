"""The compile pipeline, literally: an ordered tuple of passes and a runner.

The verifier runs after the frontend and after every pass; `dump_dir` receives the IR text
after each stage (`00-frontend.ir`, `01-fold_batchnorm.ir`, ...).
"""

from __future__ import annotations

import os
from typing import Callable

from snnc.errors import PassError, SnncError
from snnc.files.outputs import make_directory, write_atomic
from snnc.ir import ranges
from snnc.ir.graph import Graph
from snnc.ir.verify import verify
from snnc.options import DEFAULT, Options
from snnc.passes import (cast_spikes, expose_state, fold_batchnorm, fold_scales, layout,
                         lower_integer, merge_reshapes, pot_to_shift, remove_dead_nodes,
                         static_batch, unroll_timesteps)


def check_ranges(graph: Graph, *, opts: Options = DEFAULT) -> Graph:
    """An analysis, not a rewrite: refuses the graph if an integer sum or a membrane could
    leave float32's exact integers (snnc.ir.ranges, docs/ranges.md); returns it unchanged."""
    ranges.check(graph, stream=opts.timesteps == "stream")
    return graph


_FRONT: tuple[tuple[str, Callable[..., Graph]], ...] = (
    ("fold_batchnorm", fold_batchnorm.run),
    ("fold_scales", fold_scales.run),
    ("merge_reshapes", merge_reshapes.run),
    ("pot_to_shift", pot_to_shift.run),
    ("lower_integer", lower_integer.run),
    ("check_ranges", check_ranges),
)
PASSES: tuple[tuple[str, Callable[..., Graph]], ...] = _FRONT + (
    ("unroll_timesteps", unroll_timesteps.run),
    ("cast_spikes", cast_spikes.run),
    ("layout", layout.run),
    ("remove_dead_nodes", remove_dead_nodes.run),
)
# --timesteps stream: one step, with the membranes as inputs and outputs.
STREAM_PASSES: tuple[tuple[str, Callable[..., Graph]], ...] = _FRONT + (
    ("expose_state", expose_state.run),
    ("cast_spikes", cast_spikes.run),
    ("layout", layout.run),
    ("remove_dead_nodes", remove_dead_nodes.run),
)
# --batch N: the last pass, only then
STATIC_BATCH = ("static_batch", static_batch.run)


def run_passes(graph: Graph, opts: Options = DEFAULT, dump_dir: str | None = None,
               passes=None) -> Graph:
    if passes is None:
        passes = STREAM_PASSES if opts.timesteps == "stream" else PASSES
        passes += (STATIC_BATCH,) if opts.batch is not None else ()
    verify(graph, "frontend")
    _dump(dump_dir, 0, "frontend", graph)
    for index, (name, run) in enumerate(passes, start=1):
        try:
            graph = run(graph, opts=opts)
        except SnncError:
            raise
        except Exception as error:  # a crash inside a pass is a bug: name the pass
            raise PassError(f"pass {name} failed: {type(error).__name__}: {error}. This is a "
                            "bug in snnc; please report it with the model.") from error
        verify(graph, f"pass {name}")
        if run is check_ranges:  # an analysis: its dump is the membrane table
            if dump_dir is not None:
                table = ranges.membranes(graph, stream=opts.timesteps == "stream")
                make_directory("--dump-ir", dump_dir)
                write_atomic(os.path.join(dump_dir, f"{index:02d}-{name}.txt"),
                             (ranges.format_table(table) + "\n").encode())
            continue
        _dump(dump_dir, index, name, graph)
    return graph


def _dump(dump_dir: str | None, index: int, name: str, graph: Graph) -> None:
    if dump_dir is None:
        return
    make_directory("--dump-ir", dump_dir)  # where check_paths checked it
    write_atomic(os.path.join(dump_dir, f"{index:02d}-{name}.ir"), (str(graph) + "\n").encode())
