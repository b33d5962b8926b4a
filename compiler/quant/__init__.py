"""Quantization beside the pipeline: per-layer weight quantizers, weight formats, the search."""
