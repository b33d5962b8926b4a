"""The packed-weight binary (.snnpack): every quantized weight at its true bit width.

Format version 3, little-endian; the spec is docs/binary_format.md. `encode` builds a
pack from the layers the ONNX backend reports (`to_onnx(..., packed=[])`); `decode` reads
one back and validates all of it: it accepts exactly the bytes `encode` writes (the
canonical layout, zero padding, legal enums, bit widths and scales, and shapes each layout's
consumers can take) and raises BadInputError naming the field, layer and byte offset for
anything else, so a pack that decodes is one inspect, verify and load_session can use. Version-2
files (the same format without ternary and binary layers) and version-1 files (version 2
with a checksum that left out the reserved word) are read too.
`onnx_initializers` turns decoded layers into exactly the integer containers and scales
that the ONNX backend would have stored, for ONNX Runtime's external initializers.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from snnc.errors import BadInputError
from snnc.quant.weights import (TRITS_PER_BYTE, code_bytes as weight_code_bytes, container,
                                gemm_weights, signed_container, stored_bits, unit)

MAGIC = b"SNNPACK\0"
VERSION = 3
ALIGN = 64
HEADER = struct.Struct("<8sHHIIIQQQQII")  # 64 bytes, see docs/binary_format.md
ENTRY = struct.Struct("<IIIIBBBB6IIQQQ")  # 72 bytes per layer
SCHEMES = {"uniform": 0, "pot": 1, "ternary": 2, "binary": 3}
SCHEMES_SINCE = {"ternary": 3, "binary": 3}  # the first version with these schemes
BITS = {"uniform": range(2, 9), "pot": range(2, 6), "ternary": range(2, 3), "binary": range(1, 2)}
BITS_EXPECTED = "2..8 for uniform, 2..5 for pot, 2 for ternary, 1 for binary"
SCHEME_EXPECTED = "0 (uniform), 1 (pot), 2 (ternary) or 3 (binary; 2 and 3 from version 3 on)"
MAX_DIMS = 6
CHECKSUM_AT = 56
CHECKSUM_HOLE = {1: 8, 2: 4, 3: 4}  # bytes from 56 zeroed for the CRC: version 1 also left out 60..63
assert HEADER.size == 64 and ENTRY.size == 72

# (field, byte offset) in struct order: the names of decode's messages
HEADER_FIELDS = (("magic", 0), ("version", 8), ("flags", 10), ("header size", 12),
                 ("layer count", 16), ("string table size", 20), ("layer table offset", 24),
                 ("string table offset", 32), ("data offset", 40), ("data size", 48),
                 ("checksum", 56), ("reserved", 60))
ENTRY_FIELDS = (("name offset", 0), ("name length", 4), ("scale-name offset", 8),
                ("scale-name length", 12), ("scheme", 16), ("bits", 17), ("ndim", 18),
                ("layout", 19)) + tuple((f"dim {i}", 20 + 4 * i) for i in range(MAX_DIMS)) + (
                ("channels", 44), ("codes offset", 48), ("codes size", 56),
                ("scales offset", 64))
FIX = "recompile the model with `snnc compile MODEL --pack PACK.snnpack` to write a valid pack"


@dataclass(frozen=True)
class Layer:
    name: str  # the ONNX initializer holding the integer weights
    scale_name: str  # the ONNX initializer holding the per-channel scales
    scheme: str
    bits: int
    codes: np.ndarray  # int32, the quantizer's codes (uniform/ternary/binary q, PoT sign * c)
    scales: np.ndarray  # float32, one per output channel (the quantizer's scale)
    layout: int = 0  # how the ONNX file holds them: LEVELS, CODES or SIGNED (below)


# Layouts (the entry's layout byte): what the ONNX initializer named `name` holds.
LEVELS = 0  # DequantizeLinear input: container(codes) levels, scaled by the scale initializer
CODES = 1  # the codes themselves as int8, decoded in the graph (--pot-lowering shift)
SIGNED = 2  # integer weights levels * sign(scale) (scale +-1 or 0 after fold_scales), Cast
GEMM = 3  # the signed integer weights as an int8 [K, M] GEMM matrix (weights.gemm_matrix)
LAYOUTS = {LEVELS: "levels", CODES: "codes", SIGNED: "signed", GEMM: "gemm"}
LAYOUT_EXPECTED = "0 (levels), 1 (codes, pot only), 2 (signed) or 3 (gemm)"
# The dimensions each layout's consumer can take (docs/binary_format.md, "Shapes"): every
# layout holds the weights of a linear [C, K] or convolution [C, Cin / groups, *kernel]
# layer, output channels first. Levels, codes and signed weights reach a Conv, Gemm or MatMul
# through a DequantizeLinear or a Cast; a gemm layer becomes the matrix [K, D * C]
# (weights.gemm_matrix), which needs an input axis to lay out.
DIMS = {LEVELS: (2, MAX_DIMS), CODES: (2, MAX_DIMS), SIGNED: (2, MAX_DIMS), GEMM: (2, MAX_DIMS)}
WEIGHT_SHAPE = "the shape of a linear [C, K] or convolution [C, Cin, *kernel] weight"


def layout_rules(scheme: str, layout: int, ndim: int) -> tuple:
    """(field, ok, what was expected) for a layer's layout and number of dimensions: the
    layout one the format defines (codes for PoT only), the dimensions ones it can take."""
    low, high = DIMS.get(layout, (1, MAX_DIMS))
    return (("layout", layout in LAYOUTS and (layout != CODES or scheme == "pot"),
             LAYOUT_EXPECTED),
            ("ndim", low <= ndim <= high,
             f"{low}..{high} for layout {layout} ({LAYOUTS[layout]}): {WEIGHT_SHAPE}"
             if layout in LAYOUTS else f"{low}..{high}"))


def _align(n: int) -> int:
    return -n % ALIGN


def legal_scales(scales: np.ndarray, scheme: str, bits: int, layout: int) -> np.ndarray:
    """Which scales a layer of this layout can hold (bool per channel): CODES exactly +unit;
    SIGNED +-unit or +0; LEVELS a positive finite quantizer scale, or (an int4 layer that
    fold_scales folded) -unit or +0. -0.0, NaN and infinities never."""
    u = np.float32(unit(scheme, bits))
    zero = (scales == 0) & ~np.signbit(scales)
    if layout == CODES:
        return scales == u
    if layout in (SIGNED, GEMM):
        return zero | (np.abs(scales) == u)
    return zero | (scales == -u) | ((scales > 0) & np.isfinite(scales))


POWERS_OF_3 = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.int64)
# the five trits of every byte value (bytes of 243 or more, which decode refuses, included)
TRITS = ((np.arange(256)[:, None] // POWERS_OF_3) % 3).astype(np.int32)


def pack_bits(codes: np.ndarray, scheme: str, bits: int) -> bytes:
    """k-bit fields, LSB first: uniform two's complement; PoT sign bit (k-1) over c; binary
    the sign bit alone (1: -1). Ternary: five trits q mod 3 a byte, the first the least
    significant (byte = sum t_i 3^i), unused trits of the last byte 0."""
    flat = codes.reshape(-1).astype(np.int64)
    if scheme == "ternary":
        trits = np.zeros(-(-flat.size // TRITS_PER_BYTE) * TRITS_PER_BYTE, np.int64)
        trits[:flat.size] = flat % 3
        return (trits.reshape(-1, TRITS_PER_BYTE) @ POWERS_OF_3).astype(np.uint8).tobytes()
    if scheme == "binary":
        fields = (flat < 0).astype(np.int64)
    elif scheme == "uniform":
        fields = flat & ((1 << bits) - 1)
    else:
        fields = (np.abs(flat) & ((1 << (bits - 1)) - 1)) | ((flat < 0).astype(np.int64)
                                                             << (bits - 1))
    bit_matrix = ((fields[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def _fields(data: bytes, count: int, bits: int) -> np.ndarray:
    """The count k-bit fields of an LSB-first stream, as unsigned integers (int32)."""
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count * bits]
    matrix = stream.reshape(count, bits)
    fields = np.zeros(count, np.int32)
    for j in range(bits):
        fields |= matrix[:, j].astype(np.int32) << j
    return fields


def _trits(data: bytes, count: int) -> np.ndarray:
    """The count trits (0, 1, 2) of five-trit bytes, as int32."""
    return TRITS[np.frombuffer(data, np.uint8)].reshape(-1)[:count]


def _values(fields: np.ndarray, scheme: str, bits: int) -> np.ndarray:
    """Codes from the unsigned fields (ternary: the trits)."""
    if scheme == "ternary":
        return np.where(fields == 2, -1, fields).astype(np.int32)
    if scheme == "binary":
        return np.where(fields == 1, -1, 1).astype(np.int32)
    if scheme == "uniform":
        sign = 1 << (bits - 1)
        return ((fields ^ sign) - sign).astype(np.int32)
    magnitude = fields & ((1 << (bits - 1)) - 1)
    return np.where(fields >> (bits - 1), -magnitude, magnitude).astype(np.int32)


def unpack_bits(data: bytes, count: int, scheme: str, bits: int) -> np.ndarray:
    fields = _trits(data, count) if scheme == "ternary" else _fields(data, count, bits)
    return _values(fields, scheme, bits)


def checksum(blob: bytes, version: int = VERSION) -> int:
    """CRC-32 of the file with the checksum word (version 1: and the reserved word) zero."""
    hole = CHECKSUM_HOLE[version]
    view = memoryview(blob)
    crc = zlib.crc32(view[:CHECKSUM_AT])
    crc = zlib.crc32(b"\0" * hole, crc)
    return zlib.crc32(view[CHECKSUM_AT + hole:], crc)


def encode(layers: list[Layer]) -> bytes:
    if not layers:
        raise BadInputError("a weight pack needs at least one quantized layer")
    strings = bytearray()
    entries = []
    data = bytearray()
    for layer in layers:
        for field, ok, expected in layout_rules(layer.scheme, layer.layout, layer.codes.ndim):
            if not ok:
                raise BadInputError(f"{layer.name}: cannot pack a layer of layout {layer.layout} "
                                    f"and shape {list(layer.codes.shape)}: the {field} must "
                                    f"be {expected}")
        bad = np.flatnonzero(~legal_scales(layer.scales, layer.scheme, layer.bits, layer.layout))
        if bad.size:
            raise BadInputError(f"{layer.name}: scale {float(layer.scales[bad[0]])!r} of channel "
                                f"{bad[0]} cannot be packed (quantizer scales must be positive "
                                "and finite)")
        name, scale_name = layer.name.encode(), layer.scale_name.encode()
        name_at = len(strings)
        strings += name + scale_name
        data += b"\0" * _align(len(data))
        codes_at = len(data)
        data += pack_bits(layer.codes, layer.scheme, layer.bits)
        codes_size = len(data) - codes_at
        data += b"\0" * _align(len(data))
        scales_at = len(data)
        data += layer.scales.astype("<f4").tobytes()
        dims = list(layer.codes.shape) + [0] * (MAX_DIMS - layer.codes.ndim)
        entries.append(ENTRY.pack(name_at, len(name), name_at + len(name), len(scale_name),
                                  SCHEMES[layer.scheme], layer.bits, layer.codes.ndim,
                                  layer.layout,
                                  *dims, len(layer.scales), codes_at, codes_size, scales_at))
    table_at = HEADER.size
    strings_at = table_at + ENTRY.size * len(entries)
    data_at = strings_at + len(strings)
    data_at += _align(data_at)
    body = b"".join(entries) + bytes(strings)
    body += b"\0" * (data_at - HEADER.size - len(body))
    header = HEADER.pack(MAGIC, VERSION, 0, HEADER.size, len(entries), len(strings), table_at,
                         strings_at, data_at, len(data), 0, 0)
    blob = bytearray(header + body + bytes(data))
    struct.pack_into("<I", blob, CHECKSUM_AT, checksum(blob))
    return bytes(blob)


class _Reader:
    """decode's state: the blob, where it came from, and the refusal every check raises."""

    def __init__(self, blob: bytes, where: str):
        self.blob, self.where = blob, where

    def refuse(self, what: str, offset: int, layer: str = "") -> None:
        at = f"{layer}, byte {offset}" if layer else f"byte {offset}"
        raise BadInputError(f"{self.where} is not a valid snnc weight pack: {what} ({at}); "
                            f"{FIX}")

    def require(self, rules, values: dict, fields, base: int = 0, layer: str = "") -> None:
        """rules: (field, ok, what was expected); refuses the first that fails."""
        offsets = dict(fields)
        for field, ok, expected in rules:
            if not ok:
                self.refuse(f"{field} is {values[field]}, expected {expected}",
                            base + offsets[field], layer)

    def zeros(self, start: int, end: int, what: str) -> None:
        """Padding must be zero bytes."""
        nonzero = np.flatnonzero(np.frombuffer(self.blob, np.uint8, end - start, start))
        if nonzero.size:
            self.refuse(f"{what} is not zero", start + int(nonzero[0]))


def decode(blob: bytes, where: str = "pack") -> list[Layer]:
    """Layers of a pack; BadInputError if it is not exactly a pack `encode` writes."""
    blob = bytes(blob)
    r = _Reader(blob, where)
    if len(blob) < HEADER.size or blob[:8] != MAGIC:
        raise BadInputError(f"{where} is not an snnc weight pack (bad magic); {FIX}")
    h = dict(zip([f for f, _ in HEADER_FIELDS], HEADER.unpack_from(blob)))
    if h["version"] not in CHECKSUM_HOLE:
        r.refuse(f"format version {h['version']}; this snnc reads versions "
                 f"{', '.join(map(str, CHECKSUM_HOLE))}", 8)
    if h["data offset"] + h["data size"] != len(blob):
        r.refuse(f"truncated or has trailing bytes: the header says {h['data offset']:,} + "
                 f"{h['data size']:,} bytes, the file has {len(blob):,}", 48)
    if checksum(blob, h["version"]) != h["checksum"]:
        r.refuse("corrupt (checksum mismatch)", CHECKSUM_AT)
    count = h["layer count"]
    strings_at = HEADER.size + ENTRY.size * count
    strings_end = strings_at + h["string table size"]
    r.require((("flags", h["flags"] == 0, 0),
               ("header size", h["header size"] == HEADER.size, HEADER.size),
               ("reserved", h["reserved"] == 0, 0),
               ("layer count", count >= 1 and strings_end <= len(blob),
                "at least 1, with the table inside the file"),
               ("layer table offset", h["layer table offset"] == HEADER.size, HEADER.size),
               ("string table offset", h["string table offset"] == strings_at,
                f"{strings_at} (right after the layer table)"),
               ("data offset", h["data offset"] == strings_end + _align(strings_end),
                f"{strings_end + _align(strings_end)} (the string table's end, 64-aligned)")),
              h, HEADER_FIELDS)
    r.zeros(strings_end, h["data offset"], "alignment padding after the string table")
    strings = blob[strings_at:strings_end]
    cursor = {"strings": 0, "strings_at": strings_at, "data": 0, "names": set()}
    entries = [_entry(r, i, strings, cursor, h) for i in range(count)]
    r.require((("string table size", cursor["strings"] == len(strings),
                f"{cursor['strings']} (the names' total length)"),
               ("data size", cursor["data"] == h["data size"],
                f"{cursor['data']} (the end of the last layer's scales)")), h, HEADER_FIELDS)
    return [_layer(r, e, h["data offset"]) for e in entries]


def _names(r: _Reader, e: dict, base: int, label: str, strings: bytes, cursor: dict
           ) -> list[str]:
    """The entry's name and scale name: next in the string table, UTF-8, unique; the scale
    name is present exactly for layout 0 (levels)."""
    at, name_len, scale_len = cursor["strings"], e["name length"], e["scale-name length"]
    r.require((("name offset", e["name offset"] == at, f"{at} (right after the previous names)"),
               ("name length", 1 <= name_len <= len(strings) - at, "1 or more, inside the table"),
               ("scale-name offset", e["scale-name offset"] == at + name_len,
                f"{at + name_len} (right after the name)"),
               ("scale-name length", (scale_len >= 1) == (e["layout"] == LEVELS)
                and scale_len <= len(strings) - at - name_len,
                "1 or more for layout 0 (levels), 0 for layouts 1, 2 and 3")),
              e, ENTRY_FIELDS, base, label)
    names = []
    for field, start, size in (("name", at, name_len), ("scale name", at + name_len, scale_len)):
        try:
            names.append(strings[start:start + size].decode())
        except UnicodeDecodeError:
            r.refuse(f"the {field} of {label} is not UTF-8", cursor["strings_at"] + start)
        if names[-1] in cursor["names"]:
            r.refuse(f"the {field} {names[-1]!r} of {label} is used twice",
                     cursor["strings_at"] + start)
        cursor["names"] |= {names[-1]} - {""}
    cursor["strings"] = at + name_len + scale_len
    return names


def _entry(r: _Reader, i: int, strings: bytes, cursor: dict, h: dict) -> dict:
    """Layer i's table entry, checked against the canonical layout; advances the cursor."""
    base = HEADER.size + i * ENTRY.size
    e = dict(zip([f for f, _ in ENTRY_FIELDS], ENTRY.unpack_from(r.blob, base)))
    names = _names(r, e, base, f"layer {i}", strings, cursor)
    label = f"layer {i} {names[0]!r}"
    scheme = {v: k for k, v in SCHEMES.items()}.get(e["scheme"], "")
    ndim, dims = e["ndim"], [e[f"dim {d}"] for d in range(MAX_DIMS)]
    codes_at = cursor["data"] + _align(cursor["data"])
    codes_size = weight_code_bytes(math.prod(dims[:ndim]), scheme, e["bits"])
    scales_at = codes_at + codes_size + _align(codes_at + codes_size)
    r.require((("scheme", scheme != "" and h["version"] >= SCHEMES_SINCE.get(scheme, 1),
                SCHEME_EXPECTED),
               ("bits", e["bits"] in BITS.get(scheme, ()), BITS_EXPECTED),
               *layout_rules(scheme, e["layout"], ndim))
              + tuple((f"dim {d}", (dims[d] >= 1) == (d < ndim), "positive when used, else 0")
                      for d in range(MAX_DIMS))
              + (("channels", e["channels"] == dims[0], f"{dims[0]} (dim 0)"),
                 ("codes offset", e["codes offset"] == codes_at,
                  f"{codes_at} (the next 64-byte boundary)"),
                 ("codes size", e["codes size"] == codes_size,
                  f"{codes_size} (ceil(n * k / 8), ternary ceil(n / 5))"),
                 ("scales offset", e["scales offset"] == scales_at,
                  f"{scales_at} (the 64-byte boundary after the codes)"),
                 ("dim 0", scales_at + 4 * dims[0] <= h["data size"],
                  "a shape whose codes and scales end inside the data")),
              e, ENTRY_FIELDS, base, label)
    data_at = h["data offset"]
    r.zeros(data_at + cursor["data"], data_at + codes_at, f"alignment padding before {label}")
    r.zeros(data_at + codes_at + codes_size, data_at + scales_at,
            f"alignment padding after the codes of {label}")
    cursor["data"] = scales_at + 4 * dims[0]
    return {**e, "label": label, "names": names, "scheme_name": scheme,
            "shape": tuple(dims[:ndim])}


def _layer(r: _Reader, e: dict, data_at: int) -> Layer:
    """Layer e's codes and scales, with their values checked."""
    scheme, bits, layout, label = e["scheme_name"], e["bits"], e["layout"], e["label"]
    count, start = math.prod(e["shape"]), data_at + e["codes offset"]
    raw = r.blob[start:start + e["codes size"]]
    if scheme == "ternary":
        fields = _trits(raw, count)
        bad = np.flatnonzero(np.frombuffer(raw, np.uint8) >= 3 ** TRITS_PER_BYTE)
        if bad.size:
            r.refuse(f"code byte {int(bad[0])} of {label} is not five trits (243 or more)",
                     start + int(bad[0]))
        used = count % TRITS_PER_BYTE
        if used and raw[-1] >= 3 ** used:
            r.refuse(f"the padding trits of the last code byte of {label} are not zero",
                     start + len(raw) - 1)
    else:
        used = count * bits % 8
        if used and raw[-1] >> used:
            r.refuse(f"the padding bits of the last code byte of {label} are not zero",
                     start + len(raw) - 1)
        fields = _fields(raw, count, bits)
    if scheme == "pot":  # sign bit over code 0: a -0 the encoder never writes
        bad = np.flatnonzero(fields == 1 << (bits - 1))
        if bad.size:
            r.refuse(f"PoT code {int(bad[0])} of {label} is -0 (sign bit on a zero code)",
                     start + int(bad[0]) * bits // 8)
    at = data_at + e["scales offset"]
    scales = np.frombuffer(r.blob, "<f4", e["channels"], at).astype(np.float32)
    bad = np.flatnonzero(~legal_scales(scales, scheme, bits, layout))
    if bad.size:
        r.refuse(f"scale {float(scales[bad[0]])!r} of channel {int(bad[0])} of {label} is not "
                 f"a legal layout-{layout} ({LAYOUTS[layout]}) scale", at + 4 * int(bad[0]))
    return Layer(e["names"][0], e["names"][1], scheme, bits,
                 _values(fields, scheme, bits).reshape(e["shape"]), scales, layout)


def code_bytes(layer: Layer) -> int:
    return weight_code_bytes(layer.codes.size, layer.scheme, layer.bits)


def payload_bytes(layer: Layer) -> int:
    """A layer's codes at their bit width plus its float32 scales."""
    return code_bytes(layer) + 4 * layer.scales.size


def overhead(blob: bytes) -> int:
    """Bytes that are neither codes nor scales: header, table, strings and alignment."""
    return len(blob) - sum(payload_bytes(layer) for layer in decode(blob))


def onnx_initializers(layers: list[Layer]) -> dict[str, np.ndarray]:
    """{initializer name: integer array} exactly as the ONNX backend stores these weights
    (int8/int16 containers: the external-weights path does not use int4)."""
    arrays = {}
    for layer in layers:
        if layer.layout == CODES:
            arrays[layer.name] = layer.codes.astype(np.int8)
        elif layer.layout == GEMM:
            arrays[layer.name] = gemm_weights(layer.codes, layer.scheme, layer.bits,
                                              layer.scales)
        elif layer.layout == SIGNED:
            arrays[layer.name] = signed_container(layer.codes, layer.scheme, layer.bits,
                                                  layer.scales)
        else:
            arrays[layer.name] = container(layer.codes, layer.scheme, layer.bits, False)[0]
    return arrays


DIGESTS_KEY = "snnc.pack_digests"  # a skeleton's metadata: {weight name: weight_digest}
# What a skeleton's external references name after the pack's file name: no such file
# exists, so ONNX Runtime opening the skeleton without the decoded arrays fails naming the
# file and this advice, instead of reading the pack's bytes as tensors (docs/deployment.md).
LOCATION_HINT = (" (a packed-weight file: load this model with snnc.runtime.load_session, or "
                 "hand ONNX Runtime the arrays snnpack_decode writes as external initializers; "
                 "docs/deployment.md)")


def skeleton_location(pack_name: str) -> str:
    """The location a skeleton's references hold for the pack `pack_name`."""
    return pack_name + LOCATION_HINT


def pack_name(location: str) -> str:
    """The pack's file name in a skeleton's reference (older skeletons name it alone)."""
    return location[:-len(LOCATION_HINT)] if location.endswith(LOCATION_HINT) else location


def weight_digest(array: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of an integer initializer as ONNX Runtime receives it:
    its dtype, shape and little-endian bytes. A skeleton records one per reference
    (onnx_emit.externalize) so that load_session can tell the pack it was compiled with
    from another compile's pack of the same names and shapes."""
    array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
    head = f"{array.dtype.str} {list(array.shape)}\n".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()[:16]


def table_json(layers: list[Layer], total_bytes: int) -> dict:
    """The layer table as JSON-able data (`snnc inspect --json`): one dict per layer and the
    totals of `format_table`."""
    rows = [{"name": layer.name, "scale_name": layer.scale_name, "scheme": layer.scheme,
             "bits": stored_bits(layer.scheme, layer.bits), "shape": [int(d) for d in layer.codes.shape],
             "weights": int(layer.codes.size), "packed_bytes": code_bytes(layer),
             "layout": LAYOUTS[layer.layout], "channels": int(layer.scales.size)}
            for layer in layers]
    weights = sum(row["weights"] for row in rows)
    payload = sum(payload_bytes(layer) for layer in layers)
    bits = sum(row["weights"] * row["bits"] for row in rows)
    return {"layers": rows, "totals": {
        "layers": len(rows), "weights": weights,
        "average_bits": round(bits / max(weights, 1), 4), "file_bytes": total_bytes,
        "payload_bytes": payload, "overhead_bytes": total_bytes - payload,
        "float32_ratio": round(32 * weights / 8 / max(total_bytes, 1), 4)}}


def format_table(layers: list[Layer], total_bytes: int) -> str:
    table = table_json(layers, total_bytes)
    rows, totals = table["layers"], table["totals"]
    width = max([len(row["name"]) for row in rows] + [5])
    lines = [f"{'layer':<{width}}  {'scheme':<7}  {'bits':>4}  {'shape':<18}  {'weights':>10}  "
             f"{'packed B':>9}  layout"]
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"{row['name']:<{width}}  {row['scheme']:<7}  {row['bits']:>4g}  "
                     f"{shape:<18}  {row['weights']:>10,}  {row['packed_bytes']:>9,}  "
                     f"{row['layout']}")
    lines.append(f"{totals['layers']} layers, {totals['weights']:,} weights, average "
                 f"{totals['average_bits']:.2f} bits; file {total_bytes:,} B = codes and scales "
                 f"{totals['payload_bytes']:,} B + header, table and alignment "
                 f"{totals['overhead_bytes']:,} B; {totals['float32_ratio']:.2f}x smaller than "
                 "float32")
    return "\n".join(lines)
