"""The few fields of an ONNX model snnc's runtime reads, without the onnx package.

`snnc.runtime.load_session` checks a skeleton against its pack before ONNX Runtime sees
either (docs/binary_format.md, "A pack and its model"). It needs the graph's nodes (op
type, inputs, a Cast's `to`), its initializers (name, type, dims, where their data is, and
the values of the small ones it compares) and the metadata. This reader parses exactly
those from the protobuf wire format, so that the runtime installs with numpy and
onnxruntime alone (docs/deployment.md). The objects carry onnx's own field names, so
code written against onnx.ModelProto reads either.

The file is untrusted: every length is checked against the bytes that remain, nesting is
fixed by the schema, varints are at most 10 bytes, and anything malformed is a ValueError
(callers turn it into a BadInputError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_MODEL = 2 ** 31  # protobuf's own limit on a message

# TensorProto.DataType: onnx's numbering
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64 = 1, 2, 3, 4, 5, 6, 7
STRING, BOOL, FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16, UINT4, INT4 = \
    8, 9, 10, 11, 12, 13, 16, 21, 22
EXTERNAL = 1  # TensorProto.DataLocation
TYPE_NAMES = {FLOAT: "float", UINT8: "uint8", INT8: "int8", UINT16: "uint16", INT16: "int16",
              INT32: "int32", INT64: "int64", STRING: "string", BOOL: "bool",
              FLOAT16: "float16", DOUBLE: "double", UINT32: "uint32", UINT64: "uint64",
              BFLOAT16: "bfloat16", UINT4: "uint4", INT4: "int4"}
_NUMPY = {FLOAT: np.float32, UINT8: np.uint8, INT8: np.int8, UINT16: np.uint16,
          INT16: np.int16, INT32: np.int32, INT64: np.int64, BOOL: np.bool_,
          DOUBLE: np.float64, UINT32: np.uint32, UINT64: np.uint64, FLOAT16: np.float16}


def type_of(dtype: np.dtype) -> int:
    """The TensorProto data type of a numpy dtype (onnx.helper.np_dtype_to_tensor_dtype)."""
    for code, np_type in _NUMPY.items():
        if np.dtype(np_type) == np.dtype(dtype):
            return code
    raise ValueError(f"no ONNX data type for {dtype}")


@dataclass
class Entry:  # StringStringEntryProto
    key: str = ""
    value: str = ""


@dataclass
class Attribute:
    name: str = ""
    i: int = 0


@dataclass
class Node:
    name: str = ""
    op_type: str = ""
    input: list = field(default_factory=list)
    output: list = field(default_factory=list)
    attribute: list = field(default_factory=list)


@dataclass
class Tensor:
    name: str = ""
    data_type: int = 0
    dims: list = field(default_factory=list)
    data_location: int = 0
    external_data: list = field(default_factory=list)
    raw_data: bytes = b""
    float_data: list = field(default_factory=list)
    int32_data: list = field(default_factory=list)
    int64_data: list = field(default_factory=list)


@dataclass
class Graph:
    node: list = field(default_factory=list)
    initializer: list = field(default_factory=list)


@dataclass
class Model:
    ir_version: int = 0
    opset_import: list = field(default_factory=list)
    graph: Graph = field(default_factory=Graph)
    metadata_props: list = field(default_factory=list)


def load(path: str) -> Model:
    """The model in the file at `path` (its external data is not read)."""
    with open(path, "rb") as f:
        data = f.read(MAX_MODEL + 1)
    if len(data) > MAX_MODEL:
        raise ValueError("larger than 2 GiB, protobuf's limit")
    return parse(data)


def parse(data: bytes) -> Model:
    model = Model()
    for number, wire, value in _fields(memoryview(data)):
        if number == 1 and wire == 0:
            model.ir_version = value
        elif number == 8 and wire == 2:
            model.opset_import.append(bytes(value))
        elif number == 7 and wire == 2:
            model.graph = _graph(value)
        elif number == 14 and wire == 2:
            model.metadata_props.append(_entry(value))
    return model


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    for k in range(10):
        if at + k >= len(data):
            raise ValueError("a varint runs past the end")
        byte = data[at + k]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + k + 1
        shift += 7
    raise ValueError("a varint longer than 10 bytes")


def _fields(data: memoryview):
    """(field number, wire type, value) of a message: value an int (varint, fixed) or a
    memoryview (length-delimited)."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if at + size > len(data):
                raise ValueError("a fixed field runs past the end")
            value = int.from_bytes(data[at:at + size], "little")
            at += size
        elif wire == 2:
            size, at = _varint(data, at)
            if size > len(data) - at:
                raise ValueError("a length-delimited field runs past the end")
            value = data[at:at + size]
            at += size
        else:
            raise ValueError(f"wire type {wire} (groups are not used by ONNX)")
        yield number, wire, value


def _text(value) -> str:
    return bytes(value).decode("utf-8", errors="surrogateescape")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed(value, wire: int) -> list[int]:
    """A repeated integer field: packed (one length-delimited run) or one varint."""
    if wire == 0:
        return [_signed(value)]
    out, at = [], 0
    while at < len(value):
        v, at = _varint(value, at)
        out.append(_signed(v))
    return out


def _entry(data) -> Entry:
    entry = Entry()
    for number, wire, value in _fields(data):
        if wire == 2 and number in (1, 2):
            setattr(entry, "key" if number == 1 else "value", _text(value))
    return entry


def _graph(data) -> Graph:
    graph = Graph()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            graph.node.append(_node(value))
        elif number == 5 and wire == 2:
            graph.initializer.append(_tensor(value))
    return graph


def _node(data) -> Node:
    node = Node()
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number in (1, 2):
            (node.input if number == 1 else node.output).append(_text(value))
        elif number == 3:
            node.name = _text(value)
        elif number == 4:
            node.op_type = _text(value)
        elif number == 5:
            attribute = Attribute()
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    attribute.name = _text(v)
                elif n == 3 and w == 0:
                    attribute.i = _signed(v)
            node.attribute.append(attribute)
    return node


def _tensor(data) -> Tensor:
    tensor = Tensor()
    for number, wire, value in _fields(data):
        if number == 1:
            tensor.dims += _packed(value, wire)
        elif number == 2 and wire == 0:
            tensor.data_type = value
        elif number == 4 and wire in (2, 5):  # float_data: packed fixed32
            raw = bytes(value) if wire == 2 else value.to_bytes(4, "little")
            if len(raw) % 4:
                raise ValueError("float_data is not a whole number of floats")
            tensor.float_data += np.frombuffer(raw, "<f4").tolist()
        elif number == 5:
            tensor.int32_data += _packed(value, wire)
        elif number == 7:
            tensor.int64_data += _packed(value, wire)
        elif number == 8 and wire == 2:
            tensor.name = _text(value)
        elif number == 9 and wire == 2:
            tensor.raw_data = bytes(value)
        elif number == 13 and wire == 2:
            tensor.external_data.append(_entry(value))
        elif number == 14 and wire == 0:
            tensor.data_location = value
    return tensor


def to_array(tensor) -> np.ndarray:
    """The values of an initializer held in the model (onnx.numpy_helper.to_array for the
    types snnc stores: float, the integer types and int4), from raw_data or the typed
    fields. Works on onnx.TensorProto too."""
    dims = [int(d) for d in tensor.dims]
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if any(d < 0 for d in dims) or count > MAX_MODEL:
        raise ValueError(f"dims {dims}")
    code = tensor.data_type
    raw = bytes(tensor.raw_data)
    if code in (INT4, UINT4):
        packed = np.frombuffer(raw, np.uint8) if raw else \
            np.asarray(list(tensor.int32_data), np.int64).astype(np.uint8)
        if packed.size != (count + 1) // 2:
            raise ValueError(f"{packed.size} bytes of int4 for {count} values")
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:count]
        values = nibbles.astype(np.int8)
        if code == INT4:
            values = np.where(values >= 8, values - 16, values).astype(np.int8)
        return values.reshape(dims)
    if code not in _NUMPY:
        raise ValueError(f"data type {TYPE_NAMES.get(code, code)} is not one snnc stores")
    dtype = np.dtype(_NUMPY[code]).newbyteorder("<")
    if raw:
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"{len(raw)} raw bytes for {count} {dtype} values")
        return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("=")).reshape(dims)
    typed = list(tensor.float_data) if code == FLOAT else list(tensor.int64_data) \
        if code == INT64 else list(tensor.int32_data)
    if len(typed) != count:
        raise ValueError(f"{len(typed)} values for dims {dims}")
    if code == FLOAT16:  # int32_data holds the half floats' bits
        return np.asarray(typed, np.int64).astype(np.uint16).view(np.float16).reshape(dims)
    return np.asarray(typed).astype(_NUMPY[code]).reshape(dims)
