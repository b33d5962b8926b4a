"""Every subcommand on bad and hostile inputs: each case must exit non-zero with one paragraph
(one `snnc: error:` line, no blank line, no traceback, not an internal error), leave no
output behind and change no input: the case's directory is byte-identical before and after.

Cases run in-process (click's CliRunner, the same `main`), a few also as real processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import snnc
from snnc.cli import main
from snnc.demo import conv_snn, export
from snnc.driver import compile_file
from snnc.files.loader import make_checkpoint
from snnc.options import Options

CONFIG = {"conv1": {"scheme": "uniform", "bits": 4}, "conv2": {"scheme": "pot", "bits": 3},
          "head": {"scheme": "pot", "bits": 5}}
CASES = {}


def case(subcommand: str, env: dict[str, str | None] | None = None):
    """Register `fn(d, fx) -> args`; fn builds its files in the case directory d. `env`: the
    environment variables the command runs with (None unsets one)."""
    def register(fn):
        fn.env = env
        CASES[f"{subcommand}-{fn.__name__}"] = fn
        return fn
    return register


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Good files to start from: a quantized conv SNN as export archive and checkpoint, its
    compiled .onnx/.ort/.snnpack, data, and the float model's export."""
    root = tmp_path_factory.mktemp("good")
    model = conv_snn()
    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, model, [2, 2, 12, 12]),
               root / "float_ckpt.pt")
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(root / "float.pt"))
    snnc.quantize(model, CONFIG)
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(root / "model.pt"))
    compile_file(str(root / "model.pt"), str(root / "model.onnx"), ort=True)
    compile_file(str(root / "model.pt"), str(root / "skeleton.onnx"),
                 Options(external_weights=True), pack_path=str(root / "model.snnpack"))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((6, 2, 12, 12), dtype=np.float32),
             y=rng.integers(0, 5, 6))
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


def use(d: Path, fx: Path, *names: str) -> list[str]:
    """Copy good files into the case directory; their paths."""
    for name in names:
        shutil.copy(fx / name, d / name)
    return [str(d / n) for n in names]


def checkpoint(d: Path, name: str, factory="snnc.demo:conv_snn", kwargs=None, shape=None,
               model=None, **extra) -> str:
    ckpt = make_checkpoint(factory, kwargs or {}, model or conv_snn(), shape or [2, 2, 12, 12])
    ckpt.update(extra)
    torch.save(ckpt, d / name)
    return str(d / name)


def npz(d: Path, name: str, **arrays) -> str:
    np.savez(d / name, **arrays)
    return str(d / name)


def with_nan(value=float("nan")):
    model = conv_snn()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = value
    return model


X = np.random.default_rng(1).random((6, 2, 12, 12), dtype=np.float32)
Y = np.arange(6) % 5


# ------------------------------------------------------------------------------ compile: MODEL

@case("compile")
def missing(d, fx):
    return ["compile", str(d / "nope.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def directory(d, fx):
    (d / "dir.pt").mkdir()
    return ["compile", str(d / "dir.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def fifo(d, fx):
    os.mkfifo(d / "pipe.pt")
    return ["compile", str(d / "pipe.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def device(d, fx):
    return ["compile", "/dev/null", "-o", str(d / "out.onnx")]


@case("compile")
def empty_file(d, fx):
    (d / "empty.pt").write_bytes(b"")
    return ["compile", str(d / "empty.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def random_bytes(d, fx):
    (d / "rand.pt").write_bytes(np.random.default_rng(2).bytes(5000))
    return ["compile", str(d / "rand.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def text_file(d, fx):
    (d / "notes.pt").write_text("hello, this is not a model\n")
    return ["compile", str(d / "notes.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def onnx_as_model(d, fx):
    onnx_path, = use(d, fx, "model.onnx")
    return ["compile", onnx_path, "-o", str(d / "out.onnx")]


@case("compile")
def ort_as_model(d, fx):
    ort_path, = use(d, fx, "model.ort")
    return ["compile", ort_path, "-o", str(d / "out.onnx")]


@case("compile")
def npz_as_model(d, fx):
    data, = use(d, fx, "data.npz")
    return ["compile", data, "-o", str(d / "out.onnx")]


@case("compile")
def plain_zip(d, fx):
    with zipfile.ZipFile(d / "a.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    return ["compile", str(d / "a.zip"), "-o", str(d / "out.onnx")]


@case("compile")
def pack_as_model(d, fx):
    pack, = use(d, fx, "model.snnpack")
    return ["compile", pack, "-o", str(d / "out.onnx")]


@case("compile")
def pickled_module(d, fx):
    torch.save(conv_snn(), d / "whole.pt")
    return ["compile", str(d / "whole.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def pickled_list(d, fx):
    torch.save([1, 2, 3], d / "list.pt")
    return ["compile", str(d / "list.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def bare_state_dict(d, fx):
    torch.save(conv_snn().state_dict(), d / "sd.pt")
    return ["compile", str(d / "sd.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def truncated_archive(d, fx):
    data = (fx / "model.pt").read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    return ["compile", str(d / "cut.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def corrupt_archive_member(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "bad.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            out.writestr(info, b"{not json" if info.filename.endswith("models/model.json")
                         else data)
    return ["compile", str(d / "bad.pt"), "-o", str(d / "out.onnx")]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _archive_with(d: Path, fx: Path, name: str, member_suffix: str, payload: bytes | None,
                  extra: tuple[str, bytes] | None = None) -> str:
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / name, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if payload is not None and info.filename.endswith(member_suffix):
                data = payload
            out.writestr(info, data)
        if extra:
            out.writestr(extra[0], extra[1])
    return str(d / name)


def _evil_pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save(_Evil(), buffer)
    return buffer.getvalue()


@case("compile")
def archive_with_code_in_sample_inputs(d, fx):
    path = _archive_with(d, fx, "evil.pt", "sample_inputs/model.pt", _evil_pickle())
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_custom_object(d, fx):
    path = _archive_with(d, fx, "evil.pt", "", None,
                         ("archive/data/constants/custom_obj_0", _evil_pickle()))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_nan_weight(d, fx):
    torch.export.save(export(with_nan(), torch.zeros(1, 2, 12, 12)), str(d / "nan.pt"))
    return ["compile", str(d / "nan.pt"), "-o", str(d / "out.onnx")]


def _edit_program_json(d: Path, fx: Path, name: str, edit) -> str:
    """A copy of the good archive whose models/*.json went through edit(dict)."""
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / name, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if "/models/" in info.filename:
                program = json.loads(data)
                edit(program)
                data = json.dumps(program).encode()
            out.writestr(info, data)
    return str(d / name)


def _set_first_size(program: dict, expr: str) -> None:
    """Make the first tensor's first size the shape expression `expr`."""
    values = program["graph_module"]["graph"]["tensor_values"]
    values[next(iter(values))]["sizes"][0] = {"as_expr": {"expr_str": expr,
                                                          "hint": {"as_int": 1}}}


def _size_expression_case(d: Path, fx: Path, name: str, expr: str) -> list[str]:
    """compile an archive whose first tensor has the shape expression `expr`."""
    path = _edit_program_json(d, fx, name, lambda program: _set_first_size(program, expr))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_code_in_a_shape_expression(d, fx):
    return _size_expression_case(d, fx, "sym.pt", "__import__('os').system('touch PWNED')")


@case("compile")
def archive_with_code_in_a_guard(d, fx):
    def edit(program):
        program["guards_code"] = ["L['x'].size()[0] == 1 or __import__('os').system('touch PWNED')"]
    return ["compile", _edit_program_json(d, fx, "guard.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_quote_in_a_guard(d, fx):
    def edit(program):
        program["guards_code"] = ["L['x\"); __import__(\"os\").system(\"touch PWNED\"); (\"']"
                                  ".size()[0] == 1"]
    return ["compile", _edit_program_json(d, fx, "guard.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_calling_a_python_function(d, fx):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.save"
    return ["compile", _edit_program_json(d, fx, "target.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_an_upper_case_object_member(d, fx):
    path = _archive_with(d, fx, "evil.pt", "", None,
                         ("archive/data/constants/OPAQUE_OBJ_0", _evil_pickle()))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_native_library(d, fx):
    path = _archive_with(d, fx, "aoti.pt", "", None,
                         ("archive/data/aotinductor/m/m.wrapper.so", b"\x7fELF"))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_path_outside(d, fx):
    path = _archive_with(d, fx, "slip.pt", "", None,
                         ("archive/data/weights/../../../../PWNED", b"x"))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_weight_bigger_than_its_record(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "bomb.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                meta = next(iter(config["config"].values()))["tensor_meta"]
                meta["sizes"] = [{"as_int": 1 << 29}] + meta["sizes"][1:]
                data = json.dumps(config).encode()
            out.writestr(info, data)
    return ["compile", str(d / "bomb.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_weight_of_another_shape(d, fx):
    model = conv_snn()
    program = export(model, torch.zeros(1, 2, 12, 12))
    torch.export.save(program, str(d / "good.pt"))
    src = zipfile.ZipFile(d / "good.pt")
    with zipfile.ZipFile(d / "shape.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                meta = config["config"]["conv1.weight"]["tensor_meta"]
                meta["sizes"], meta["strides"] = [{"as_int": 16}], [{"as_int": 1}]
                data = json.dumps(config).encode()
            out.writestr(info, data)
    (d / "good.pt").unlink()
    return ["compile", str(d / "shape.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def archive_without_sample_inputs(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "part.pt", "w") as out:
        for info in src.infolist():
            if "sample_inputs" not in info.filename:
                out.writestr(info, src.read(info.filename))
    return ["compile", str(d / "part.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def nan_threshold(d, fx):
    model = conv_snn()
    model.lif2.v_threshold = float("nan")
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(d / "thr.pt"))
    return ["compile", str(d / "thr.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def batchnorm_fold_overflows(d, fx):
    model = conv_snn()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = 3e38
        model.bn2.weight[0] = 100.0
    torch.export.save(export(model, torch.zeros(1, 2, 12, 12)), str(d / "big.pt"))
    return ["compile", str(d / "big.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def utf16_text(d, fx):
    (d / "notes.pt").write_bytes("a model? no\n".encode("utf-16"))
    return ["compile", str(d / "notes.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def latin1_text(d, fx):
    (d / "notes.pt").write_bytes("caf\xe9 cr\xe8me, pas un mod\xe8le\n".encode("latin-1"))
    return ["compile", str(d / "notes.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_code_in_an_input_name(d, fx):
    """torch.fx pastes placeholder names into the forward() it generates and exec's."""
    def edit(program):
        spec = program["graph_module"]["signature"]["input_specs"][0]
        arg = next(iter(spec.values()))["arg"]
        arg["name"] = "*b, c=__import__('os').system('touch PWNED')"
    return ["compile", _edit_program_json(d, fx, "name.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_huge_shape_symbol(d, fx):
    def edit(program):
        program["range_constraints"]["u100000000000"] = {"min_val": 0, "max_val": 10}
    return ["compile", _edit_program_json(d, fx, "range.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_huge_power(d, fx):
    return _size_expression_case(d, fx, "pow.pt", "Integer(10)**Integer(10)**Integer(12)")


@case("compile")
def archive_with_a_malformed_program(d, fx):
    def edit(program):
        program["graph_module"] = [1]
    return ["compile", _edit_program_json(d, fx, "bad.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_unknown_text_fields(d, fx):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["code"] = "import os"
    return ["compile", _edit_program_json(d, fx, "text.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_sample_input_bomb(d, fx):
    nested = [0, 0]
    for _ in range(40):
        nested = [nested, nested]
    buffer = io.BytesIO()
    torch.save(((torch.zeros(1, 2, 12, 12),), {"extra": nested}), buffer)
    path = _archive_with(d, fx, "sample.pt", "sample_inputs/model.pt", buffer.getvalue())
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_zero_stride_weight(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "stride.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                meta = config["config"]["head.bias"]["tensor_meta"]
                meta["sizes"] = [{"as_int": 1 << 29}, {"as_int": 5}]
                meta["strides"] = [{"as_int": 0}, {"as_int": 1}]
                data = json.dumps(config).encode()
            out.writestr(info, data)
    return ["compile", str(d / "stride.pt"), "-o", str(d / "out.onnx")]


def _two_directories(members_torch, members_python) -> bytes:
    """A zip whose central directory reads differently in Python's zipfile (which adds the
    'concat' shift) and in torch's miniz reader (which does not)."""
    import struct
    import zlib

    def local(name, data):
        n = name.encode()
        return struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 0, 0, 0x21, zlib.crc32(data),
                           len(data), len(data), len(n), 0) + n + data

    def central(name, data, offset):
        n = name.encode()
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, 0, 0, 0x21,
                           zlib.crc32(data), len(data), len(data), len(n), 0, 0, 0, 0, 0,
                           offset) + n

    blob, torch_at, python_at = b"", [], []
    for name, data in members_torch:
        torch_at.append(len(blob))
        blob += local(name, data)
    for name, data in members_python:
        python_at.append(len(blob))
        blob += local(name, data)
    for_torch = b"".join(central(n, m, o) for (n, m), o in zip(members_torch, torch_at))
    shift = len(for_torch)
    for_python = b"".join(central(n, m, o - shift)
                          for (n, m), o in zip(members_python, python_at))
    end = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, len(members_python),
                      len(members_python), len(for_python), len(blob), 0)
    return blob + for_torch + for_python + end


@case("compile")
def archive_with_an_extra_member(d, fx):
    path = _archive_with(d, fx, "extra.pt", "", None, ("archive/extra/x.json", b"{}"))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_zip_bomb_record(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "bomb.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/weight_0"):
                out.writestr(info.filename, b"\0" * (40 << 20), zipfile.ZIP_DEFLATED)
            else:
                out.writestr(info, data)
    return ["compile", str(d / "bomb.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_high_precision_float(d, fx):
    return _size_expression_case(d, fx, "float.pt", "Float('1.5', precision=100000000)")


@case("compile")
def archive_with_a_max_of_many_symbols(d, fx):
    return _size_expression_case(d, fx, "max.pt",
                                 "Max(" + ",".join(f"s{i}" for i in range(200)) + ")")


@case("compile")
def archive_with_a_meta_device_record(d, fx):
    src = zipfile.ZipFile(fx / "model.pt")
    with zipfile.ZipFile(d / "meta.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["tensor_meta"]["device"] = {"type": "meta", "index": None}
                data = json.dumps(config).encode()
            out.writestr(info, data)
    return ["compile", str(d / "meta.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_parameter_named_forward(d, fx):
    def edit(program):
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if "parameter" in spec:
                spec["parameter"]["parameter_name"] = "__class__.forward"
                break
    return ["compile", _edit_program_json(d, fx, "fqn.pt", edit), "-o", str(d / "out.onnx")]


@case("compile")
def archive_with_a_zero_stride_conv(d, fx):
    def edit(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.conv2d.default":
                for arg in node["inputs"]:
                    if arg["name"] == "stride":
                        arg["arg"] = {"as_ints": [0, 0]}
                break
    return ["compile", _edit_program_json(d, fx, "stride.pt", edit), "-o", str(d / "out.onnx")]


# -------------------------------------------------------------------- compile: checkpoints

@case("compile")
def factory_os_system(d, fx):
    path = checkpoint(d, "c.pt", "os:system", {"command": "touch PWNED"})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_os_system_trusted(d, fx):
    path = checkpoint(d, "c.pt", "os:system", {"command": "touch PWNED"})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_subprocess(d, fx):
    path = checkpoint(d, "c.pt", "subprocess:call", {"args": ["touch", "PWNED"]})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_os_remove(d, fx):
    target, = use(d, fx, "data.npz")
    path = checkpoint(d, "c.pt", "os:remove", {"path": target})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_builtins_eval(d, fx):
    path = checkpoint(d, "c.pt", "builtins:eval", {"source": "print(1)"})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_shutil_rmtree(d, fx):
    path = checkpoint(d, "c.pt", "shutil:rmtree", {"path": str(d)})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_importlib(d, fx):
    path = checkpoint(d, "c.pt", "importlib:import_module", {"name": "antigravity"})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_torch_save(d, fx):
    path = checkpoint(d, "c.pt", "torch:save", {"obj": 1, "f": str(d / "x")})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_numpy_savetxt(d, fx):
    path = checkpoint(d, "c.pt", "numpy:savetxt", {"fname": str(d / "x"), "X": [1.0]})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_not_allowlisted(d, fx):
    path = checkpoint(d, "c.pt", "mypackage.models:build")
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_snnc_internal(d, fx):
    path = checkpoint(d, "c.pt", "snnc.files.paths:write_atomic",
                      {"path": str(d / "x"), "data": b"x"})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def factory_zoo_private(d, fx):
    path = checkpoint(d, "c.pt", "spikingjelly.activation_based.model.spikformer:_helper")
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_zoo_reexport(d, fx):
    path = checkpoint(d, "c.pt", "spikingjelly.activation_based.model.spikformer:torch")
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_zoo_pretrained(d, fx):
    path = checkpoint(d, "c.pt", "spikingjelly.activation_based.model.spikformer:"
                      "spikformer_cifar10", {"pretrained": True})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_malformed(d, fx):
    path = checkpoint(d, "c.pt", "no colon here")
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_not_a_string(d, fx):
    path = checkpoint(d, "c.pt", 123)
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def kwargs_not_a_dict(d, fx):
    path = checkpoint(d, "c.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["kwargs"] = [1, 2]
    torch.save(ckpt, path)
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_wrong_kwargs(d, fx):
    path = checkpoint(d, "c.pt", kwargs={"no_such_argument": 1})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def negative_input_shape(d, fx):
    path = checkpoint(d, "c.pt", shape=[-1, 2, 12, 12])
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def huge_input_shape(d, fx):
    path = checkpoint(d, "c.pt", shape=[100000, 2, 12000, 12000])
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def wrong_input_shape(d, fx):
    path = checkpoint(d, "c.pt", shape=[1, 7, 12, 12])
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_nan_weight(d, fx):
    path = checkpoint(d, "c.pt", model=with_nan())
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_inf_weight(d, fx):
    path = checkpoint(d, "c.pt", model=with_nan(float("inf")))
    return ["compile", path, "-o", str(d / "out.onnx")]


def _pickle_checkpoint(d: Path, name: str, body: bytes) -> str:
    """A torch.save zip whose data.pkl is `body` (a hand-written pickle)."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    src = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(d / name, "w") as out:
        for info in src.infolist():
            out.writestr(info, body if info.filename.endswith("data.pkl")
                         else src.read(info.filename))
    return str(d / name)


def _checkpoint_pickle(factory_ops: bytes) -> bytes:
    def text(s):
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()
    return (b"\x80\x02}(" + text("factory") + factory_ops + text("kwargs") + b"}"
            + text("state_dict") + b"}" + text("input_shape") + b"]K\x01au.")


@case("compile")
def checkpoint_nested_too_deep(d, fx):
    body = _checkpoint_pickle(b"]" * 5000 + b"a" * 4999)
    return ["compile", _pickle_checkpoint(d, "deep.pt", body), "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_of_shared_tuples(d, fx):
    laughs = b"]q\x00" + b"".join(b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq"
                                    + bytes([i]) for i in range(1, 41))
    body = _checkpoint_pickle(laughs)
    return ["compile", _pickle_checkpoint(d, "laugh.pt", body), "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_in_a_case_trick(d, fx):
    """The pickle stored as DATA.PKL: torch's reader finds records ignoring case."""
    buffer = io.BytesIO()
    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, conv_snn(), [2, 2, 12, 12]), buffer)
    src = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(d / "case.pt", "w") as out:
        for info in src.infolist():
            name = info.filename.replace("data.pkl", "DATA.PKL")
            out.writestr(name, src.read(info.filename))
    return ["compile", str(d / "case.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_in_the_legacy_format(d, fx):
    torch.save(make_checkpoint("snnc.demo:conv_snn", {}, conv_snn(), [2, 2, 12, 12]),
               d / "old.pt", _use_new_zipfile_serialization=False)
    return ["compile", str(d / "old.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_filled_after_memoized(d, fx):
    """Lists memoized while empty and filled afterwards, nested 5,000 deep."""
    import struct

    buffer = io.BytesIO()
    ckpt = make_checkpoint("snnc.demo:conv_snn", {}, conv_snn(), [2, 2, 12, 12])
    ckpt["format"] = "SENTINEL_0123456789"
    torch.save(ckpt, buffer)
    base, depth = 1 << 20, 5000
    chain = b"(" + b"]r" + struct.pack("<I", base)
    for i in range(1, depth):
        chain += b"(]r" + struct.pack("<I", base + i) + b"e" + b"j" + struct.pack("<I", base + i)
    chain += b"t"
    sentinel = b"X" + struct.pack("<I", 19) + b"SENTINEL_0123456789"
    src = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(d / "deep.pt", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            out.writestr(info, data.replace(sentinel, chain) if info.filename.endswith(
                "data.pkl") else data)
    return ["compile", str(d / "deep.pt"), "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_of_a_huge_model(d, fx):
    path = checkpoint(d, "c.pt", "spikingjelly.activation_based.model.spikformer:Spikformer",
                      {"embed_dims": 16384, "img_size_h": 32, "img_size_w": 32,
                       "patch_size": 4})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_calling_bytearray(d, fx):
    """bytearray(n) is on torch's weights-only allowlist; bytearray(4e9) takes 4 GB."""
    return ["compile", checkpoint(d, "c.pt", kwargs={"x": bytearray(8)}), "-o",
            str(d / "out.onnx")]


@case("compile")
def checkpoint_with_a_big_dict_key(d, fx):
    path = checkpoint(d, "c.pt", kwargs={}, extra_key={tuple(range(100)): 1})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_pretrained_tensor(d, fx):
    path = checkpoint(d, "c.pt", "spikingjelly.activation_based.model.spikformer:"
                      "spikformer_cifar10", {"pretrained": torch.zeros(2)})
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def checkpoint_quantization_not_a_dict(d, fx):
    path = checkpoint(d, "c.pt", quantization=torch.zeros(2))
    return ["compile", path, "-o", str(d / "out.onnx")]


@case("compile")
def factory_sympy_parse_expr(d, fx):
    path = checkpoint(d, "c.pt", "sympy.parsing.sympy_parser:parse_expr",
                      {"s": "__import__('os').system('touch PWNED')"})
    return ["compile", path, "-o", str(d / "out.onnx"), "--trust-code"]


@case("compile")
def output_through_missing_directory(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "nodir" / ".." / "out.onnx")]


@case("compile")
def output_ends_in_dot(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx") + "/."]


@case("compile")
def dump_ir_is_the_pack(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--pack", str(d / "h.snnpack"),
            "--dump-ir", str(d / "h.snnpack")]


@case("compile")
def dump_ir_parent_missing(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--dump-ir", str(d / "a" / "b" / "c")]


@case("compile")
def empty_report_path(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--report", ""]


@case("compile")
def pickle_with_bad_input_shape(d, fx):
    torch.save(conv_snn(), d / "whole.pt")
    return ["compile", str(d / "whole.pt"), "-o", str(d / "out.onnx"), "--trust-pickle",
            "--input-shape", "a,b"]


# ----------------------------------------------------------------------------- compile: outputs

@case("compile")
def output_is_model(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", model]


@case("compile")
def output_symlink_to_model(d, fx):
    model, = use(d, fx, "model.pt")
    os.symlink(model, d / "link.onnx")
    return ["compile", model, "-o", str(d / "link.onnx")]


@case("compile")
def output_hard_link_to_model(d, fx):
    model, = use(d, fx, "model.pt")
    os.link(model, d / "hard.onnx")
    return ["compile", model, "-o", str(d / "hard.onnx")]


@case("compile")
def output_dotdot_to_model(d, fx):
    model, = use(d, fx, "model.pt")
    (d / "sub").mkdir()
    return ["compile", model, "-o", str(d / "sub" / ".." / "model.pt")]


@case("compile")
def pack_is_model(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--pack", model]


@case("compile")
def pack_is_output(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--pack", str(d / "out.onnx")]


@case("compile")
def ort_output_is_pack(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--ort", "--pack", str(d / "out.ort")]


@case("compile")
def ort_output_is_model(d, fx):
    (d / "m.ort").write_bytes((fx / "model.pt").read_bytes())
    return ["compile", str(d / "m.ort"), "-o", str(d / "m.onnx"), "--ort"]


@case("compile")
def report_is_model(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--report", model]


@case("compile")
def report_figure_is_model(d, fx):
    (d / "r.png").write_bytes((fx / "model.pt").read_bytes())
    return ["compile", str(d / "r.png"), "-o", str(d / "out.onnx"), "--report", str(d / "r.json")]


@case("compile")
def report_png_path(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--report", str(d / "r.png")]


@case("compile")
def empty_output(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", ""]


@case("compile")
def empty_model(d, fx):
    return ["compile", "", "-o", str(d / "out.onnx")]


@case("compile")
def output_is_directory(d, fx):
    model, = use(d, fx, "model.pt")
    (d / "outdir").mkdir()
    return ["compile", model, "-o", str(d / "outdir")]


@case("compile")
def output_directory_missing(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "no" / "such" / "out.onnx")]


@case("compile")
def output_is_fifo(d, fx):
    model, = use(d, fx, "model.pt")
    os.mkfifo(d / "out.onnx")
    return ["compile", model, "-o", str(d / "out.onnx")]


@case("compile")
def dump_ir_over_model(d, fx):
    (d / "dump").mkdir()
    shutil.copy(fx / "model.pt", d / "dump" / "00-frontend.ir")
    return ["compile", str(d / "dump" / "00-frontend.ir"), "-o", str(d / "out.onnx"),
            "--dump-ir", str(d / "dump")]


@case("compile")
def dump_ir_is_file(d, fx):
    model, = use(d, fx, "model.pt")
    (d / "dumpfile").write_text("x")
    return ["compile", model, "-o", str(d / "out.onnx"), "--dump-ir", str(d / "dumpfile")]


@case("compile")
def external_without_pack(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--weights", "external"]


@case("compile")
def ort_with_int4(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--ort", "--weight-container", "int4"]


@case("compile")
def float_model_with_pack(d, fx):
    model, = use(d, fx, "float.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--pack", str(d / "out.snnpack")]


@case("compile")
def unknown_option_value(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--timesteps", "sideways"]


@case("compile")
def missing_output_option(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model]


# ------------------------------------------------------------------------ compile --verify DATA

@case("compile")
def verify_data_wrong_shape(d, fx):
    model, = use(d, fx, "model.pt")
    data = npz(d, "d.npz", x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4, int))
    return ["compile", model, "-o", str(d / "out.onnx"), "--verify", data]


@case("compile")
def verify_data_nan(d, fx):
    model, = use(d, fx, "model.pt")
    x = X.copy()
    x[2, 0, 0, 0] = np.nan
    return ["compile", model, "-o", str(d / "out.onnx"), "--verify", npz(d, "d.npz", x=x, y=Y)]


@case("compile")
def verify_labels_out_of_range(d, fx):
    model, = use(d, fx, "model.pt")
    y = Y.copy()
    y[0] = 999
    return ["compile", model, "-o", str(d / "out.onnx"), "--verify", npz(d, "d.npz", x=X, y=y)]


@case("compile")
def verify_data_is_model(d, fx):
    model, = use(d, fx, "model.pt")
    return ["compile", model, "-o", str(d / "out.onnx"), "--verify", model]


@case("compile")
def verify_data_is_output(d, fx):
    model, data = use(d, fx, "model.pt", "data.npz")
    return ["compile", model, "-o", data, "--verify", data]


# -------------------------------------------------------------------------------------- verify

def _verify_files(d, fx):
    return use(d, fx, "model.pt", "model.onnx", "data.npz")


@case("verify")
def swapped_arguments(d, fx):
    model, onnx_path, data = _verify_files(d, fx)
    return ["verify", onnx_path, model, "--data", data]


@case("verify")
def compiled_is_a_checkpoint(d, fx):
    model, _, data = _verify_files(d, fx)
    return ["verify", model, model, "--data", data]


@case("verify")
def compiled_is_random(d, fx):
    model, _, data = _verify_files(d, fx)
    (d / "r.onnx").write_bytes(np.random.default_rng(3).bytes(3000))
    return ["verify", model, str(d / "r.onnx"), "--data", data]


@case("verify")
def other_source(d, fx):
    _, onnx_path, data = _verify_files(d, fx)
    other, = use(d, fx, "float.pt")
    return ["verify", other, onnx_path, "--data", data]


@case("verify")
def no_fingerprint(d, fx):
    model, onnx_path, data = _verify_files(d, fx)
    proto = onnx.load(onnx_path)
    del proto.metadata_props[:]
    onnx.save(proto, onnx_path)
    return ["verify", model, onnx_path, "--data", data]


@case("verify")
def data_nan(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    x = X.copy()
    x[1, 1, 1, 1] = np.nan
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=x, y=Y)]


@case("verify")
def data_inf(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    x = X.copy()
    x[0, 0, 0, 0] = -np.inf
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=x, y=Y)]


@case("verify")
def data_float64_overflow(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    x = X.astype(np.float64)
    x[0, 0, 0, 0] = 1e300
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=x, y=Y)]


@case("verify")
def data_complex(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X.astype(np.complex64), y=Y)]


@case("verify")
def data_strings(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data",
            npz(d, "d.npz", x=np.array([["a", "b"]] * 6), y=Y)]


@case("verify")
def labels_999(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X, y=Y + 994)]


@case("verify")
def labels_negative(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    y = Y.copy()
    y[3] = -1
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X, y=y)]


@case("verify")
def labels_float(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X, y=Y + 0.5)]


@case("verify")
def labels_wrong_count(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X, y=Y[:3])]


@case("verify")
def data_without_x(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", inputs=X)]


@case("verify")
def data_wrong_sample_shape(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X[:, :1], y=Y)]


@case("verify")
def data_empty(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X[:0], y=Y[:0])]


@case("verify")
def data_object_pickle(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    np.savez(d / "d.npz", x=np.array([_Evil()] * 6, dtype=object), y=Y)
    return ["verify", model, onnx_path, "--data", str(d / "d.npz")]


@case("verify")
def data_is_random(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    (d / "d.npz").write_bytes(np.random.default_rng(4).bytes(999))
    return ["verify", model, onnx_path, "--data", str(d / "d.npz")]


@case("verify")
def data_fifo(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    os.mkfifo(d / "d.npz")
    return ["verify", model, onnx_path, "--data", str(d / "d.npz")]


@case("verify")
def pack_not_a_pack(d, fx):
    model, onnx_path, data = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", data, "--pack", data]


@case("verify")
def pack_corrupt(d, fx):
    model, data, skeleton, pack = use(d, fx, "model.pt", "data.npz", "skeleton.onnx",
                                      "model.snnpack")
    blob = bytearray(Path(pack).read_bytes())
    blob[-5] ^= 0xFF
    Path(pack).write_bytes(bytes(blob))
    return ["verify", model, skeleton, "--data", data, "--pack", pack]


@case("verify")
def skeleton_without_pack(d, fx):
    model, data, skeleton = use(d, fx, "model.pt", "data.npz", "skeleton.onnx")
    return ["verify", model, skeleton, "--data", data]


@case("verify")
def min_agreement_nan(d, fx):
    model, onnx_path, data = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", data, "--min-agreement", "nan"]


@case("verify")
def other_source_with_unknown_ops(d, fx):
    """--allow-other-source compares any SOURCE, but runs it only if snnc knows its ops."""
    _, onnx_path, data = _verify_files(d, fx)

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.sin(x).flatten(1)[:, :5]

    torch.export.save(export(Odd().eval(), torch.zeros(1, 2, 12, 12)), str(d / "odd.pt"))
    return ["verify", str(d / "odd.pt"), onnx_path, "--data", data, "--allow-other-source"]


@case("verify")
def data_timedelta(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    x = X.astype(np.int64).astype("timedelta64[s]")
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=x, y=Y)]


@case("verify")
def labels_beyond_int64(d, fx):
    model, onnx_path, _ = _verify_files(d, fx)
    y = Y.astype(np.uint64)
    y[0] = np.iinfo(np.uint64).max
    return ["verify", model, onnx_path, "--data", npz(d, "d.npz", x=X, y=y)]


@case("verify")
def batch_size_zero(d, fx):
    model, onnx_path, data = _verify_files(d, fx)
    return ["verify", model, onnx_path, "--data", data, "--batch-size", "0"]


# ------------------------------------------------------------------------------------ quantize

def _quantize_files(d, fx):
    return use(d, fx, "float_ckpt.pt", "config.json")


@case("quantize")
def output_is_input(d, fx):
    model, config = _quantize_files(d, fx)
    return ["quantize", model, "--config", config, "-o", model]


@case("quantize")
def output_is_config(d, fx):
    model, config = _quantize_files(d, fx)
    return ["quantize", model, "--config", config, "-o", config]


@case("quantize")
def config_missing(d, fx):
    model, _ = _quantize_files(d, fx)
    return ["quantize", model, "--config", str(d / "none.json"), "-o", str(d / "q.pt")]


@case("quantize")
def config_not_json(d, fx):
    model, config = _quantize_files(d, fx)
    Path(config).write_text("{conv1: uniform")
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def config_a_list(d, fx):
    model, config = _quantize_files(d, fx)
    Path(config).write_text("[1, 2]")
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def config_bad_bits(d, fx):
    model, config = _quantize_files(d, fx)
    Path(config).write_text(json.dumps({"conv1": {"scheme": "pot", "bits": 9}}))
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def model_is_archive(d, fx):
    model, config = use(d, fx, "model.pt", "config.json")
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def model_is_onnx(d, fx):
    model, config = use(d, fx, "model.onnx", "config.json")
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def factory_os_system(d, fx):
    _, config = _quantize_files(d, fx)
    path = checkpoint(d, "c.pt", "os:system", {"command": "touch PWNED"})
    return ["quantize", path, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def factory_not_allowlisted(d, fx):
    _, config = _quantize_files(d, fx)
    path = checkpoint(d, "c.pt", "some_pkg:net")
    return ["quantize", path, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def nan_weights(d, fx):
    _, config = _quantize_files(d, fx)
    path = checkpoint(d, "c.pt", model=with_nan())
    return ["quantize", path, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def nan_in_a_float_layer(d, fx):
    _, config = _quantize_files(d, fx)
    model = conv_snn()
    with torch.no_grad():
        model.bn1.running_var[0] = float("inf")
    path = checkpoint(d, "c.pt", model=model)
    return ["quantize", path, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def config_scheme_a_list(d, fx):
    model, config = _quantize_files(d, fx)
    Path(config).write_text(json.dumps({"conv1": {"scheme": ["pot"], "bits": 4}}))
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt")]


@case("quantize")
def calibration_nan(d, fx):
    model, config = _quantize_files(d, fx)
    x = X.copy()
    x[0, 0, 0, 0] = np.nan
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt"), "--calibration",
            npz(d, "c.npz", x=x)]


@case("quantize")
def calibration_not_npz(d, fx):
    model, config = _quantize_files(d, fx)
    return ["quantize", model, "--config", config, "-o", str(d / "q.pt"), "--calibration",
            config]


@case("quantize")
def already_quantized(d, fx):
    model, config = _quantize_files(d, fx)
    quantized = checkpoint(d, "q0.pt", quantization={"config": CONFIG, "method": "mse"})
    return ["quantize", quantized, "--config", config, "-o", str(d / "q.pt")]


# ------------------------------------------------------------------------------------- inspect

@case("inspect")
def missing_pack(d, fx):
    return ["inspect", str(d / "none.snnpack")]


@case("inspect")
def onnx_as_pack(d, fx):
    onnx_path, = use(d, fx, "model.onnx")
    return ["inspect", onnx_path]


@case("inspect")
def truncated_pack(d, fx):
    pack, = use(d, fx, "model.snnpack")
    Path(pack).write_bytes(Path(pack).read_bytes()[:100])
    return ["inspect", pack]


@case("inspect")
def checksum_mismatch(d, fx):
    pack, = use(d, fx, "model.snnpack")
    blob = bytearray(Path(pack).read_bytes())
    blob[200] ^= 1
    Path(pack).write_bytes(bytes(blob))
    return ["inspect", pack]


@case("inspect")
def pack_fifo(d, fx):
    os.mkfifo(d / "p.snnpack")
    return ["inspect", str(d / "p.snnpack")]


@case("inspect")
def pack_directory(d, fx):
    (d / "p.snnpack").mkdir()
    return ["inspect", str(d / "p.snnpack"), "--json"]


def _resealed(d: Path, fx: Path, edit) -> str:
    """The good pack with `edit(bytearray)` applied and its checksum recomputed."""
    import struct

    from snnc.backend import pack

    blob = bytearray((fx / "model.snnpack").read_bytes())
    edit(blob)
    struct.pack_into("<I", blob, 56, pack.checksum(bytes(blob)))
    (d / "p.snnpack").write_bytes(bytes(blob))
    return str(d / "p.snnpack")


@case("inspect")
def future_version(d, fx):
    return ["inspect", _resealed(d, fx, lambda b: b.__setitem__(slice(8, 10), b"\x63\x00"))]


@case("inspect")
def reserved_bytes_set(d, fx):
    return ["inspect", _resealed(d, fx, lambda b: b.__setitem__(60, 1))]


@case("inspect")
def bits_out_of_range(d, fx):
    return ["inspect", _resealed(d, fx, lambda b: b.__setitem__(64 + 17, 9))]


@case("inspect")
def layer_count_beyond_file(d, fx):
    return ["inspect", _resealed(d, fx, lambda b: b.__setitem__(slice(16, 20),
                                                                 (10 ** 6).to_bytes(4, "little")))]


@case("inspect")
def random_bytes_named_pack(d, fx):
    (d / "r.snnpack").write_bytes(np.random.default_rng(5).bytes(4000))
    return ["inspect", str(d / "r.snnpack"), "--json"]


@case("inspect")
def empty_pack(d, fx):
    (d / "e.snnpack").write_bytes(b"")
    return ["inspect", str(d / "e.snnpack")]


# ---------------------------------------------------- issue 20: search state and torchrun

SEARCH_OPTIONS = ["--method", "sensitivity", "--max-bits", "3", "--finetune-epochs", "2", "-q"]


def _search(d, fx, state=None, edit=None):
    """A search of the good float checkpoint on the good data in d, resuming `state` (a
    finished search's state for exactly these arguments, built once, with `edit(state)`
    applied) if given."""
    model, data = use(d, fx, "float_ckpt.pt", "data.npz")
    args = ["search", model, "--train", data, "--val", data, "-o", str(d / "c.json"),
            *SEARCH_OPTIONS]
    if state is None:
        return args
    good = fx / "search" / "c.json.state"
    if not good.exists():
        good.parent.mkdir(exist_ok=True)
        done = CliRunner().invoke(main, ["search", str(fx / "float_ckpt.pt"), "--train",
                                         str(fx / "data.npz"), "--val", str(fx / "data.npz"),
                                         "-o", str(good.parent / "c.json"), *SEARCH_OPTIONS])
        assert done.exit_code == 0, done.stderr
    saved = torch.load(good, weights_only=True)
    edit(saved)
    torch.save(saved, d / state)
    return args + ["--resume", "--state", str(d / state)]


def _first_weight(state) -> tuple[dict, str]:
    model = state["finetune"]["model"]
    return model, next(iter(model))


@case("search")
def state_nan_weights(d, fx):
    def edit(state):
        model, name = _first_weight(state)
        model[name] = model[name].clone().fill_(float("nan"))
    return _search(d, fx, "s.state", edit)


@case("search")
def state_unknown_field(d, fx):
    return _search(d, fx, "s.state", lambda state: state["points"][0].update(bonus=1))


@case("search")
def state_float_layer_without_allow_float(d, fx):
    return _search(d, fx, "s.state", lambda state: state["result"]["config"].update(
        conv1="float"))


@case("search")
def state_wrong_tensor_shape(d, fx):
    def edit(state):
        model, name = _first_weight(state)
        model[name] = model[name].reshape(-1)[:-1]
    return _search(d, fx, "s.state", edit)


@case("search")
def state_negative_second_moment(d, fx):
    def edit(state):
        moments = state["finetune"]["optimizer"]["state"][0]
        moments["exp_avg_sq"] = -1 - moments["exp_avg_sq"]
    return _search(d, fx, "s.state", edit)


@case("search")
def state_epoch_beyond_the_options(d, fx):
    return _search(d, fx, "s.state", lambda state: state["finetune"].update(epoch=10 ** 6))


@case("search")
def state_infinite_accuracy(d, fx):
    return _search(d, fx, "s.state", lambda state: state["points"][-1].update(
        accuracy=float("inf")))


@case("search")
def state_sweep_of_an_unknown_layer(d, fx):
    return _search(d, fx, "s.state", lambda state: state["sweep"].update(
        conv9=state["sweep"]["conv1"]))


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# a torchrun environment of two processes, this one process 0, with one variable made wrong
TORCHRUN = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": _free_port()}


@case("search", env=dict(TORCHRUN, WORLD_SIZE="two"))
def torchrun_world_size_text(d, fx):
    return _search(d, fx)


@case("search", env=dict(TORCHRUN, WORLD_SIZE="0"))
def torchrun_world_size_zero(d, fx):
    return _search(d, fx)


@case("search", env=dict(TORCHRUN, LOCAL_RANK="-1"))
def torchrun_local_rank_negative(d, fx):
    return _search(d, fx)


@case("search", env=dict(TORCHRUN, MASTER_ADDR="http://node1"))
def torchrun_master_addr_a_url(d, fx):
    return _search(d, fx)


@case("search", env=dict(TORCHRUN, SNNC_DIST_TIMEOUT="soon"))
def torchrun_timeout_not_a_number(d, fx):
    return _search(d, fx)


@case("search", env=dict(TORCHRUN, SNNC_DIST_TIMEOUT="1"))
def torchrun_world_of_two_alone(d, fx):
    return _search(d, fx)


# ------------------------------------------------------------------------------------ the check

def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: its type and, for files, a digest of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(mode):
                out[path] = "link -> " + os.readlink(path)
            else:
                out[path] = stat.filemode(mode)
    return out


def check_refusal(exit_code: int, stderr: str, before: dict, after: dict) -> None:
    assert exit_code in (1, 2), f"exit {exit_code} (3 is an internal error)\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = stderr[stderr.find("snnc: error:"):]
    assert stderr.count("snnc: error:") == 1 and "\n\n" not in errors.strip(), stderr
    assert "internal error" not in stderr, stderr
    assert after == before, {k: (before.get(k), after.get(k))
                             for k in set(before) | set(after) if before.get(k) != after.get(k)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_cleanly(name, fx, tmp_path, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(d)  # a command run by a hostile factory would land here
    args = CASES[name](d, fx)
    before = snapshot(d)
    result = CliRunner().invoke(main, args, env=CASES[name].env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    check_refusal(result.exit_code, result.stderr, before, snapshot(d))
    assert not (d / "PWNED").exists()


def test_there_are_enough_cases():
    per_command = {}
    for name in CASES:
        per_command[name.split("-")[0]] = per_command.get(name.split("-")[0], 0) + 1
    assert sum(per_command.values()) >= 50 and set(per_command) == {
        "compile", "verify", "quantize", "inspect", "search"}, per_command


@pytest.mark.parametrize("name", ["compile-fifo", "compile-factory_os_system",
                                  "compile-archive_with_code_in_sample_inputs",
                                  "compile-archive_with_code_in_a_shape_expression",
                                  "compile-archive_with_code_in_an_input_name",
                                  "compile-checkpoint_filled_after_memoized",
                                  "compile-archive_without_sample_inputs",
                                  "compile-batchnorm_fold_overflows",
                                  "verify-other_source", "inspect-truncated_pack",
                                  "quantize-output_is_input"])
def test_real_processes_refuse_too(name, fx, tmp_path):
    """The installed entry point, in a fresh process (a FIFO must not block it)."""
    d = tmp_path / "case"
    d.mkdir()
    args = CASES[name](d, fx)
    before = snapshot(d)
    run = subprocess.run([sys.executable, "-m", "snnc", *args], capture_output=True, text=True,
                         cwd=d, timeout=120)
    check_refusal(run.returncode, run.stderr, before, snapshot(d))
    assert not (d / "PWNED").exists()
    # nothing but snnc's own lines: the header, progress, the error (no library warnings)
    before_error = run.stderr[:run.stderr.find("snnc: error:")].splitlines()
    assert all(line.startswith(("snnc compile ", "  ")) and "Warning" not in line
               and "Traceback" not in line for line in before_error), run.stderr


def test_torch_reads_what_snnc_checked(fx, tmp_path, monkeypatch):
    """A zip whose central directory reads as the good archive in Python's zipfile and as
    one whose model.json calls os.system in torch's reader: snnc checks the first and hands
    torch a copy of exactly that, so the compile succeeds and nothing runs."""
    monkeypatch.chdir(tmp_path)
    src = zipfile.ZipFile(fx / "model.pt")
    good = [(i.filename, src.read(i.filename)) for i in src.infolist()]
    evil = []
    for name, data in good:
        if name.endswith("/models/model.json"):
            program = json.loads(data)
            _set_first_size(program, "__import__('os').system('touch PWNED')")
            data = json.dumps(program).encode()
        evil.append((name, data))
    (tmp_path / "two.pt").write_bytes(_two_directories(evil, good))
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "two.pt"), "-o",
                                       str(tmp_path / "two.onnx"), "-q"])
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "two.onnx").read_bytes() == compile_file(
        str(fx / "model.pt"), str(tmp_path / "ref.onnx")).data


def test_archives_torch_writes_pass_the_checks(tmp_path):
    """The archive checks refuse only what torch.export.save never writes: a dynamic-batch
    export (shape symbols, Min/Mul expressions, range constraints) and one with lifted
    constants both pass, and load."""
    from snnc.files import archive, loader

    class WithConstant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.ones(3)
            self.register_buffer("b", torch.zeros(3), persistent=False)

        def forward(self, x):
            return x * self.c + self.b

    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = torch.export.export(conv_snn(), (torch.zeros(2, 2, 12, 12),),
                                  dynamic_shapes=({0: batch},))
    constant = torch.export.export(WithConstant(), (torch.zeros(2, 3),))
    for name, program in (("dynamic.pt2", dynamic), ("constant.pt2", constant)):
        torch.export.save(program, str(tmp_path / name))
        archive.check_export(str(tmp_path / name))
        assert loader.load_program(str(tmp_path / name)) is not None


def tally() -> str:
    """Run every case and count, per subcommand: tried, refused cleanly, raw tracebacks,
    outputs left, inputs changed (`python3 runtime_tests/test_bad_inputs.py`)."""
    import tempfile
    import warnings

    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="snnc-bad-"))
    good = root / "good"
    good.mkdir()
    fixtures = fx.__wrapped__(type("Factory", (), {"mktemp": lambda self, name: good})())
    rows: dict[str, list[int]] = {}
    for name, build in sorted(CASES.items()):
        d = root / name
        d.mkdir()
        os.chdir(d)
        args = build(d, fixtures)
        before = snapshot(d)
        result = CliRunner().invoke(main, args, env=build.env)
        after = snapshot(d)
        row = rows.setdefault(name.split("-")[0], [0, 0, 0, 0, 0])
        traceback = result.exception is not None and not isinstance(result.exception,
                                                                    SystemExit)
        try:
            check_refusal(result.exit_code, result.stderr, before, after)
            clean = not traceback
        except AssertionError:
            clean = False
        row[0] += 1
        row[1] += clean
        row[2] += traceback or "Traceback" in result.stderr
        row[3] += any(k not in before for k in after)
        row[4] += any(after.get(k) != v for k, v in before.items())
    lines = [f"{'subcommand':<10} {'tried':>6} {'refused cleanly':>16} {'raw tracebacks':>15} "
             f"{'outputs left':>13} {'inputs changed':>15}"]
    for command, row in rows.items():
        lines.append(f"{command:<10} {row[0]:>6} {row[1]:>16} {row[2]:>15} {row[3]:>13} "
                     f"{row[4]:>15}")
    shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)


if __name__ == "__main__":
    print(tally())
