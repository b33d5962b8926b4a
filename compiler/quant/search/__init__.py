"""snnc search: the per-layer quantization search (docs/search.md), one module per part."""
