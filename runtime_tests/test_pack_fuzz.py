"""Hostile .snnpack files: seeded mutants of a real pack through snnc.backend.pack.decode and
snnc.runtime.load_session.

The pack: a quantized ConvSNN compiled with external weights and --pot-lowering shift,
4 layers in this order: conv1 PoT 4-bit folded (layout 2 "signed", with a negative and a
dead channel: scales +-64 and 0); a layout-0 "levels" uniform 8-bit layer holding the
head's codes with its quantizer's own positive scales (the skeleton is given a
DequantizeLinear that reads it into an extra output, since a pack must hold exactly its
model's weights: so layout 0 reaches ONNX Runtime too); conv2 PoT 3-bit as shifts (layout 1
"codes"); the head uniform 8-bit folded, an integer GEMM on spikes (layout 3 "gemm").
Mutant kinds: every header and table field overwritten with
interesting values (0, 1, max, +-1, halves and doubles, other regions' offsets and sizes)
and table entries copied over each other, resealed (the checksum field itself: not);
random 1-3 bit flips, unsealed and resealed; truncations and extensions (also with the
data size made to agree), unsealed and resealed; random byte overwrites, resealed.
"Resealed" = the checksum recomputed, as a hostile editor would.

What "identical structure" means. decode accepts exactly the bytes `encode` writes for
some list of layers (canonical layout, zero padding, legal enums, bit widths and
scales). What it pins down, and an accepted mutant must keep exactly, is the structure:
the layer count and each layer's scheme, bits, shape and name lengths, hence every offset
and size in the file; and the layout, but for the look-alike folded layouts. Beyond that, an
accepted mutant must
- re-encode to itself byte for byte (a version-1 file: with version 1 and its checksum);
- differ from the original only in the version and checksum words (version 1 is read by
  design: verdict "identical"), in code bytes (a layer's codes differ only if the mutant
  changed bytes of that layer's codes), in scale bytes (likewise, and only to another
  scale that layer's layout can hold: a folded layer's +-unit or +0, a levels layer's
  positive scale; verdict "values"), in name characters (verdict "names"), or in the
  layout byte of a folded layer swapped among 1, 2 and 3 where its scales are legal in
  both (verdict "layout": they look alike in the pack alone).
No reader can tell a resealed edit of those values or names from the original; the
checksum protects them against accidents only. Counted per kind: refused
(BadInputError), identical (every field, code and scale bit-identical), values, names,
layout. Anything else raised, or accepted, is a failure.

load_session: every accepted field mutant, every names or layout mutant, and a seeded
sample of the rest (ORT_MUTANTS in all) with the model's skeleton. Nothing but
BadInputError may escape; a layout mutant must be refused (the model reads the two layouts
with different casts); a renamed weight the model refers to is refused as missing; a
values mutant is refused (the skeleton records a digest of every weight it was compiled
with, docs/binary_format.md) unless its edit vanishes in the arrays ONNX Runtime gets (the
codes of a dead channel). Whatever loads hands ONNX Runtime exactly the compiled arrays and
gives exactly the original logits on a fixed input.
"""

from __future__ import annotations

import json
import re
import struct
import time

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, numpy_helper

import snnc
from snnc import BadInputError
from snnc.backend import pack
from snnc.backend.runtime import load_session
from snnc.cli import main
from snnc.demo import conv_snn, export, make_firing
from snnc.driver import compile_program
from snnc.options import Options
from test_c_decoder import run_harness

SEED = 20250611
CONFIG = {"conv1": {"scheme": "pot", "bits": 4}, "conv2": {"scheme": "pot", "bits": 3},
          "head": {"scheme": "uniform", "bits": 8}}
ORT_MUTANTS = 600


def reseal(blob: bytearray) -> bytes:
    """The checksum recomputed the way the (possibly mutated) version field says."""
    version = struct.unpack_from("<H", blob, 8)[0]
    version = version if version in pack.CHECKSUM_HOLE else pack.VERSION
    struct.pack_into("<I", blob, pack.CHECKSUM_AT, pack.checksum(bytes(blob), version))
    return bytes(blob)


def _quantized_conv_snn(seed: int) -> torch.nn.Module:
    """The fuzzed model (seed 1), or another of the same shape."""
    model = conv_snn(seed=seed)
    snnc.quantize(model, CONFIG)
    model = make_firing(model, (8, 2, 12, 12), seed=seed)
    with torch.no_grad():  # a negative and a dead channel: folded scales -unit and 0
        model.bn1.weight[1] = -0.5
        model.bn1.weight[2] = 0.0
    return model


def _read_levels(skeleton: bytes, layer: pack.Layer) -> bytes:
    """The skeleton with a reference to the levels layer, read by a DequantizeLinear (its
    scale: the quantizer's, an initializer of the model) into an extra graph output, and
    its digest recorded as compile records the others'."""
    model = onnx.load_from_string(skeleton)
    ref = onnx.TensorProto()
    ref.CopyFrom(next(t for t in model.graph.initializer
                      if t.data_location == onnx.TensorProto.EXTERNAL))
    ref.name, ref.data_type = layer.name, onnx.TensorProto.INT8
    del ref.dims[:]
    ref.dims.extend(layer.codes.shape)
    model.graph.initializer.extend([ref, numpy_helper.from_array(layer.scales, layer.scale_name)])
    model.graph.node.append(helper.make_node("DequantizeLinear", [layer.name, layer.scale_name],
                                             ["levels_weight"], axis=0))
    model.graph.output.append(helper.make_tensor_value_info(
        "levels_weight", onnx.TensorProto.FLOAT, list(layer.codes.shape)))
    entry = next(p for p in model.metadata_props if p.key == pack.DIGESTS_KEY)
    digests = json.loads(entry.value)
    digests[layer.name] = pack.weight_digest(pack.onnx_initializers([layer])[layer.name])
    entry.value = json.dumps(digests, sort_keys=True)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    model = _quantized_conv_snn(1)
    root = tmp_path_factory.mktemp("fuzz")
    program = export(model, torch.zeros(1, 2, 12, 12))
    torch.export.save(program, str(root / "source.pt"))
    result = compile_program(program, Options(external_weights=True,
                                              pack_location="model.snnpack",
                                              pot_lowering="shift"))
    head = result.packed[-1]
    levels = pack.Layer("levels/head.weight_codes", "levels/head.weight_scale", "uniform", 8,
                        head.codes, model.head.parametrizations.weight[0].scale.numpy()
                        .astype(np.float32), pack.LEVELS)
    layers = result.packed[:1] + [levels] + result.packed[1:]
    assert [(layer.scheme, layer.bits, layer.layout) for layer in layers] == [
        ("pot", 4, pack.SIGNED), ("uniform", 8, pack.LEVELS), ("pot", 3, pack.CODES),
        ("uniform", 8, pack.GEMM)]
    assert {-64.0, 0.0, 64.0} <= set(layers[0].scales.tolist())
    blob = pack.encode(layers)
    skeleton = root / "model.onnx"
    skeleton.write_bytes(_read_levels(result.data, levels))
    (root / "model.snnpack").write_bytes(blob)
    x = np.random.default_rng(SEED).random((2, 2, 12, 12), dtype=np.float32)
    logits = load_session(str(skeleton), intra_op_num_threads=1).run(None, {"x": x})[0]
    assert np.abs(logits).max() > 0
    np.savez(root / "data.npz", x=x)
    return {"blob": blob, "layers": pack.decode(blob), "skeleton": str(skeleton), "x": x,
            "logits": logits, "root": root, "program": program, "source": str(root / "source.pt"),
            "data": str(root / "data.npz")}


def _entries(blob: bytes) -> list[dict]:
    count = struct.unpack_from("<I", blob, 16)[0]
    names = [f for f, _ in pack.ENTRY_FIELDS]
    return [dict(zip(names, pack.ENTRY.unpack_from(blob, 64 + 72 * i))) for i in range(count)]


def _value_regions(blob: bytes) -> list[tuple[range, range]]:
    """Per layer, (its codes' byte range, its scales' byte range) in the file."""
    data_at = struct.unpack_from("<Q", blob, 40)[0]
    return [(range(data_at + e["codes offset"], data_at + e["codes offset"] + e["codes size"]),
             range(data_at + e["scales offset"], data_at + e["scales offset"] + 4 * e["channels"]))
            for e in _entries(blob)]


def _interesting(original: int, size: int, offsets: list[int]) -> list[int]:
    top = (1 << (8 * size)) - 1
    values = {0, 1, 2, 3, 7, 8, 63, 64, 65, 72, 128, 255, top, top - 1, top >> 1,
              (top >> 1) + 1, original - 1, original + 1, original * 2, original // 2,
              original ^ 1, original ^ (1 << (8 * size - 1)), original + 64, original - 64}
    values |= set(offsets)
    return sorted(v & top for v in values if v != original and 0 <= v)


def field_mutants(blob: bytes) -> list[tuple[str, bytes]]:
    """Every header and table field overwritten with interesting values, resealed; table
    entries copied over each other, resealed."""
    entries = _entries(blob)
    offsets = sorted({64, len(blob), len(blob) - 64} | set(struct.unpack_from("<QQQQ", blob, 24))
                     | {e[k] for e in entries for k in ("codes offset", "scales offset",
                                                        "codes size", "name offset")}
                     | {e[f"dim {d}"] for e in entries for d in range(pack.MAX_DIMS)})
    out = []
    header = pack.HEADER.unpack_from(blob)
    widths = {"Q": 8, "I": 4, "H": 2, "B": 1}
    for (field, at), fmt, value in zip(pack.HEADER_FIELDS, ["8s", *"HHIIIQQQQII"], header):
        if field == "magic":
            for magic in (b"\0" * 8, b"SNNPACK\1", b"snnpack\0", b"SNNPACK", b"\xff" * 8):
                out.append(("header field", reseal(bytearray(blob[:at]) + magic.ljust(8, b" ")
                                                   + blob[at + 8:])))
            continue
        for new in _interesting(value, widths[fmt], offsets):
            mutant = bytearray(blob)
            struct.pack_into("<" + fmt, mutant, at, new)
            # the checksum field itself: resealing would undo it
            out.append(("header field", bytes(mutant) if field == "checksum" else reseal(mutant)))
    entry_formats = "IIIIBBBB" + "I" * pack.MAX_DIMS + "IQQQ"
    for i, entry in enumerate(entries):
        base = 64 + 72 * i
        for (field, at), fmt in zip(pack.ENTRY_FIELDS, entry_formats):
            for new in _interesting(entry[field], widths[fmt], offsets):
                mutant = bytearray(blob)
                struct.pack_into("<" + fmt, mutant, base + at, new)
                out.append(("table field", reseal(mutant)))
        for j in range(len(entries)):
            if j != i:
                mutant = bytearray(blob)
                mutant[64 + 72 * j:64 + 72 * (j + 1)] = blob[base:base + 72]
                out.append(("table field", reseal(mutant)))
    return out


def random_mutants(blob: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = []
    for kind, n, sealed in (("bit flips", 800, False), ("bit flips resealed", 1300, True)):
        for _ in range(n):
            mutant = bytearray(blob)
            for bit in rng.choice(8 * len(blob), size=rng.integers(1, 4), replace=False):
                mutant[bit // 8] ^= 1 << (bit % 8)
            out.append((kind, reseal(mutant) if sealed else bytes(mutant)))
    for _ in range(1300):
        mutant = bytearray(blob)
        at = int(rng.integers(len(blob)))
        mutant[at] = (mutant[at] + int(rng.integers(1, 256))) % 256
        out.append(("bytes resealed", reseal(mutant)))
    data_at = struct.unpack_from("<Q", blob, 40)[0]
    cuts = sorted({0, 1, 8, 56, 60, 63, 64, 65, 136, data_at - 1, data_at, data_at + 1,
                   len(blob) - 1, len(blob) - 4, len(blob) - 64}
                  | {int(c) for c in rng.integers(0, len(blob), size=60)})
    for cut in cuts:
        for tail in (b"", b"\0" * int(rng.integers(1, 200)), rng.bytes(int(rng.integers(1, 200)))):
            mutant = bytearray(blob[:cut] + tail if tail else blob[:cut])
            if len(mutant) == len(blob):
                continue
            out.append(("truncate/extend", bytes(mutant)))
            if len(mutant) >= 64:
                out.append(("truncate/extend", reseal(bytearray(mutant))))
                struct.pack_into("<Q", mutant, 48, max(0, len(mutant) - data_at))  # size agrees
                out.append(("truncate/extend", reseal(mutant)))
    return out


@pytest.fixture(scope="module")
def mutants(real):
    rng = np.random.default_rng(SEED)
    blob = real["blob"]
    every = field_mutants(blob) + random_mutants(blob, rng)
    return [(kind, m) for kind, m in every if m != blob]  # no-op overwrites say nothing


def _structure(layer: pack.Layer) -> tuple:
    """What decode pins down (with the layout, but for the look-alike folded layouts): hence every
    offset and size in the file."""
    return (len(layer.name.encode()), len(layer.scale_name.encode()), layer.scheme, layer.bits,
            layer.codes.shape)


def _look_alike(before: pack.Layer, after: pack.Layer) -> bool:
    """Layouts 1 (codes), 2 (signed) and 3 (gemm) of a folded layer differ in the layout
    byte only when its scales are legal in both (2 and 3: +-unit or 0, always; 1: a PoT
    layer's +unit only): decode cannot tell them apart; load_session can (the model reads
    them with other ops, in other shapes) and must refuse the swap."""
    folded = (pack.CODES, pack.SIGNED, pack.GEMM)
    return (before.layout in folded and after.layout in folded and
            all(bool(np.all(pack.legal_scales(after.scales, after.scheme, after.bits, k)))
                for k in (before.layout, after.layout)))


def classify(real, mutant: bytes) -> tuple[str, list | None]:
    """'refused', 'identical', 'values' or 'layout', after asserting what an accepted mutant
    must be (the module doc)."""
    try:
        layers = pack.decode(mutant)
    except BadInputError:
        return "refused", None
    blob, original = real["blob"], real["layers"]
    assert len(mutant) == len(blob) and len(layers) == len(original)
    again = bytearray(pack.encode(layers))
    again[8:10] = mutant[8:10]
    assert reseal(again) == mutant, "accepted bytes that are not what encode writes"
    changed = set(np.flatnonzero(np.frombuffer(mutant, np.uint8) != np.frombuffer(blob, np.uint8))
                  .tolist()) - set(range(8, 10)) - set(range(56, 60))
    strings_at = 64 + 72 * len(layers)
    allowed = set(range(strings_at, strings_at + struct.unpack_from("<I", blob, 20)[0]))
    verdicts = {"identical"}
    for i, (layer, before, (codes, scales)) in enumerate(zip(layers, original,
                                                             _value_regions(blob))):
        assert _structure(layer) == _structure(before)
        if (layer.name, layer.scale_name) != (before.name, before.scale_name):
            verdicts.add("names")
        if layer.layout != before.layout:
            assert _look_alike(before, layer), layer.name
            allowed.add(64 + 72 * i + 19)
            verdicts.add("layout")
        allowed |= set(codes) | set(scales)
        same_codes = np.array_equal(layer.codes, before.codes)
        same_scales = layer.scales.tobytes() == before.scales.tobytes()
        assert same_codes or changed & set(codes), layer.name
        assert same_scales or changed & set(scales), layer.name
        if not (same_codes and same_scales):
            verdicts.add("values")
    assert changed <= allowed
    verdict = next(v for v in ("layout", "names", "values", "identical") if v in verdicts)
    return verdict, layers


VERDICTS = ("refused", "identical", "values", "names", "layout")


def _print_counts(title: str, judged) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for kind, verdict in judged:
        row = counts.setdefault(kind, dict.fromkeys(VERDICTS, 0))
        row[verdict] += 1
    print(f"\n{title} (kind: total = " + " / ".join(VERDICTS) + "):")
    for kind, row in counts.items():
        print(f"  {kind:<20} {sum(row.values()):5} = "
              + " / ".join(f"{row[v]}" for v in VERDICTS))
    return counts


@pytest.fixture(scope="module")
def judged(real, mutants):
    """(kind, mutant, verdict, decoded layers) for every mutant, and the time it took."""
    start = time.perf_counter()
    out = [(kind, mutant, *classify(real, mutant)) for kind, mutant in mutants]
    return out, time.perf_counter() - start


def test_mutated_packs_are_refused_or_mean_the_same(real, judged):
    results, seconds = judged
    counts = _print_counts(f"decode: {len(results)} mutants of a {len(real['blob'])} B pack in "
                           f"{seconds:.1f} s", [(kind, verdict) for kind, _, verdict, _ in results])
    assert len(results) >= 5000
    # CRC-32 catches every 1- to 3-bit error in a file this size; lengths are exact
    assert counts["bit flips"]["refused"] == sum(counts["bit flips"].values())
    assert counts["truncate/extend"]["refused"] == sum(counts["truncate/extend"].values())
    assert counts["header field"]["identical"] >= 1  # version 1: read by design
    assert sum(row["layout"] for row in counts.values()) >= 1  # load_session must refuse these


def test_mutated_packs_never_load_into_wrong_logits(real, judged, tmp_path):
    """Every accepted mutant of a header or table field and every layout swap, and a seeded
    sample of the rest: ORT_MUTANTS in all."""
    results, _ = judged
    must = [i for i, (kind, _, verdict, _) in enumerate(results)
            if verdict in ("layout", "names") or (verdict != "refused" and "field" in kind)]
    rest = sorted(set(range(len(results))) - set(must))
    rng = np.random.default_rng(SEED + 1)
    chosen = [results[i] for i in sorted(must + list(rng.choice(rest, ORT_MUTANTS - len(must),
                                                                 replace=False)))]
    path = tmp_path / "mutant.snnpack"
    original = pack.onnx_initializers(real["layers"])
    start = time.perf_counter()
    seen, refused = [], []
    for kind, mutant, verdict, layers in chosen:
        path.write_bytes(mutant)
        try:
            session = load_session(real["skeleton"], str(path), intra_op_num_threads=1)
        except BadInputError as error:
            assert verdict != "layout" or "reads it with" in str(error), str(error)
            seen.append((kind, "refused"))
            refused.append(verdict)
            continue
        assert verdict not in ("layout", "names"), kind
        # the arrays ONNX Runtime got are the ones compiled (each checked against the
        # skeleton's digest): a values mutant loads only if its edit vanishes in them
        # (codes of a dead channel, scale +0)
        arrays = pack.onnx_initializers(layers)
        assert all(arrays[n].tobytes() == original[n].tobytes() for n in original), kind
        logits = session.run(None, {"x": real["x"]})[0]
        assert logits.tobytes() == real["logits"].tobytes(), kind
        seen.append((kind, verdict))
    counts = _print_counts(f"load_session: {len(chosen)} of the mutants in "
                           f"{time.perf_counter() - start:.1f} s", seen)
    assert len(chosen) >= 300 and refused.count("values") >= 100 and "names" in refused
    assert sum(row["identical"] for row in counts.values()) >= 1


# ------------------------------------------------- shapes: what every layout's consumers can take

def _unchecked(layers: list[pack.Layer]) -> bytes:
    """encode's canonical bytes without its shape rule (pack.layout_rules), for layers that
    decode must refuse."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pack, "layout_rules", lambda *args: (), raising=False)
        return pack.encode(layers)


def _scales(layout: int, scheme: str, bits: int, channels: int) -> np.ndarray:
    """Scales legal in this layout."""
    value = 0.5 if layout == pack.LEVELS else pack.unit(scheme, bits)
    return np.full(channels, value, np.float32)


def _misshapen(layers: list[pack.Layer]) -> list[tuple[str, int, list[pack.Layer]]]:
    """(what, index of the bad layer, layers) for packs whose one fault is a layer's shape: for
    every layout an added layer of 0 or 1 dimensions, and each layer flattened to 1-D (the
    review's reproducer: a gemm layer [8] crashed verify in gemm_matrix)."""
    out = []
    for layout in pack.LAYOUTS:
        scheme, bits = ("pot", 3) if layout == pack.CODES else ("uniform", 4)
        for shape in ((1,), (8,), ()):
            channels = shape[0] if shape else 0
            extra = pack.Layer(f"extra.{layout}", "extra.scale" if layout == pack.LEVELS else "",
                               scheme, bits, np.zeros(shape, np.int32),
                               _scales(layout, scheme, bits, channels), layout)
            out.append((f"added layout-{layout} layer {list(shape)}", len(layers),
                        layers + [extra]))
    for i, layer in enumerate(layers):
        flat = pack.Layer(layer.name, layer.scale_name, layer.scheme, layer.bits,
                          layer.codes.reshape(-1),
                          _scales(layer.layout, layer.scheme, layer.bits, layer.codes.size),
                          layer.layout)
        out.append((f"layer {i} (layout {layer.layout}) flattened", i,
                    layers[:i] + [flat] + layers[i + 1:]))
    return out


def test_a_layer_shaped_unlike_its_layout_is_refused_everywhere(real, tmp_path):
    """decode refuses a layer of fewer than 2 dimensions in every layout, naming the layer and
    the rule, so inspect, load_session and verify refuse it (exit 1) instead of failing inside
    (verify ended in an internal error, load_session in a bare ValueError)."""
    runner = CliRunner()
    path = tmp_path / "bad.snnpack"
    cases = _misshapen(real["layers"])
    assert {layout for what, _, _ in cases for layout in pack.LAYOUTS
            if f"layout-{layout}" in what or f"(layout {layout})" in what} == set(pack.LAYOUTS)
    for what, index, layers in cases:
        blob = _unchecked(layers)
        message = rf"ndim is [01], expected 2\.\.6 for layout \d \(\w+\).*\(layer {index} '"
        with pytest.raises(BadInputError, match=message):
            pack.decode(blob)
        path.write_bytes(blob)
        with pytest.raises(BadInputError, match=message):
            load_session(real["skeleton"], str(path))
        for args in (["inspect", str(path)],
                     ["verify", real["source"], real["skeleton"], "--data", real["data"],
                      "--pack", str(path)]):
            result = runner.invoke(main, args)
            assert result.exit_code == 1, (what, args[0], result.output)
            assert re.search(message, result.stderr) and "internal error" not in result.stderr, \
                (what, args[0], result.stderr)


@pytest.mark.parametrize("layout", sorted(pack.LAYOUTS))
def test_every_shape_a_layout_takes_reaches_its_consumers(layout):
    """The other side of the rule: 2 to 6 dimensions, in every layout, encode, decode and
    become the initializer the layout names (weights.gemm_matrix's [K, D * C] for gemm)."""
    scheme, bits = ("pot", 5) if layout == pack.CODES else ("uniform", 8)
    rng = np.random.default_rng(layout)
    for shape in ((3, 5), (4, 2, 3), (2, 3, 1, 2), (2, 1, 2, 1, 2), (2, 1, 1, 2, 1, 3)):
        low = -(2 ** (bits - 1)) + (scheme == "pot")
        codes = rng.integers(low, 2 ** (bits - 1), size=shape).astype(np.int32)
        layer = pack.Layer("w", "s" if layout == pack.LEVELS else "", scheme, bits, codes,
                           _scales(layout, scheme, bits, shape[0]), layout)
        blob = pack.encode([layer])
        decoded, = pack.decode(blob)
        assert np.array_equal(decoded.codes, codes)
        array = pack.onnx_initializers([decoded])["w"]
        if layout == pack.GEMM:
            assert array.dtype == np.int8 and array.shape[0] == int(np.prod(shape[1:]))
            assert array.shape[1] % shape[0] == 0
        else:
            assert array.shape == shape
        assert pack.table_json([decoded], len(blob))["layers"][0]["shape"] == list(shape)


# ---------------------------------------------- a pack is checked against the model it comes with

@pytest.fixture(scope="module")
def embedded(real):
    """The fuzzed model compiled self-contained (its weights in the .onnx) with its pack, and
    the pack of another model of the same shape (other weights, same names and shapes)."""
    root = real["root"]
    opts = Options(pot_lowering="shift")
    for name, program in (("self", real["program"]),
                          ("other", export(_quantized_conv_snn(2), torch.zeros(1, 2, 12, 12)))):
        result = compile_program(program, opts)
        (root / f"{name}.onnx").write_bytes(result.data)
        (root / f"{name}.snnpack").write_bytes(result.pack_bytes())
    return {"onnx": str(root / "self.onnx"), "pack": str(root / "self.snnpack"),
            "other": str(root / "other.snnpack")}


def _wrong_packs(real, embedded) -> list[tuple[str, bytes, str]]:
    """(what, pack, what the refusal must say) for packs that do not belong to the
    self-contained model: one byte flipped at several places (header, layer table, names,
    codes, scales, last byte), resealed edits decode accepts (one code, one folded channel's
    sign), a layer missing, a layer added, and packs of other models."""
    blob = open(embedded["pack"], "rb").read()
    layers = pack.decode(blob)
    data_at = struct.unpack_from("<Q", blob, 40)[0]
    entry = _entries(blob)
    out = []
    for at in (10, 64 + 19, 64 + 72 * len(layers) + 3, data_at + entry[1]["codes offset"] + 2,
               data_at + entry[2]["scales offset"], len(blob) - 1):
        flipped = bytearray(blob)
        flipped[at] ^= 0x20
        out.append((f"byte {at} flipped", bytes(flipped), "corrupt \\(checksum mismatch\\)"))
    head = layers[-1]
    codes = head.codes.copy()
    codes[0, 0] = 1 if codes[0, 0] != 1 else 2
    edited = layers[:-1] + [pack.Layer(head.name, "", head.scheme, head.bits, codes, head.scales,
                                       head.layout)]
    out.append(("one code resealed", pack.encode(edited),
                f"holds other weights than .* in '{head.name}' \\(1 of"))
    first = layers[0]
    scales = first.scales.copy()
    scales[1] = -scales[1]  # a negative channel made positive: legal, not this model's
    flipped = [pack.Layer(first.name, "", first.scheme, first.bits, first.codes, scales,
                          first.layout)] + layers[1:]
    out.append(("one channel's sign resealed", pack.encode(flipped),
                f"holds other weights than .* in '{first.name}'"))
    out.append(("a layer missing", pack.encode(layers[1:]),
                f"does not hold the weights \\['{first.name}'\\] that .* holds \\(1 of 3"))
    out.append(("a layer added", pack.encode(layers + [real["layers"][1]]),
                "holds layer 3 'levels/head.weight_codes', which .* does not have among the 3"))
    out.append(("another model's pack", open(embedded["other"], "rb").read(),
                f"holds other weights than .* in '{first.name}'"))
    out.append(("the fuzzed skeleton's pack", real["blob"],
                "holds layer 1 'levels/head.weight_codes', which"))
    return out


def test_a_pack_given_with_a_self_contained_model_must_hold_its_weights(real, embedded,
                                                                         tmp_path):
    """`--pack` with a model that holds its own weights used to be ignored (a corrupt pack
    verified at 100 %, exit 0): the pack is decoded and must hold exactly the model's
    quantized weights, bit for bit, or be refused, naming the layer; through load_session and
    snnc verify (refused before SOURCE is loaded)."""
    runner = CliRunner()
    path = tmp_path / "given.snnpack"
    verify = ["verify", real["source"], embedded["onnx"], "--data", real["data"], "--pack",
              str(path)]
    for what, blob, message in _wrong_packs(real, embedded):
        path.write_bytes(blob)
        with pytest.raises(BadInputError, match=message):
            load_session(embedded["onnx"], str(path))
        result = runner.invoke(main, verify)
        assert result.exit_code == 1, (what, result.output)
        assert re.search(message, result.stderr) and "internal error" not in result.stderr, \
            (what, result.stderr)
    path.write_bytes(open(embedded["pack"], "rb").read())
    result = runner.invoke(main, verify + ["--json"])
    assert result.exit_code == 0, result.stderr
    assert '"top1_agreement": 1.0' in result.stdout


def test_a_skeleton_refuses_a_pack_that_is_not_exactly_its_weights(real, embedded, tmp_path):
    """With external weights too, the pack holds exactly the layers the model refers to: a
    pack of another model, one with a layer added (built into no initializer) or missing, a
    levels layer whose scales are not the model's, and another model's weights under the same
    names and shapes (the skeleton's digests) are refused, naming the layer."""
    layers = real["layers"]
    levels = layers[1]
    other = pack.decode(open(embedded["other"], "rb").read())  # same names, shapes, layouts
    scaled = pack.Layer(levels.name, levels.scale_name, levels.scheme, levels.bits, levels.codes,
                        levels.scales * np.float32(2), levels.layout)
    extra = pack.Layer("unread.weight_codes", "", "uniform", 4, np.zeros((2, 3), np.int32),
                       np.ones(2, np.float32), pack.GEMM)
    cases = [("a layer added", pack.encode(layers + [extra]),
              "holds layer 4 'unread.weight_codes', which .* does not have among the 4"),
             ("another model's pack", open(embedded["other"], "rb").read(),
              r"does not hold the weights \['levels/head.weight_codes'\] that .* refers to"),
             ("a layer missing", pack.encode(layers[:3]), "does not hold the weights"),
             ("levels scales doubled", pack.encode([layers[0], scaled] + layers[2:]),
              "holds 'levels/head.weight_codes' with scale .* for channel 0, but .* "
              "dequantizes it with"),
             ("another model of the same shape", pack.encode(other[:1] + [levels] + other[1:]),
              "holds other values for 'conv1.weight_codes' than .* was compiled with")]
    path = tmp_path / "given.snnpack"
    for what, blob, message in cases:
        path.write_bytes(blob)
        with pytest.raises(BadInputError, match=message):
            load_session(real["skeleton"], str(path))
        result = CliRunner().invoke(main, ["verify", real["source"], real["skeleton"], "--data",
                                           real["data"], "--pack", str(path)])
        assert result.exit_code == 1 and re.search(message, result.stderr), \
            (what, result.stderr)


def test_the_c_decoder_refuses_what_snnc_refuses(real, mutants, decoder, tmp_path):
    """Every mutant through the C decoder (compiler/backend/c, built with the address and
    undefined-behaviour sanitizers: no report): it accepts exactly the mutants
    snnc.backend.pack.decode accepts, and then gives the same arrays."""
    blobs = [real["blob"]] + [m for _, m in mutants]
    verdicts = run_harness(decoder, blobs, tmp_path)
    refused = accepted = 0
    for blob, got in zip(blobs, verdicts):
        try:
            want = pack.onnx_initializers(pack.decode(blob))
        except BadInputError:
            assert got is None, "the C decoder accepted a pack snnc refuses"
            refused += 1
            continue
        assert got is not None, "the C decoder refused a pack snnc accepts"
        accepted += 1
        assert [(g.dtype, g.shape) for g in got] == [(w.dtype, w.shape) for w in want.values()]
        assert all(np.array_equal(g, w) for g, w in zip(got, want.values()))
    print(f"C decoder on {len(blobs)} packs: {refused} refused, {accepted} accepted, as snnc")
    assert refused > 1000 and accepted > 10


# ------------------------------------------------- ternary and binary layers (format version 3)

SIGN_CONFIG = {"conv1": {"scheme": "ternary"}, "conv2": {"scheme": "binary"},
               "head": {"scheme": "ternary"}}


@pytest.fixture(scope="module")
def signs(tmp_path_factory):
    """The fuzzed model's shape quantized ternary (conv1: 144 weights, the last code byte
    holding 4 trits), binary (conv2) and ternary (the head), compiled with external weights
    (layouts 2, 3, 3); its pack's mutants, judged as the first pack's."""
    model = conv_snn(seed=1)
    snnc.quantize(model, SIGN_CONFIG)
    model = make_firing(model, (8, 2, 12, 12), seed=1)
    root = tmp_path_factory.mktemp("fuzz_signs")
    result = compile_program(export(model, torch.zeros(1, 2, 12, 12)),
                             Options(external_weights=True, pack_location="model.snnpack"))
    blob = result.pack_bytes()
    assert [(layer.scheme, layer.bits, layer.codes.size % 5) for layer in result.packed] == [
        ("ternary", 2, 4), ("binary", 1, 2), ("ternary", 2, 0)]
    (root / "model.onnx").write_bytes(result.data)
    (root / "model.snnpack").write_bytes(blob)
    x = np.random.default_rng(SEED).random((2, 2, 12, 12), dtype=np.float32)
    real = {"blob": blob, "layers": pack.decode(blob), "skeleton": str(root / "model.onnx"),
            "x": x}
    real["logits"] = load_session(real["skeleton"], intra_op_num_threads=1).run(None, {"x": x})[0]
    rng = np.random.default_rng(SEED + 2)
    every = [(kind, m) for kind, m in field_mutants(blob) + random_mutants(blob, rng) if m != blob]
    real["judged"] = [(kind, mutant, *classify(real, mutant)) for kind, mutant in every]
    return real


def test_ternary_and_binary_mutants_are_refused_or_mean_the_same(signs, decoder, tmp_path):
    """As above for a pack of ternary and binary layers: every mutant is refused or means the
    same structure (values beyond it only where a reader cannot tell); a version-1 or -2
    header is refused (these schemes came with version 3); the C decoder accepts exactly what
    snnc accepts, with the same arrays; and whatever loads with the skeleton gives its
    logits."""
    judged = signs["judged"]
    counts = _print_counts(f"decode: {len(judged)} mutants of a {len(signs['blob'])} B ternary/"
                           "binary pack", [(kind, verdict) for kind, _, verdict, _ in judged])
    assert len(judged) >= 5000
    for kind in ("bit flips", "truncate/extend"):
        assert counts[kind]["refused"] == sum(counts[kind].values())
    for version in (1, 2):
        old = bytearray(signs["blob"])
        struct.pack_into("<H", old, 8, version)
        with pytest.raises(BadInputError, match="scheme is 2, expected .* from version 3"):
            pack.decode(reseal(old))
    assert sum(row["values"] for row in counts.values()) >= 500
    verdicts = run_harness(decoder, [m for _, m, _, _ in judged], tmp_path)
    for (kind, _, verdict, layers), got in zip(judged, verdicts):
        assert (got is None) == (verdict == "refused"), kind
        if got is not None:
            want = pack.onnx_initializers(layers)
            assert all(np.array_equal(g, w) for g, w in zip(got, want.values()))
    accepted = [(kind, m) for kind, m, verdict, _ in judged if verdict != "refused"]
    rng = np.random.default_rng(SEED + 3)
    path = tmp_path / "mutant.snnpack"
    loaded = 0
    for i in rng.choice(len(accepted), size=min(150, len(accepted)), replace=False):
        path.write_bytes(accepted[i][1])
        try:
            session = load_session(signs["skeleton"], str(path), intra_op_num_threads=1)
        except BadInputError:
            continue
        loaded += 1
        assert session.run(None, {"x": signs["x"]})[0].tobytes() == signs["logits"].tobytes()
    # the skeleton's digests refuse nearly all (BadInputError, nothing else escapes)
    print(f"load_session: of 150 accepted mutants {150 - loaded} refused, {loaded} loaded with "
          "the original logits")
