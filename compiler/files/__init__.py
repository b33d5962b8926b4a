"""Files in and out: model and data files read as untrusted input, outputs written atomically."""
