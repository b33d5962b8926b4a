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


@pytest.fixture(scope="session")
def decoder(tmp_path_factory):
    """The C pack decoder as `snnc decoder` writes it, built as docs/deployment.md says and
    with the sanitizers, and test_c_decoder's fuzz harness with the sanitizers."""
    import subprocess

    from test_c_decoder import HARNESS, SANITIZE, _cc
    from test_cli import snnc as cli
    root = tmp_path_factory.mktemp("decoder")
    assert cli("decoder", "-o", root).returncode == 0
    cc, flags = _cc(), ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    for name, extra in (("snnpack_decode", ["-O2"]), ("snnpack_decode_san", SANITIZE)):
        subprocess.run([cc, *flags, *extra, "-o", name, "snnpack_decode.c", "snnpack.c"],
                       cwd=root, check=True)
    (root / "harness.c").write_text(HARNESS)
    subprocess.run([cc, "-std=c99", *SANITIZE, "-o", "harness", "harness.c", "snnpack.c"],
                   cwd=root, check=True)
    return root
