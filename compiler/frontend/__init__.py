"""Frontends: a model (a torch.export program of a SpikingJelly network) -> an IR graph."""
