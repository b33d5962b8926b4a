"""The packed-weight binary (.snnpack): every quantized weight at its true bit width.

Format version 1, little-endian; the spec is docs/binary_format.md. `encode` builds a
pack from the layers the ONNX backend reports (`to_onnx(..., packed=[])`), `decode` reads
one back (verifying the checksum)
and `onnx_initializers` turns decoded layers into exactly the integer containers and
scales that the ONNX backend would have stored, for ONNX Runtime's external initializers.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import BadInputError

MAGIC = b"SNNPACK\0"
VERSION = 1
ALIGN = 64
HEADER = struct.Struct("<8sHHIIIQQQQII")  # 64 bytes, see docs/binary_format.md
ENTRY = struct.Struct("<IIIIBBBB6IIQQQ")  # 72 bytes per layer
SCHEMES = {"uniform": 0, "pot": 1}
MAX_DIMS = 6
assert HEADER.size == 64 and ENTRY.size == 72


@dataclass(frozen=True)
class Layer:
    name: str  # the ONNX initializer holding the integer weights
    scale_name: str  # the ONNX initializer holding the per-channel scales
    scheme: str
    bits: int
    codes: np.ndarray  # int32, the quantizer's codes (uniform q, PoT sign * c)
    scales: np.ndarray  # float32, one per output channel (the quantizer's scale)
    layout: int = 0  # how the ONNX file holds them: LEVELS, CODES or SIGNED (below)


# Layouts (the entry's layout byte): what the ONNX initializer named `name` holds.
LEVELS = 0  # DequantizeLinear input: container(codes) levels, scaled by the scale initializer
CODES = 1  # the codes themselves as int8, decoded in the graph (--pot-lowering shift)
SIGNED = 2  # integer weights levels * sign(scale) (scale +-1 or 0 after fold_scales), Cast


def _align(n: int) -> int:
    return -n % ALIGN


def pack_bits(codes: np.ndarray, scheme: str, bits: int) -> bytes:
    """k-bit fields, LSB first: uniform two's complement; PoT sign bit (k-1) over c."""
    flat = codes.reshape(-1).astype(np.int64)
    if scheme == "uniform":
        fields = flat & ((1 << bits) - 1)
    else:
        fields = (np.abs(flat) & ((1 << (bits - 1)) - 1)) | ((flat < 0).astype(np.int64)
                                                             << (bits - 1))
    bit_matrix = ((fields[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, scheme: str, bits: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count * bits]
    fields = (stream.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    if scheme == "uniform":
        sign = 1 << (bits - 1)
        values = (fields ^ sign) - sign
    else:
        magnitude = fields & ((1 << (bits - 1)) - 1)
        values = np.where(fields >> (bits - 1), -magnitude, magnitude)
    return values.astype(np.int32)


def encode(layers: list[Layer]) -> bytes:
    strings = bytearray()
    entries = []
    data = bytearray()
    for layer in layers:
        if layer.codes.ndim > MAX_DIMS:
            raise ValueError(f"{layer.name}: more than {MAX_DIMS} dimensions")
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
    checksum = zlib.crc32(header + body + bytes(data))
    header = header[:-8] + struct.pack("<II", checksum, 0)
    return header + body + bytes(data)


def decode(blob: bytes, where: str = "pack") -> list[Layer]:
    """Layers of a pack; BadInputError if it is not a valid version-1 pack."""
    if len(blob) < HEADER.size or blob[:8] != MAGIC:
        raise BadInputError(f"{where} is not an snnc weight pack (bad magic)")
    (_, version, _flags, header_size, count, strings_size, table_at, strings_at, data_at,
     data_size, checksum, _) = HEADER.unpack_from(blob)
    if version != VERSION:
        raise BadInputError(f"{where} is pack format version {version}; this snnc reads "
                            f"version {VERSION}")
    if data_at + data_size != len(blob):
        raise BadInputError(f"{where} is truncated or has trailing bytes")
    zeroed = blob[:HEADER.size - 8] + b"\0" * 8 + blob[HEADER.size:]
    if zlib.crc32(zeroed) != checksum:
        raise BadInputError(f"{where} is corrupt (checksum mismatch)")
    strings = blob[strings_at:strings_at + strings_size]
    data = memoryview(blob)[data_at:]
    schemes = {v: k for k, v in SCHEMES.items()}
    layers = []
    for i in range(count):
        fields = ENTRY.unpack_from(blob, table_at + i * ENTRY.size)
        name_at, name_len, scale_at, scale_len, scheme, bits, ndim, layout = fields[:8]
        dims = fields[8:8 + ndim]
        channels, codes_at, codes_size, scales_at = fields[14:18]
        count_codes = int(np.prod(dims))
        codes = unpack_bits(bytes(data[codes_at:codes_at + codes_size]), count_codes,
                            schemes[scheme], bits).reshape(dims)
        scales = np.frombuffer(bytes(data[scales_at:scales_at + 4 * channels]), "<f4")
        layers.append(Layer(strings[name_at:name_at + name_len].decode(),
                            strings[scale_at:scale_at + scale_len].decode(), schemes[scheme],
                            bits, codes, scales.astype(np.float32), layout))
    return layers


def code_bytes(layer: Layer) -> int:
    return -(-layer.codes.size * layer.bits // 8)


def payload_bytes(layer: Layer) -> int:
    """A layer's codes at their bit width plus its float32 scales."""
    return code_bytes(layer) + 4 * layer.scales.size


def overhead(blob: bytes) -> int:
    """Bytes that are neither codes nor scales: header, table, strings and alignment."""
    return len(blob) - sum(payload_bytes(layer) for layer in decode(blob))


def onnx_initializers(layers: list[Layer]) -> dict[str, np.ndarray]:
    """{initializer name: integer array} exactly as the ONNX backend stores these weights
    (int8/int16 containers: the external-weights path does not use int4)."""
    from .onnx_emit import container, signed_container

    arrays = {}
    for layer in layers:
        if layer.layout == CODES:
            arrays[layer.name] = layer.codes.astype(np.int8)
        elif layer.layout == SIGNED:
            arrays[layer.name] = signed_container(layer.codes, layer.scheme, layer.bits,
                                                  layer.scales)
        else:
            arrays[layer.name] = container(layer.codes, layer.scheme, layer.bits, False)[0]
    return arrays


def format_table(layers: list[Layer], total_bytes: int) -> str:
    width = max([len(layer.name) for layer in layers] + [5])
    lines = [f"{'layer':<{width}}  {'scheme':<7}  {'bits':>4}  {'shape':<18}  {'weights':>10}  "
             f"{'packed B':>9}"]
    for layer in layers:
        shape = "x".join(map(str, layer.codes.shape))
        lines.append(f"{layer.name:<{width}}  {layer.scheme:<7}  {layer.bits:>4}  {shape:<18}  "
                     f"{layer.codes.size:>10,}  {code_bytes(layer):>9,}")
    payload = sum(payload_bytes(layer) for layer in layers)
    weights = sum(layer.codes.size for layer in layers)
    bits = sum(layer.codes.size * layer.bits for layer in layers)
    lines.append(f"{len(layers)} layers, {weights:,} weights, average {bits / max(weights, 1):.2f} "
                 f"bits; file {total_bytes:,} B = codes and scales {payload:,} B + header, "
                 f"table and alignment {total_bytes - payload:,} B; "
                 f"{32 * weights / 8 / total_bytes:.2f}x smaller than float32")
    return "\n".join(lines)
