"""snnc's passes: one per file, each a pure `run(graph, *, opts) -> Graph`.

docs/passes.md explains how to write one; each module's docstring is its spec.
"""
