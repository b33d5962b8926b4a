"""Session fixtures: models built once and shared, since exporting Spikformer takes seconds."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*were assigned during export.*")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def spikformer(tmp_path_factory):
    """spikformer_cifar10(T=4), firing; exported at batch 1 (saved as model.pt) and batch 8."""
    from snnc.demo import export, firing_spikformer

    model = firing_spikformer(steps=4, seed=0)
    program = export(model, torch.zeros(1, 3, 32, 32))
    path = tmp_path_factory.mktemp("spikformer") / "model.pt"
    torch.export.save(program, str(path))
    return {"model": model, "program": program, "path": str(path),
            "program_b8": export(model, torch.zeros(8, 3, 32, 32))}


@pytest.fixture(scope="session")
def quantized_spikformer(tmp_path_factory):
    """spikformer_cifar10(T=4) quantized with SPIKFORMER_HETEROGENEOUS (uniform and PoT,
    2-8 bits), BatchNorm recalibrated so it fires; saved as a torch.export archive."""
    from snnc.demo import SPIKFORMER_HETEROGENEOUS, export, firing_spikformer

    model = firing_spikformer(steps=4, quantization=SPIKFORMER_HETEROGENEOUS)
    program = export(model, torch.zeros(1, 3, 32, 32))
    path = tmp_path_factory.mktemp("qspikformer") / "model_q.pt"
    torch.export.save(program, str(path))
    return {"model": model, "program": program, "path": str(path),
            "program_b8": export(model, torch.zeros(8, 3, 32, 32))}
