"""The C99 pack decoder (`snnc decoder -o DIR`, compiler/backend/c/): built with the system
compiler, with -O2 and with -fsanitize=address,undefined; its arrays equal snnc's
(`snnc.backend.pack.onnx_initializers`, what `snnc.runtime.pack_arrays` gives) for every
layout, scheme and bit width and for both samples' skeletons, which ONNX Runtime then runs
through its Python binding with the C decoder's arrays, exactly like the self-contained
model. The pack fuzz corpus (test_pack_fuzz.py) goes through it there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from snnc.backend import pack
from snnc.backend.runtime import pack_arrays
from snnc.quant.weights import unit
from test_cli import snnc as cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
# A harness linking snnpack.c: checks each file named on stdin; an accepted one's layers go
# to FILE.out as (dtype byte, ndim byte, ndim x u64 dims, u64 byte count, bytes) records.
HARNESS = r"""
#include "snnpack.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    char path[4096];
    while (fgets(path, sizeof path, stdin)) {
        FILE *f; long size; unsigned char *buf; uint32_t n, i; snnpack_error err;
        path[strcspn(path, "\n")] = 0;
        f = fopen(path, "rb"); fseek(f, 0, SEEK_END); size = ftell(f); fseek(f, 0, SEEK_SET);
        buf = malloc(size ? size : 1);
        if (fread(buf, 1, size, f) != (size_t)size) return 3;
        fclose(f);
        if (snnpack_check(buf, size, &n, &err)) { printf("refused %s\n", err.message); free(buf); continue; }
        strcat(path, ".out"); f = fopen(path, "wb");
        for (i = 0; i < n; i++) {
            snnpack_layer l; snnpack_tensor t; unsigned char head[2]; void *out; int d;
            snnpack_layer_at(buf, size, i, &l); snnpack_tensor_of(&l, &t);
            out = malloc(t.bytes ? t.bytes : 1);
            if (snnpack_decode(&l, out, t.bytes, &err)) return 4;
            head[0] = (unsigned char)t.dtype; head[1] = (unsigned char)t.ndim;
            fwrite(head, 1, 2, f);
            for (d = 0; d < t.ndim; d++) fwrite(&t.dims[d], 8, 1, f);
            fwrite(&t.bytes, 8, 1, f); fwrite(out, 1, t.bytes, f); free(out);
        }
        fclose(f); free(buf); printf("ok\n");
    }
    return 0;
}
"""


def _cc() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "no C compiler (cc, gcc or clang) on PATH: the C decoder's tests build it"
    return compiler


def run_harness(decoder, blobs: list[bytes], tmp_path) -> list:
    """Each blob through the sanitized harness: None if refused, else its arrays."""
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(str(tmp_path / f"m{i}.snnpack"))
        with open(paths[-1], "wb") as f:
            f.write(blob)
    done = subprocess.run([str(decoder / "harness")], input="\n".join(paths) + "\n",
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr[-3000:]
    verdicts = done.stdout.splitlines()
    assert len(verdicts) == len(blobs)
    return [None if v.startswith("refused") else _records(p + ".out")
            for v, p in zip(verdicts, paths)]


def _records(path: str) -> list[np.ndarray]:
    data, at, out = open(path, "rb").read(), 0, []
    while at < len(data):
        dtype, ndim = data[at], data[at + 1]
        dims = np.frombuffer(data, "<u8", ndim, at + 2).tolist()
        size = int(np.frombuffer(data, "<u8", 1, at + 2 + 8 * ndim)[0])
        start = at + 10 + 8 * ndim
        out.append(np.frombuffer(data[start:start + size], "<i1" if dtype == 1 else "<i2")
                   .reshape(dims))
        at = start + size
    return out


def _scales(rng, layout: int, scheme: str, bits: int, channels: int) -> np.ndarray:
    u = np.float32(unit(scheme, bits))
    if layout == pack.CODES:
        return np.full(channels, u, np.float32)
    if layout == pack.LEVELS:  # quantizer scales, and a folded int4 layer's -unit and +0
        s = rng.uniform(0.01, 2.0, channels).astype(np.float32)
        s[:2] = [-u, 0.0] if channels > 2 else s[:2]
        return s
    return rng.choice(np.array([u, -u, 0.0], np.float32), channels)


def _layer(rng, name: str, scheme: str, bits: int, layout: int, shape) -> pack.Layer:
    if scheme == "ternary":
        codes = rng.integers(-1, 2, shape)
    elif scheme == "binary":
        codes = rng.choice([-1, 1], shape)
    elif scheme == "uniform":
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape)
    else:
        codes = rng.integers(0, 1 << (bits - 1), shape) * rng.choice([-1, 1], shape)
        codes[..., 0] = (1 << (bits - 1)) - 1  # the largest level: several GEMM digits at 5 bits
    return pack.Layer(f"{name}.w", f"{name}.s" if layout == pack.LEVELS else "", scheme, bits,
                      codes.astype(np.int32), _scales(rng, layout, scheme, bits, shape[0]), layout)


KINDS = [(scheme, bits, layout) for scheme in pack.SCHEMES
         for bits in pack.BITS[scheme] for layout in pack.LAYOUTS
         if layout != pack.CODES or scheme == "pot"]


def test_every_layout_scheme_and_bit_width_decodes_as_snnc_does(decoder, tmp_path):
    """One pack per layout, scheme and bit width, each with a linear [5, 7], a conv
    [4, 3, 3, 2] and a conv1d [6, 2, 5] layer; the sanitized decoder's arrays equal snnc's
    bit for bit (dtype, shape, values)."""
    rng = np.random.default_rng(0)
    blobs = [pack.encode([_layer(rng, f"l{i}", s, b, lay, shape) for i, shape in
                          enumerate(((5, 7), (4, 3, 3, 2), (6, 2, 5)))]) for s, b, lay in KINDS]
    for blob, got in zip(blobs, run_harness(decoder, blobs, tmp_path)):
        want = pack.onnx_initializers(pack.decode(blob))
        assert got is not None and len(got) == len(want)
        for g, w in zip(got, want.values()):
            assert g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)
    wide = [w for blob in blobs for w in pack.onnx_initializers(pack.decode(blob)).values()]
    assert any(w.dtype == np.int16 for w in wide)  # int16 containers were covered
    gemm = pack.onnx_initializers(pack.decode(blobs[KINDS.index(("pot", 5, pack.GEMM))]))
    assert next(iter(gemm.values())).shape[1] == 3 * 5  # three base-128 digits per channel


def _sample(tmp_path, name: str) -> tuple[str, str, str]:
    """(skeleton, pack, self-contained model) of a bundled sample."""
    model = os.path.join(ROOT, "samples", name, "quantized.pt")
    skeleton, blob, whole = (str(tmp_path / f) for f in ("s.onnx", "s.snnpack", "w.onnx"))
    assert cli("compile", model, "-o", skeleton, "--pack", blob, "--weights", "external",
               "-q").returncode == 0
    assert cli("compile", model, "-o", whole, "-q").returncode == 0
    return skeleton, blob, whole


@pytest.mark.parametrize("name", ["digits", "digits_events"])
def test_an_app_runs_a_skeleton_with_the_c_decoders_arrays(decoder, tmp_path, name):
    """The C decoder's CLI (-O2 and sanitized) writes the manifest and one file per
    initializer, equal to snnc.runtime.pack_arrays; handed to ONNX Runtime with
    add_external_initializers (as an app does with AddExternalInitializers), the skeleton's
    outputs equal the self-contained model's on the sample's test split."""
    skeleton, blob, whole = _sample(tmp_path, name)
    want = pack_arrays(blob, onnx.load(skeleton, load_external_data=False), skeleton)
    for binary in ("snnpack_decode", "snnpack_decode_san"):
        out = tmp_path / binary
        out.mkdir()
        done = subprocess.run([str(decoder / binary), blob, str(out)], capture_output=True)
        assert done.returncode == 0 and not done.stderr, done.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        got = {e["name"]: np.fromfile(out / e["file"], "<i1" if e["dtype"] == "int8" else "<i2")
               .reshape(e["shape"]) for e in manifest}
        assert set(got) == set(want)
        for key, array in want.items():
            assert got[key].dtype == array.dtype and np.array_equal(got[key], array), key
    options = ort.SessionOptions()
    names = sorted(got)
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(got[n])) for n in names]
    options.add_external_initializers(names, values)
    app = ort.InferenceSession(skeleton, options, providers=["CPUExecutionProvider"])
    self_contained = ort.InferenceSession(whole, providers=["CPUExecutionProvider"])
    x = np.load(os.path.join(ROOT, "samples", name, "test.npz"))["x"][:64]
    if isinstance(app.get_inputs()[0].shape[0], int):  # time first: [T, N, ...]
        x = np.ascontiguousarray(np.moveaxis(x, 0, 1))
    feed = {app.get_inputs()[0].name: x}
    for a, b in zip(app.run(None, feed), self_contained.run(None, feed)):
        np.testing.assert_array_equal(a, b)


def test_the_decoder_refuses_bad_input_with_a_message(decoder, tmp_path):
    """A corrupt pack, a missing file and a missing directory: exit 1 and one line saying
    what to do; wrong usage exit 2; nothing written for a refused pack."""
    skeleton, blob, _ = _sample(tmp_path, "digits")
    bad = tmp_path / "bad.snnpack"
    data = bytearray(open(blob, "rb").read())
    data[200] ^= 1
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    binary = str(decoder / "snnpack_decode_san")
    for args, code, message in (([str(bad), str(out)], 1, "checksum mismatch"),
                                ([str(tmp_path / "none"), str(out)], 1, "cannot read the pack"),
                                ([blob, str(tmp_path / "nodir")], 1, "does it exist"),
                                ([blob], 2, "usage")):
        done = subprocess.run([binary, *args], capture_output=True, text=True)
        assert done.returncode == code and message in done.stderr, done.stderr
    assert not list(out.iterdir())


def test_a_skeleton_without_its_weights_says_what_to_do(tmp_path):
    """Plain ONNX Runtime opening a skeleton without the decoded arrays fails naming the pack
    and the two ways to load it (its references name no file that exists), instead of
    reading the pack's bytes as weights."""
    skeleton, blob, _ = _sample(tmp_path, "digits")
    with pytest.raises(Exception) as failure:
        ort.InferenceSession(skeleton, providers=["CPUExecutionProvider"])
    assert "snnc.runtime.load_session" in str(failure.value)
    assert "snnpack_decode" in str(failure.value) and os.path.basename(blob) in str(failure.value)


NO_ONNX = r"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):  # as if only numpy and onnxruntime were installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("onnx", "torch", "spikingjelly", "click", "onnxscript", "nir",
                                  "h5py", "matplotlib", "ml_dtypes"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Missing())
import numpy as np
from snnc.runtime import load_session
session = load_session(sys.argv[1], sys.argv[2])
x = np.load(sys.argv[3])
np.save(sys.argv[4], session.run(None, {session.get_inputs()[0].name: x})[0])
"""


def test_the_runtime_needs_only_numpy_and_onnxruntime(tmp_path):
    """snnc.runtime.load_session and the pack reader import and run a skeleton with its pack
    when onnx, torch and every other package but numpy and onnxruntime are missing (its own
    ONNX reader, snnc.files.onnx_lite); the outputs equal the self-contained model's."""
    skeleton, blob, whole = _sample(tmp_path, "digits")
    x = np.load(os.path.join(ROOT, "samples", "digits", "test.npz"))["x"][:32]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(NO_ONNX)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), skeleton, blob,
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    session = ort.InferenceSession(whole, providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_snncs_onnx_reader_reads_what_onnx_reads(tmp_path):
    """snnc.files.onnx_lite against the onnx package on compiled models (float, int8, int16
    and int4 containers, a skeleton): the same nodes, attributes, metadata, initializer
    types, dims and references, and the same values (int4 as int8 numbers)."""
    from onnx import numpy_helper

    from snnc.files import onnx_lite
    skeleton, _, whole = _sample(tmp_path, "digits_events")
    int4 = str(tmp_path / "int4.onnx")
    assert cli("compile", os.path.join(ROOT, "samples", "digits", "quantized.pt"), "-o", int4,
               "--weight-container", "int4", "-q").returncode == 0
    types = set()
    for path in (skeleton, whole, int4):
        a, b = onnx.load(path, load_external_data=False), onnx_lite.load(path)
        assert (a.ir_version, len(a.opset_import)) == (b.ir_version, len(b.opset_import))
        assert [(p.key, p.value) for p in a.metadata_props] == \
            [(p.key, p.value) for p in b.metadata_props]
        assert [(n.name, n.op_type, list(n.input), list(n.output),
                 [(t.name, t.i) for t in n.attribute]) for n in a.graph.node] == \
            [(n.name, n.op_type, n.input, n.output, [(t.name, t.i) for t in n.attribute])
             for n in b.graph.node]
        assert len(a.graph.initializer) == len(b.graph.initializer)
        for ta, tb in zip(a.graph.initializer, b.graph.initializer):
            assert (ta.name, ta.data_type, list(ta.dims), ta.data_location) == \
                (tb.name, tb.data_type, tb.dims, tb.data_location)
            assert [(e.key, e.value) for e in ta.external_data] == \
                [(e.key, e.value) for e in tb.external_data]
            types.add(ta.data_type)
            if ta.data_location != onnx.TensorProto.EXTERNAL:
                x, y = numpy_helper.to_array(ta), onnx_lite.to_array(tb)
                assert x.shape == y.shape and np.array_equal(x.astype(np.float64),
                                                             y.astype(np.float64))
    assert {onnx.TensorProto.INT4, onnx.TensorProto.INT8, onnx.TensorProto.FLOAT} <= types
