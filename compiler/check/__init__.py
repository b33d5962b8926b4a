"""Checking the compiled model against its source: accuracy, spike parity, reports."""
