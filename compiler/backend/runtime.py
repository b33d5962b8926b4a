"""Load a compiled model into ONNX Runtime, with its weights from an .snnpack if it has one.

    from snnc.runtime import load_session
    session = load_session("model.onnx", "model.snnpack", intra_op_num_threads=2)

A model compiled with `--weights external` holds references instead of its quantized
weights; `load_session` decodes the pack (snnc.backend.pack.decode validates all of it), checks it
against the model (every reference a layer of the pack, read the way its layout says, with
the reference's data type and dims) and hands the integer tensors to ONNX Runtime through
SessionOptions.add_external_initializers, before the graph is optimized. The result runs
exactly like the self-contained model. Every failure is a BadInputError.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from snnc.backend.pack import CODES, GEMM, LAYOUTS, LEVELS, SIGNED, Layer, decode, onnx_initializers
from snnc.errors import BadInputError, first_line
from snnc.files.paths import check_input, sniff

# how the ONNX backend reads each layout's initializer: (op, Cast's `to` or None)
# (a GEMM matrix: input 0 of a DequantizeLinear, or input 1 of a MatMulInteger)
READERS = {LEVELS: {("DequantizeLinear", None)}, CODES: {("Cast", onnx.TensorProto.INT32)},
           SIGNED: {("Cast", onnx.TensorProto.FLOAT)},
           GEMM: {("DequantizeLinear", None), ("MatMulInteger", None)}}


def external_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """{initializer name: its external-data reference} (name, data type, dims, location)."""
    return {tensor.name: tensor for tensor in model.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL}


def location(tensor: onnx.TensorProto) -> str:
    value = {e.key: e.value for e in tensor.external_data}.get("location", "")
    return value if isinstance(value, str) else repr(value)  # protobuf gives bad UTF-8 as bytes


def external_weights(onnx_path: str) -> dict[str, str]:
    """{initializer name: location} of the model's external-data references."""
    model = onnx.load(onnx_path, load_external_data=False)
    return {name: location(t) for name, t in external_tensors(model).items()}


def _type_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except (TypeError, ValueError):
        return f"data type {data_type}"


def _check_readers(layers: list[Layer], model: onnx.ModelProto, pack_path: str,
                   onnx_path: str) -> None:
    """Each layer's layout is how the model reads its initializer (a pack's layouts 1 and 2
    of a PoT layer can look alike; the model tells them apart)."""
    by_name = {layer.name: layer for layer in layers}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            layer = by_name.get(name)
            if layer is None or index != (node.op_type == "MatMulInteger"):
                continue
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            reads = (node.op_type, to if node.op_type == "Cast" else None)
            scale = node.input[1] if node.op_type == "DequantizeLinear" and len(node.input) > 1 \
                and layer.layout == LEVELS else ""
            if reads not in READERS[layer.layout] or scale != layer.scale_name:
                op = f"Cast to {_type_name(to)}" if node.op_type == "Cast" else node.op_type
                raise BadInputError(
                    f"{pack_path} holds {name!r} in layout {layer.layout} "
                    f"({LAYOUTS[layer.layout]}) with scale name {layer.scale_name!r}, but "
                    f"{onnx_path} reads it with {op} {node.name!r}: the pack and the "
                    "model are not from the same compile; recompile with `snnc compile MODEL "
                    "--weights external --pack PACK.snnpack`")


def pack_arrays(pack_path: str, model: onnx.ModelProto, onnx_path: str
                ) -> dict[str, np.ndarray]:
    """The pack's integer arrays for the model's external references, each checked against
    how the model reads it and the reference's dims and data type (what ONNX Runtime would
    otherwise take as given)."""
    refs = external_tensors(model)
    try:
        with open(pack_path, "rb") as f:
            blob = f.read()
    except OSError as error:
        raise BadInputError(f"{pack_path}: cannot read the weight pack ({first_line(error)})"
                            ) from None
    layers = decode(blob, pack_path)
    _check_readers([layer for layer in layers if layer.name in refs], model, pack_path,
                   onnx_path)
    arrays = onnx_initializers(layers)
    missing = sorted(set(refs) - set(arrays), key=repr)
    if missing:
        raise BadInputError(f"{pack_path} does not hold the weights {missing[:4]} that "
                            f"{onnx_path} expects: was it compiled from the same model?")
    for name, ref in sorted(refs.items()):
        array = arrays[name]
        want = (_type_name(ref.data_type), tuple(ref.dims))
        got = (_type_name(onnx.helper.np_dtype_to_tensor_dtype(array.dtype)), array.shape)
        if got != want:
            raise BadInputError(
                f"{pack_path} holds {name!r} as {got[0]} {list(got[1])}, but {onnx_path} "
                f"expects {want[0]} {list(want[1])}: the pack and the model are not from the "
                "same compile; recompile with `snnc compile MODEL --weights external --pack "
                "PACK.snnpack`")
    return {name: arrays[name] for name in refs}


def _pack_next_to(onnx_path: str, refs: dict[str, onnx.TensorProto]) -> str:
    """The one pack file the references name: a plain file name, next to the model."""
    names = sorted({location(t) for t in refs.values()})
    if len(names) != 1 or names[0] in ("", ".", "..") or os.path.basename(names[0]) != names[0] \
            or "\0" in names[0]:
        raise BadInputError(f"{onnx_path} refers to external weights in {names}, not to one "
                            ".snnpack file next to it as snnc writes; pass the pack's path")
    return os.path.join(os.path.dirname(os.path.abspath(onnx_path)), names[0])


def load_session(onnx_path: str, pack_path: str | None = None, providers=None,
                 **session_config) -> ort.InferenceSession:
    """An InferenceSession for `onnx_path`, quantized weights decoded from `pack_path`.

    Without `pack_path`, the pack the model refers to (next to the model) is used, if any.
    A self-contained model ignores `pack_path`: it has no references to fill.
    Keyword arguments set SessionOptions attributes (intra_op_num_threads=2, ...) or, for
    names with a dot (session.disable_quant_qdq=1), session config entries.
    """
    check_input("model", onnx_path)
    onnx_path = os.fspath(onnx_path)
    if pack_path is not None:
        check_input("weight pack", pack_path)  # a FIFO or device is never opened
        pack_path = os.fspath(pack_path)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the user as BadInputError, not ORT's log
    for key, value in session_config.items():
        try:
            if "." in key:
                options.add_session_config_entry(key, str(value))
            elif hasattr(options, key):
                setattr(options, key, value)
            else:
                raise BadInputError(f"unknown session option {key!r}")
        except (TypeError, ValueError, RuntimeError) as error:
            raise BadInputError(f"session option {key}={value!r}: {first_line(error)}") \
                from None
    if sniff(onnx_path) == "ort":
        refs = {}  # the ORT format holds its weights
    else:
        try:
            model = onnx.load(onnx_path, load_external_data=False)
            refs = external_tensors(model)
        except Exception as error:
            raise BadInputError(f"{onnx_path} is not a readable ONNX model ({first_line(error)}); "
                                "pass the .onnx that snnc compile wrote") from None
    if pack_path is None and refs:
        pack_path = _pack_next_to(onnx_path, refs)
    keep_alive = []
    if pack_path is not None and refs:
        if not os.path.exists(pack_path):
            raise BadInputError(f"{pack_path}: no such weight pack (the model's weights are "
                                "in a separate .snnpack: pass its path)")
        check_input("weight pack", pack_path)
        arrays = pack_arrays(pack_path, model, onnx_path)
        names = sorted(arrays)
        keep_alive = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arrays[n]))
                      for n in names]
        options.add_external_initializers(names, keep_alive)
    try:
        session = ort.InferenceSession(onnx_path, options,
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as error:
        raise BadInputError(f"ONNX Runtime cannot load {onnx_path}: {first_line(error)}") from None
    del keep_alive  # ORT copied the data while creating the session
    return session
