"""Backends: verified, lowered IR -> ONNX, the ORT format, the weight pack; and loading them."""
