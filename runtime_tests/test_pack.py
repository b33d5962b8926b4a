"""The packed-weight binary: exact round trip, size at the true bit width, the
external-weights deployment path, inspection, corrupt files, format versions, and packs
that do not fit their model (test_pack_fuzz.py throws thousands of mutants at the reader)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import snnc
from snnc import BadInputError
from snnc.backend import pack
from snnc.backend.runtime import load_session
from snnc.demo import conv_snn, make_firing
from snnc.driver import compile_file
from snnc.options import Options
from snnc.quant import quantize as quant


@pytest.mark.parametrize("scheme, bits", [("uniform", b) for b in range(2, 9)] +
                         [("pot", b) for b in range(2, 6)] + [("ternary", 2), ("binary", 1)])
def test_bit_packing_round_trips(scheme, bits):
    rng = np.random.default_rng(bits)
    if scheme in ("ternary", "binary"):  # five trits a byte; one sign bit
        codes = rng.choice([-1, 0, 1] if scheme == "ternary" else [-1, 1], size=(7, 3, 5))
        data = pack.pack_bits(codes, scheme, bits)
        assert len(data) == (21 if scheme == "ternary" else 14)  # ceil(105 / 5), ceil(105 / 8)
        assert np.array_equal(pack.unpack_bits(data, codes.size, scheme, bits), codes.reshape(-1))
        return
    if scheme == "uniform":
        codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(7, 3, 5))
    else:
        codes = rng.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), size=(7, 3, 5))
    codes = codes.astype(np.int32)
    data = pack.pack_bits(codes, scheme, bits)
    assert len(data) == -(-codes.size * bits // 8)
    assert np.array_equal(pack.unpack_bits(data, codes.size, scheme, bits).reshape(codes.shape),
                          codes)


@pytest.fixture(scope="module")
def packed(quantized_spikformer, tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    paths = {"full": str(root / "full.onnx"), "skeleton": str(root / "skeleton.onnx"),
             "pack": str(root / "model.snnpack")}
    compile_file(quantized_spikformer["path"], paths["full"])
    compile_file(quantized_spikformer["path"], paths["skeleton"],
                 Options(external_weights=True), pack_path=paths["pack"])
    return paths


def test_pack_holds_exactly_the_quantizer_codes(quantized_spikformer, packed):
    """The codes at their bit width; after fold_scales each channel's scale is the unit that
    makes the codes integer weights (+-1, +-2^E for PoT, 0 for a dead channel): the real
    scale lives in the neuron's threshold. PoT shift layers carry a channel's sign in its
    codes, which keeps them within their bit width."""
    with open(packed["pack"], "rb") as f:
        layers = {layer.name: layer for layer in pack.decode(f.read())}
    model = quantized_spikformer["model"]
    quantized = [(name, m) for name, m in model.named_modules()
                 if isinstance(m, quant.QUANTIZABLE) and hasattr(m, "parametrizations")]
    assert len(layers) == len(quantized) == 22
    for name, module in quantized:
        quantizer = module.parametrizations.weight[0]
        expected = quant.codes(module.parametrizations.weight.original, quantizer.scale,
                               quantizer.scheme, quantizer.bits).numpy()
        layer = layers[f"{name}.weight_codes"]
        assert (layer.scheme, layer.bits) == (quantizer.scheme, quantizer.bits)
        unit = 2.0 ** (2 ** (quantizer.bits - 1) - 2) if quantizer.scheme == "pot" else 1.0
        assert set(np.abs(layer.scales).tolist()) <= {0.0, unit}, name
        if quantizer.scheme == "uniform":
            assert np.array_equal(layer.codes, expected), name
        else:
            assert np.array_equal(np.abs(layer.codes), np.abs(expected)), name
            # channels are flipped whole, never in part
            signs = np.where(layer.codes.reshape(len(expected), -1) != 0,
                             np.sign(layer.codes * expected).reshape(len(expected), -1), 0)
            assert all(len(set(row[row != 0].tolist())) <= 1 for row in signs), name


def test_pack_size_is_the_true_bit_width(packed):
    size = os.path.getsize(packed["pack"])
    with open(packed["pack"], "rb") as f:
        layers = pack.decode(f.read())
    code_bytes = sum(layer.codes.size * layer.bits for layer in layers) / 8
    scale_bytes = sum(4 * layer.scales.size for layer in layers)
    weights = sum(layer.codes.size for layer in layers)
    average = 8 * code_bytes / weights
    ratio = size / (code_bytes + scale_bytes)
    print(f"pack {size:,} B; codes {code_bytes:,.0f} B + scales {scale_bytes:,} B; ratio "
          f"{ratio:.4f}; {4 * weights / size:.2f}x smaller than float32 weights; "
          f"average {average:.2f} bits")
    assert size <= 1.03 * code_bytes + scale_bytes + 4096
    assert pack.overhead(open(packed["pack"], "rb").read()) <= 4096


def test_external_weights_equal_the_self_contained_model(packed):
    skeleton_size = os.path.getsize(packed["skeleton"])
    assert skeleton_size < os.path.getsize(packed["full"]) / 4  # the weights are not in it
    full = load_session(packed["full"], intra_op_num_threads=2)
    explicit = load_session(packed["skeleton"], packed["pack"], intra_op_num_threads=2)
    implicit = load_session(packed["skeleton"])  # finds model.snnpack next to it
    # the self-contained model holds exactly the pack's 22 layers, so it takes the pack too
    checked = load_session(packed["full"], packed["pack"], intra_op_num_threads=2)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    want = full.run(None, {"x": x})[0]
    assert np.array_equal(explicit.run(None, {"x": x})[0], want)
    assert np.array_equal(implicit.run(None, {"x": x})[0], want)
    assert np.array_equal(checked.run(None, {"x": x})[0], want)
    assert np.abs(want).max() > 0


def test_skeleton_without_pack_fails_clearly(packed, tmp_path):
    lonely = tmp_path / "skeleton.onnx"
    lonely.write_bytes(open(packed["skeleton"], "rb").read())
    with pytest.raises(BadInputError, match="no such weight pack"):
        load_session(str(lonely))


def test_corrupt_and_foreign_packs_are_refused(packed, tmp_path):
    blob = bytearray(open(packed["pack"], "rb").read())
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(BadInputError, match="checksum"):
        pack.decode(bytes(flipped))
    with pytest.raises(BadInputError, match="truncated"):
        pack.decode(bytes(blob[:-5]))
    with pytest.raises(BadInputError, match="magic"):
        pack.decode(b"not a pack at all" * 10)
    bad = tmp_path / "bad.snnpack"
    bad.write_bytes(bytes(flipped))
    run = subprocess.run([sys.executable, "-m", "snnc", "inspect", str(bad)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "checksum" in run.stderr and "Traceback" not in run.stderr


def _resealed(blob: bytes, version: int = pack.VERSION, **fields) -> bytes:
    """blob with header fields (offset=value as u16/u32) changed and the checksum recomputed
    the way `version` computes it."""
    out = bytearray(blob)
    for at, (fmt, value) in fields.items():
        struct.pack_into(fmt, out, int(at[1:]), value)
    struct.pack_into("<I", out, pack.CHECKSUM_AT, pack.checksum(bytes(out), version))
    return bytes(out)


def test_format_version_and_checksum_coverage(packed):
    """Version 3 (2 and 3: the checksum covers the reserved word, bytes 60..63, which must be
    0)."""
    blob = open(packed["pack"], "rb").read()
    assert blob[:8] == b"SNNPACK\0" and struct.unpack_from("<H", blob, 8)[0] == 3
    assert struct.unpack_from("<I", blob, 56)[0] == pack.checksum(blob)
    reserved = bytearray(blob)
    reserved[61] = 1
    with pytest.raises(BadInputError, match="checksum"):
        pack.decode(bytes(reserved))
    with pytest.raises(BadInputError, match=r"reserved is 256, expected 0 \(byte 60\)"):
        pack.decode(_resealed(bytes(reserved)))
    with pytest.raises(BadInputError, match="format version 4; this snnc reads versions 1, 2, 3"):
        pack.decode(_resealed(blob, v8=("<H", 4)))
    with pytest.raises(BadInputError, match=r"flags is 1, expected 0 .*byte 10.*snnc compile"):
        pack.decode(_resealed(blob, v10=("<H", 1)))


def test_version_1_packs_are_read(packed):
    """Version-1 (checksum with bytes 56..63 zero) and version-2 files decode to the same
    layers; the reserved word, outside version 1's checksum, must still be 0."""
    blob = open(packed["pack"], "rb").read()
    for version in (1, 2):
        old = _resealed(blob, version, v8=("<H", version))
        assert old != blob
        for a, b in zip(pack.decode(old), pack.decode(blob)):
            assert (a.name, a.scale_name, a.scheme, a.bits, a.layout) == \
                (b.name, b.scale_name, b.scheme, b.bits, b.layout)
            assert np.array_equal(a.codes, b.codes) and a.scales.tobytes() == b.scales.tobytes()
    # with the reserved word 0, as every valid file has it, the two checksums coincide
    assert pack.checksum(old, 1) == pack.checksum(old, 2)
    with pytest.raises(BadInputError, match="reserved"):
        pack.decode(_resealed(blob, 1, v8=("<H", 1), v60=("<I", 7)))


def test_moved_and_illegal_fields_are_refused(packed):
    blob = open(packed["pack"], "rb").read()
    entry = pack.HEADER.size  # layer 0's table entry
    codes_at, = struct.unpack_from("<Q", blob, entry + 48)
    for fields, message in [
            ({f"v{entry + 48}": ("<Q", codes_at + 64)},
             r"codes offset is 64, expected 0 .*\(layer 0 '.*', byte 112\)"),
            ({f"v{entry + 17}": ("<B", 9)}, "bits is 9, expected 2..8 for uniform"),
            ({f"v{entry + 19}": ("<B", 4)}, "layout is 4"),
            ({f"v{entry + 18}": ("<B", 7)}, r"ndim is 7, expected 2\.\.6 for layout 2"),
            ({f"v{entry + 44}": ("<I", 1)}, "channels is 1"),
            ({"v16": ("<I", 10 ** 6)}, "layer count is 1000000")]:
        with pytest.raises(BadInputError, match=message):
            pack.decode(_resealed(blob, **fields))
    scales_at, = struct.unpack_from("<Q", blob, entry + 64)
    data_at, = struct.unpack_from("<Q", blob, 40)
    for value in (0.5, float("nan"), -0.0):
        with pytest.raises(BadInputError, match="not a legal layout-2 \\(signed\\) scale"):
            pack.decode(_resealed(blob, **{f"v{data_at + scales_at}": ("<f", value)}))


def test_encoder_refuses_what_the_reader_would(tmp_path):
    codes = np.zeros((2, 3), np.int32)
    with pytest.raises(BadInputError, match="positive"):
        pack.encode([pack.Layer("w", "s", "uniform", 4, codes, np.array([1.0, -2.0], np.float32))])
    with pytest.raises(BadInputError, match="at least one"):
        pack.encode([])
    layer = pack.Layer("w", "s", "uniform", 4, codes, np.array([0.5, 2.0], np.float32))
    assert pack.decode(pack.encode([layer]))[0].scales.tolist() == [0.5, 2.0]


def _edited_skeleton(packed, tmp_path, edit) -> str:
    model = onnx.load(packed["skeleton"], load_external_data=False)
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_pack_that_does_not_fit_the_model_is_refused(packed, tmp_path):
    """Shapes, data types and layouts are checked against the model before ONNX Runtime
    sees any array; the model's references must name one pack next to it."""
    def ref(model):
        return next(t for t in model.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL)

    def dims(model):
        ref(model).dims[0] += 1

    def dtype(model):
        ref(model).data_type = onnx.TensorProto.INT16

    def cast(model):
        name = ref(model).name
        node = next(n for n in model.graph.node if n.input and n.input[0] == name)
        next(a for a in node.attribute if a.name == "to").i = onnx.TensorProto.INT32

    for edit, message in [(dims, r"as int8 \[.*\], but .* expects int8 \["),
                          (dtype, "but .* expects int16"),
                          (cast, "in layout 2 \\(signed\\).* reads it with Cast to int32")]:
        with pytest.raises(BadInputError, match=message):
            load_session(_edited_skeleton(packed, tmp_path, edit), packed["pack"])

    def elsewhere(model):
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../model.snnpack"

    with pytest.raises(BadInputError, match="not to one .snnpack file next to it"):
        load_session(_edited_skeleton(packed, tmp_path, elsewhere))


def test_table_json(packed):
    blob = open(packed["pack"], "rb").read()
    table = pack.table_json(pack.decode(blob), len(blob))
    json.dumps(table)
    first = table["layers"][0]
    assert set(first) == {"name", "scale_name", "scheme", "bits", "shape", "weights",
                          "packed_bytes", "layout", "channels"}
    # the first conv (on the image) and the head (after a mean over time) read real values:
    # float kernels, signed containers; every other layer reads spikes: int8 GEMM matrices
    signed = {row["name"] for row in table["layers"] if row["layout"] == "signed"}
    assert signed == {"patch_embed.stages.0.conv_bn.block.0.weight_codes", "head.weight_codes"}
    assert {row["layout"] for row in table["layers"]} == {"signed", "gemm"}
    totals = table["totals"]
    assert totals["layers"] == 22 and totals["file_bytes"] == len(blob)
    assert totals["overhead_bytes"] == pack.overhead(blob)
    assert totals["weights"] == sum(row["weights"] for row in table["layers"])


def test_inspect_prints_the_layer_table(packed):
    run = subprocess.run([sys.executable, "-m", "snnc", "inspect", packed["pack"]],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "blocks.0.attn.qkv_conv_bn.0.weight_codes" in run.stdout
    assert "pot" in run.stdout and "uniform" in run.stdout and "22 layers" in run.stdout


def test_pack_needs_quantized_weights(tmp_path):
    from snnc.demo import conv_snn, export

    path = tmp_path / "float.pt"
    torch.export.save(export(conv_snn(), torch.zeros(1, 2, 12, 12)), str(path))
    with pytest.raises(BadInputError, match="no quantized weights"):
        compile_file(str(path), str(tmp_path / "x.onnx"), pack_path=str(tmp_path / "x.snnpack"))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.snnpack").exists()


def test_optimized_graph_shows_the_kernels(packed, tmp_path):
    """Which kernels the quantized layers run on in ONNX Runtime (docs/onnx.md): every
    spike-input conv, linear and attention product is an integer GEMM
    (MatMulIntegerToFloat: uint8 x int8, or uint8 x uint8, int32 sums) whose weights are a
    prepacked constant; the two layers that read real values (the first conv on the image,
    the head after the mean over time) are a float Conv and Gemm on folded integer weights
    (the Cast of the codes folded at load)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(packed["full"], options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producer = {out: node for node in graph.node for out in node.output}
    weighted = [n for n in graph.node if n.op_type in (
        "Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "QLinearConv", "QLinearMatMul",
        "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat")]
    kernels = {}
    for node in weighted:
        source = producer.get(node.input[1])
        key = (node.op_type, source.op_type if source is not None else "initializer")
        kernels[key] = kernels.get(key, 0) + 1
    print("kernels:", kernels)
    assert not [n for n in graph.node if n.op_type in ("DequantizeLinear", "Cast")
                and n.input[0] in {i.name for i in graph.initializer}]  # all folded at load
    # 4 stem convs + 4 blocks x (qkv, proj, fc1, fc2) on int8 weights, 4 x 2 attention
    # products on two uint8 operands
    assert kernels == {("Conv", "initializer"): 1, ("Gemm", "initializer"): 1,
                       ("MatMulIntegerToFloat", "initializer"): 20,
                       ("MatMulIntegerToFloat", "Transpose"): 8}


SIGN_CONFIG = {"conv1": {"scheme": "ternary"}, "conv2": {"scheme": "binary"},
               "head": {"scheme": "ternary"}}


def test_ternary_and_binary_layers_pack_at_their_true_size(tmp_path):
    """Binary weights take one sign bit, ternary ones five trits a byte (1.6 bits; their 2-bit
    codes would take 25 % more). A compiled ConvSNN's pack holds the quantizer's codes, its
    skeleton runs with it to the self-contained model's logits, and the reader refuses a
    version-2 header over these schemes, a code byte of 243 or more, nonzero padding trits
    and padding bits."""
    model = conv_snn(seed=3)
    snnc.quantize(model, SIGN_CONFIG)
    model = make_firing(model, (8, 2, 12, 12), seed=3)
    paths = {k: str(tmp_path / f) for k, f in (("full", "full.onnx"), ("skeleton", "s.onnx"),
                                               ("pack", "s.snnpack"))}
    snnc.compile(model, torch.zeros(1, 2, 12, 12), paths["full"])
    snnc.compile(model, torch.zeros(1, 2, 12, 12), paths["skeleton"], pack_path=paths["pack"],
                 external_weights=True)
    blob = open(paths["pack"], "rb").read()
    layers = {layer.name.split(".")[0]: layer for layer in pack.decode(blob)}
    for name, rule in SIGN_CONFIG.items():
        layer, module = layers[name], getattr(model, name)
        quantizer = module.parametrizations.weight[0]
        want = quant.codes(module.parametrizations.weight.original, quantizer.scale,
                           quantizer.scheme, quantizer.bits).numpy()
        assert (layer.scheme, layer.bits) == (rule["scheme"], 2 if rule["scheme"] == "ternary"
                                              else 1)
        assert np.array_equal(layer.codes, want), name
        n = layer.codes.size
        size = pack.code_bytes(layer)
        assert size == (-(-n // 5) if layer.scheme == "ternary" else -(-n // 8))
        print(f"{name} {layer.scheme} {list(layer.codes.shape)}: {n} weights, codes {size} B "
              f"(+ scales {4 * layer.scales.size} B) vs int8 {n} B, float32 {4 * n} B")
    x = np.random.default_rng(0).random((3, 2, 12, 12), dtype=np.float32)
    want = load_session(paths["full"]).run(None, {"x": x})[0]
    assert np.array_equal(load_session(paths["skeleton"], paths["pack"]).run(None, {"x": x})[0],
                          want)
    assert np.abs(want).max() > 0
    with pytest.raises(BadInputError, match=r"scheme is 2, expected .*2 and 3 from version 3"):
        pack.decode(_resealed(blob, 2, v8=("<H", 2)))
    entry = pack.HEADER.size  # layer 0: conv1, ternary, 144 weights: 4 trits in its last byte
    data_at, = struct.unpack_from("<Q", blob, 40)
    codes_at, codes_size = struct.unpack_from("<QQ", blob, entry + 48)
    assert (pack.decode(blob)[0].scheme, codes_size) == ("ternary", 29)
    for at, value, message in ((0, 243, "code byte 0 .* is not five trits"),
                               (28, 81 + blob[data_at + codes_at + 28],
                                "padding trits of the last code byte")):
        with pytest.raises(BadInputError, match=message):
            pack.decode(_resealed(blob, **{f"v{data_at + codes_at + at}": ("<B", value)}))
    binary = pack.Layer("w", "s", "binary", 1, np.array([[1, -1, 1], [-1, -1, 1]], np.int32),
                        np.array([0.5, 2.0], np.float32))
    small = pack.encode([binary])
    assert np.array_equal(pack.decode(small)[0].codes, binary.codes)
    codes_at, = struct.unpack_from("<Q", small, entry + 48)
    data_at, = struct.unpack_from("<Q", small, 40)
    assert small[data_at + codes_at] == 0b011010  # sign bits, LSB first
    with pytest.raises(BadInputError, match="padding bits of the last code byte"):
        pack.decode(_resealed(small, **{f"v{data_at + codes_at}": ("<B", 0b1011010)}))
