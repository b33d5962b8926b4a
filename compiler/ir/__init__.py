"""The IR: graph, op vocabulary, builder, verifier, reference interpreter, shapes, ranges."""
