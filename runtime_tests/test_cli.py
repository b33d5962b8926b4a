"""The command line: the happy path, every model-file format, and clear errors on bad input
(non-zero exit, one paragraph, no traceback, no output file left behind)."""

from __future__ import annotations

import os
import types

import pytest
import torch
from click.testing import CliRunner

from snnc.cli import main
from snnc.demo import conv_snn, export
from snnc.files import loader


def snnc(*args):
    """The CLI run in this process, as `python -m snnc` would run it, without a new
    interpreter's seconds of imports per call (test_bad_inputs runs the real entry point).
    A bug in snnc still shows: the CLI turns it into exit 3."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="snnc")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout,
                                 stderr=result.stderr)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = conv_snn()
    path = root / "small.pt"
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(path))
    return {"root": root, "model": model, "path": str(path)}


def assert_clean_failure(run, output, *phrases):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "snnc: error:" in run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr
    assert not os.path.exists(output)
    leftovers = [f for f in os.listdir(os.path.dirname(output)) if f.startswith(".snnc-")]
    assert not leftovers


def test_compile_prints_summary_and_dumps_ir(small):
    out = small["root"] / "ok.onnx"
    dump = small["root"] / "dump"
    run = snnc("compile", small["path"], "-o", str(out), "--dump-ir", str(dump))
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 0
    for word in ("timesteps", "parameters", "ONNX nodes", "output size"):
        assert word in run.stdout
    names = sorted(os.listdir(dump))
    assert names == ["00-frontend.ir", "01-fold_batchnorm.ir", "02-fold_scales.ir",
                     "03-merge_reshapes.ir", "04-pot_to_shift.ir", "05-lower_integer.ir",
                     "06-check_ranges.txt", "07-unroll_timesteps.ir", "08-cast_spikes.ir",
                     "09-layout.ir", "10-remove_dead_nodes.ir"]
    assert "neuron(" in (dump / "00-frontend.ir").read_text()


def test_checkpoint_format(small):
    ckpt = loader.make_checkpoint("snnc.demo:conv_snn", {"neuron": "plif"},
                                  conv_snn(neuron="plif"), [2, 2, 12, 12])
    path = small["root"] / "ckpt.pt"
    torch.save(ckpt, str(path))
    out = small["root"] / "ckpt.onnx"
    run = snnc("compile", str(path), "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert out.exists()


def test_pickled_module_needs_trust(small):
    path = small["root"] / "whole.pt"
    torch.save(small["model"], str(path))
    out = small["root"] / "whole.onnx"
    assert_clean_failure(snnc("compile", str(path), "-o", str(out)), str(out),
                         "--trust-pickle", "arbitrary code")
    run = snnc("compile", str(path), "-o", str(out), "--trust-pickle", "--input-shape", "1,2,12,12")
    assert run.returncode == 0, run.stderr
    assert out.exists()


def test_missing_file(small):
    out = small["root"] / "missing.onnx"
    assert_clean_failure(snnc("compile", str(small["root"] / "nope.pt"), "-o", str(out)),
                         str(out), "no such file")


@pytest.mark.parametrize("content", [b"hello, not a model\n", b"PK\x03\x04garbage",
                                     b"\x80\x04K\x07."])
def test_non_model_file(small, content):
    path = small["root"] / "junk.pt"
    path.write_bytes(content)
    out = small["root"] / "junk.onnx"
    assert_clean_failure(snnc("compile", str(path), "-o", str(out)), str(out),
                         "not a model file")


def test_state_dict_alone_is_refused(small):
    path = small["root"] / "sd.pt"
    torch.save(small["model"].state_dict(), str(path))
    out = small["root"] / "sd.onnx"
    assert_clean_failure(snnc("compile", str(path), "-o", str(out)), str(out), "factory")


def test_unsupported_ops_are_all_listed_with_source_lines(small):
    from spikingjelly.activation_based import layer, neuron

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(2, 4, 3, padding=1, step_mode="m")
            self.lif = neuron.LIFNode(step_mode="m")

        def forward(self, x):
            x = x.unsqueeze(0).repeat(4, 1, 1, 1, 1)
            y = self.lif(self.conv(x))
            y = torch.sin(y)
            return torch.cumsum(y, dim=-1)

    path = small["root"] / "odd.pt"
    torch.export.save(export(Odd().eval(), torch.zeros(1, 2, 8, 8)), str(path))
    out = small["root"] / "odd.onnx"
    run = snnc("compile", str(path), "-o", str(out))
    assert_clean_failure(run, str(out), "2 operation(s)", "aten.sin", "aten.cumsum",
                         "test_cli.py:")


def test_existing_output_is_kept_on_failure(small):
    out = small["root"] / "keep.onnx"
    out.write_bytes(b"previous")
    run = snnc("compile", str(small["root"] / "nope.pt"), "-o", str(out))
    assert run.returncode != 0
    assert out.read_bytes() == b"previous"


def test_output_directory_missing(small):
    run = snnc("compile", small["path"], "-o", str(small["root"] / "no" / "dir" / "x.onnx"))
    assert run.returncode != 0 and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr


def test_max_neuron_steps_counts_what_the_compile_unrolls(small, tmp_path):
    """The conv SNN runs 2 neuron layers at T = 4: 8 steps per sample unrolled, 2 per call
    streamed. --max-neuron-steps refuses above that and the flag raises it (the API too)."""
    import snnc as api
    from snnc.frontend.budget import neuron_steps

    program = export(small["model"], torch.zeros(1, 2, 12, 12))
    assert (neuron_steps(program), neuron_steps(program, one_step=True)) == (8, 2)
    out = str(tmp_path / "m.onnx")
    assert_clean_failure(snnc("compile", small["path"], "-o", out, "--max-neuron-steps", "7"),
                         out, "8 neuron steps per sample", "--max-neuron-steps")
    assert snnc("compile", small["path"], "-o", out, "--max-neuron-steps", "8").returncode == 0
    stream = str(tmp_path / "s.onnx")
    ok = snnc("compile", small["path"], "-o", stream, "--timesteps", "stream",
              "--max-neuron-steps", "2")
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(api.BadInputError, match="neuron steps per sample"):
        api.compile(program, max_neuron_steps=7)
    assert api.compile(program, max_neuron_steps=8).model is not None
