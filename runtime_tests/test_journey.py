"""A newcomer's own model, as they would run it: a model class in a file of their own, trained
by their own script, saved as an snnc checkpoint, then compiled, verified, quantized and
searched with the `snnc` command from that folder, with --trust-code and no environment
variables (docs/model_files.md, "Your own model")."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "samples" / "digits"

MODEL = '''
import torch
from torch import nn
from spikingjelly.activation_based import functional, layer, neuron


class MyCNN(nn.Module):
    """A small spiking CNN for 16x16 digits: the same image at each of T steps."""

    def __init__(self, steps: int = 4, channels: int = 8):
        super().__init__()
        self.steps = steps
        self.net = nn.Sequential(
            layer.Conv2d(1, channels, 3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.LIFNode(detach_reset=True), layer.MaxPool2d(2),
            layer.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            layer.BatchNorm2d(2 * channels), neuron.LIFNode(detach_reset=True),
            layer.MaxPool2d(2), layer.Flatten(), layer.Linear(2 * channels * 16, 10))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1)
        return self.net(x).mean(0)
'''

TRAIN = '''
import numpy as np
import torch
from spikingjelly.activation_based import functional

from mycnn import MyCNN
from snnc.loader import make_checkpoint

data = np.load("train.npz")
x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
torch.manual_seed(0)
model = MyCNN(steps=4, channels=8)
optimizer = torch.optim.Adam(model.parameters(), 3e-3)
for epoch in range(3):
    for i in range(0, len(y), 32):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(model)
model.eval()
torch.save(make_checkpoint("mycnn:MyCNN", {"steps": 4, "channels": 8}, model, [1, 1, 16, 16]),
           "mycnn.pt")
'''


def _snnc_command() -> list[str]:
    """The `snnc` console script of this environment, as a user runs it (`python -m snnc`
    would put the current directory on the import path itself and hide what is tested)."""
    script = pathlib.Path(sys.executable).with_name("snnc")
    if script.is_file():
        return [str(script)]
    if sys.version_info >= (3, 11):  # -P: no current directory on sys.path
        return [sys.executable, "-P", "-m", "snnc"]
    pytest.skip("no snnc console script next to this interpreter")


def _environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The user's folder: mycnn.py, train.py, a slice of the digits sample's data, and the
    checkpoint train.py saved (trained a few epochs: it fires and classifies)."""
    d = tmp_path_factory.mktemp("journey")
    (d / "mycnn.py").write_text(MODEL)
    (d / "train.py").write_text(TRAIN)
    for name, n in (("train", 320), ("val", 96), ("test", 96)):
        data = np.load(SAMPLES / f"{name}.npz")
        np.savez(d / f"{name}.npz", x=data["x"][:n], y=data["y"][:n])
    done = subprocess.run([sys.executable, "train.py"], cwd=d, env=_environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return d


def _run(folder, *args, stderr_file=None):
    done = subprocess.run([*_snnc_command(), *map(str, args)], cwd=folder, env=_environment(),
                          stdout=subprocess.PIPE, text=True, timeout=900,
                          stderr=stderr_file or subprocess.PIPE)
    err = done.stderr or ""
    assert "Traceback" not in err and "Triton" not in err, err
    return done


def test_a_users_own_model_from_its_folder(folder):
    """compile --verify, quantize --data, search and the searched model's compile, all from
    the folder with --trust-code: every step works, the compiled models agree with PyTorch
    on every test sample, and quantize reports both accuracies."""
    compiled = _run(folder, "compile", "mycnn.pt", "-o", "mycnn.onnx", "--trust-code",
                    "--verify", "test.npz")
    assert compiled.returncode == 0, compiled.stderr
    assert "top-1 agreement      100.00 %" in compiled.stdout
    (folder / "q.json").write_text(json.dumps({"*": {"scheme": "uniform", "bits": 4}}))
    quantized = _run(folder, "quantize", "mycnn.pt", "--config", "q.json", "-o", "mycnn_q.pt",
                     "--data", "test.npz", "--trust-code")
    assert quantized.returncode == 0, quantized.stderr
    assert "accuracy on test.npz (96 samples, PyTorch): float" in quantized.stdout
    listed = _run(folder, "inspect", "mycnn_q.pt", "--trust-code", "--json")
    assert listed.returncode == 0, listed.stderr
    layers = json.loads(listed.stdout)["layers"]
    assert [(r["name"], r["scheme"], r["bits"]) for r in layers] == [
        ("net.0", "uniform", 4), ("net.4", "uniform", 4), ("net.9", "uniform", 4)]
    searched = _run(folder, "search", "mycnn.pt", "--train", "train.npz", "--val", "val.npz",
                    "--method", "sensitivity", "--max-bits", "4", "--finetune-epochs", "1",
                    "-o", "config.json", "--quantized", "searched.pt", "--trust-code", "-q")
    assert searched.returncode == 0, searched.stderr
    assert "average bits" in searched.stdout  # -q keeps the result
    again = _run(folder, "compile", "searched.pt", "-o", "searched.onnx", "--trust-code",
                 "--verify", "test.npz", "-q")
    assert again.returncode == 0, again.stderr
    assert "top-1 agreement      100.00 %" in again.stdout
    assert not list(folder.glob("*.state")), "a finished search leaves no state file"


def test_verify_shows_progress_when_stderr_is_a_file(folder, tmp_path):
    """stderr to a file (a CI log): verify writes plain progress lines there, the result goes
    to stdout; -q on compile keeps the result and drops the progress."""
    if not (folder / "mycnn.onnx").exists():
        assert _run(folder, "compile", "mycnn.pt", "-o", "mycnn.onnx", "--trust-code",
                    "-q").returncode == 0
    log = tmp_path / "stderr.txt"
    with open(log, "w") as f:
        done = _run(folder, "verify", "mycnn.pt", "mycnn.onnx", "--data", "test.npz",
                    "--batch-size", "16", "--trust-code", stderr_file=f)
    assert done.returncode == 0
    lines = [line for line in log.read_text().splitlines() if "verify" in line]
    assert len(lines) >= 4 and "0/96" in lines[0] and "96/96" in lines[-1], lines
    assert "\r" not in log.read_text()
    assert "top-1 agreement" in done.stdout
    quiet = _run(folder, "compile", "mycnn.pt", "-o", "q.onnx", "--trust-code", "--verify",
                 "test.npz", "-q")
    assert quiet.returncode == 0 and "top-1 agreement" in quiet.stdout
    assert "verify" not in quiet.stderr and "wrote q.onnx" in quiet.stdout


def test_the_refusal_says_where_snnc_looked(folder, tmp_path):
    """From another folder, the factory's module is not found: the error names the current
    directory and what to do, and nothing is written."""
    shutil.copy(folder / "mycnn.pt", tmp_path / "mycnn.pt")
    done = _run(tmp_path, "compile", "mycnn.pt", "-o", "m.onnx", "--trust-code")
    assert done.returncode == 1
    assert f"current directory ({tmp_path})" in done.stderr
    assert "run snnc from the folder that holds mycnn.py" in done.stderr
    assert not (tmp_path / "m.onnx").exists()
