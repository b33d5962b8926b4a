"""Load a compiled model into ONNX Runtime, with its weights from an .snnpack if it has one.

    from snnc.runtime import load_session
    session = load_session("model.onnx", "model.snnpack", intra_op_num_threads=2)

A model compiled with `--weights external` holds references instead of its quantized
weights; `load_session` decodes the pack (snnc.backend.pack.decode validates all of it), checks it
against the model (the pack holds exactly the referenced layers, each read the way its
layout says, with the reference's data type and dims, a levels layer's scales those of the
model's DequantizeLinear, and each array the one the model records a digest of) and hands the integer tensors to ONNX Runtime through
SessionOptions.add_external_initializers, before the graph is optimized. The result runs
exactly like the self-contained model. A pack given with a self-contained model is decoded
and checked the same way against the weights the model holds: exactly its quantized
weights, bit for bit after decoding. Every failure is a BadInputError.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

from snnc.backend.pack import (CODES, DIGESTS_KEY, GEMM, LAYOUTS, LEVELS, SIGNED, Layer,
                               decode, onnx_initializers, pack_name, weight_digest)
from snnc.errors import BadInputError, first_line
from snnc.files import onnx_lite as lite
from snnc.files.paths import check_input, sniff
from snnc.quant.weights import unit

# how the ONNX backend reads each layout's initializer: (op, Cast's `to` or None)
# (a GEMM matrix: input 0 of a DequantizeLinear, or input 1 of a MatMulInteger)
READERS = {LEVELS: {("DequantizeLinear", None)}, CODES: {("Cast", lite.INT32)},
           SIGNED: {("Cast", lite.FLOAT)},
           GEMM: {("DequantizeLinear", None), ("MatMulInteger", None)}}
# the integer containers the ONNX backend stores quantized weights in
INTEGER_WEIGHTS = (lite.INT4, lite.INT8, lite.INT16)
RECOMPILE = ("the pack and the model are not from the same compile; recompile with `snnc "
             "compile MODEL --weights external --pack PACK.snnpack`")
EMBEDDED = ("the pack is not the one compiled with this model; pass that pack, or none (the "
            "model holds its own weights)")


def external_tensors(model: lite.Model) -> dict[str, lite.Tensor]:
    """{initializer name: its external-data reference} (name, data type, dims, location)."""
    return {tensor.name: tensor for tensor in model.graph.initializer
            if tensor.data_location == lite.EXTERNAL}


def location(tensor: lite.Tensor) -> str:
    """The pack file a reference names (without the advice skeletons add to it, pack.py)."""
    value = {e.key: e.value for e in tensor.external_data}.get("location", "")
    return pack_name(value if isinstance(value, str) else repr(value))  # bad UTF-8: bytes


def external_weights(onnx_path: str) -> dict[str, str]:
    """{initializer name: location} of the model's external-data references."""
    model = lite.load(onnx_path)
    return {name: location(t) for name, t in external_tensors(model).items()}


def _type_name(data_type: int) -> str:
    return lite.TYPE_NAMES.get(data_type, f"data type {data_type}")


def _check_readers(layers: list[Layer], model: lite.Model, pack_path: str,
                   onnx_path: str, fix: str = RECOMPILE) -> None:
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
                    f"{onnx_path} reads it with {op} {node.name!r}: {fix}")


def read_pack(pack_path: str) -> list[Layer]:
    """The layers of the pack file, decoded and validated (snnc.backend.pack.decode)."""
    try:
        with open(pack_path, "rb") as f:
            blob = f.read()
    except OSError as error:
        raise BadInputError(f"{pack_path}: cannot read the weight pack ({first_line(error)})"
                            ) from None
    return decode(blob, pack_path)


def _check_same_layers(layers: list[Layer], names, pack_path: str, onnx_path: str,
                       what: str, fix: str) -> None:
    """The pack holds exactly the layers `names` (what snnc compile writes for the model): no
    weight of the model missing, no layer the model does not have."""
    have = {layer.name for layer in layers}
    missing = sorted(set(names) - have, key=repr)
    if missing:
        raise BadInputError(f"{pack_path} does not hold the weights {missing[:4]}"
                            f"{' ...' if len(missing) > 4 else ''} that {onnx_path} {what} "
                            f"({len(missing)} of {len(names)} missing): {fix}")
    extra = [(i, layer.name) for i, layer in enumerate(layers) if layer.name not in names]
    if extra:
        shown = ", ".join(f"layer {i} {name!r}" for i, name in extra[:4])
        raise BadInputError(f"{pack_path} holds {shown}{' ...' if len(extra) > 4 else ''}, "
                            f"which {onnx_path} does not have among the {len(names)} quantized "
                            f"weights it {what} (a pack holds exactly its model's quantized "
                            f"weights): {fix}")


def _initializer(model: lite.Model, name: str, onnx_path: str, what: str) -> np.ndarray:
    """An initializer the model holds (not a reference), as numpy."""
    tensor = next((t for t in model.graph.initializer if t.name == name), None)
    if tensor is None or tensor.data_location == lite.EXTERNAL:
        raise BadInputError(f"{onnx_path} does not hold {what} {name!r} as an initializer "
                            "(snnc's ONNX backend stores it in the model); pass the .onnx that "
                            "snnc compile wrote")
    try:
        return lite.to_array(tensor)
    except Exception as error:
        raise BadInputError(f"{onnx_path}: {what} {name!r} cannot be read "
                            f"({first_line(error)}); pass the .onnx that snnc compile wrote"
                            ) from None


def _check_scales(layers: list[Layer], model: lite.Model, pack_path: str,
                  onnx_path: str, fix: str) -> None:
    """A levels layer's scales are the model's DequantizeLinear scales times the container's
    unit (the ONNX backend stores scales / unit next to the levels), bit for bit."""
    for layer in layers:
        if layer.layout != LEVELS:
            continue
        want = (layer.scales * np.float32(1.0 / unit(layer.scheme, layer.bits))
                ).astype(np.float32)
        got = _initializer(model, layer.scale_name, onnx_path, "the scale initializer")
        if got.dtype != np.float32 or got.shape != want.shape:
            raise BadInputError(
                f"{pack_path} holds {layer.name!r} with {want.size} scales, but {onnx_path}'s "
                f"scale initializer {layer.scale_name!r} is {got.dtype} {list(got.shape)}: "
                f"{fix}")
        differ = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        if differ.size:
            c = int(differ[0])
            raise BadInputError(
                f"{pack_path} holds {layer.name!r} with scale {float(layer.scales[c])!r} for "
                f"channel {c}, but {onnx_path} dequantizes it with {float(got[c])!r} "
                f"({layer.scale_name!r}, which should be the scale / "
                f"{unit(layer.scheme, layer.bits):g}; {differ.size} of {want.size} channels "
                f"differ): {fix}")


def pack_arrays(pack_path: str, model: lite.Model, onnx_path: str
                ) -> dict[str, np.ndarray]:
    """The pack's integer arrays for the model's external references: the pack must hold
    exactly those layers, each checked against how the model reads it and the reference's
    dims and data type (what ONNX Runtime would otherwise take as given)."""
    refs = external_tensors(model)
    layers = read_pack(pack_path)
    _check_same_layers(layers, refs, pack_path, onnx_path, "refers to", RECOMPILE)
    _check_readers(layers, model, pack_path, onnx_path)
    arrays = onnx_initializers([layer for layer in layers if layer.name in refs])
    for name, ref in sorted(refs.items()):
        array = arrays[name]
        want = (_type_name(ref.data_type), tuple(ref.dims))
        got = (_type_name(lite.type_of(array.dtype)), array.shape)
        if got != want:
            raise BadInputError(
                f"{pack_path} holds {name!r} as {got[0]} {list(got[1])}, but {onnx_path} "
                f"expects {want[0]} {list(want[1])}: {RECOMPILE}")
    _check_scales(layers, model, pack_path, onnx_path, RECOMPILE)
    _check_digests(arrays, model, pack_path, onnx_path)
    return arrays


def _check_digests(arrays: dict[str, np.ndarray], model: lite.Model, pack_path: str,
                   onnx_path: str) -> None:
    """Each array is the one the skeleton was compiled with (its DIGESTS_KEY metadata; a
    skeleton compiled before snnc recorded them has none, and takes any pack that fits)."""
    recorded = {p.key: p.value for p in model.metadata_props}.get(DIGESTS_KEY)
    if recorded is None:
        return
    try:
        digests = json.loads(recorded)
        valid = isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
    except ValueError:
        valid = False
    if not valid or set(digests) != set(arrays):
        raise BadInputError(f"{onnx_path}: its metadata {DIGESTS_KEY} does not list the weights "
                            "it refers to, as snnc compile writes it; pass the .onnx that snnc "
                            "compile wrote")
    for name in sorted(arrays):
        if weight_digest(arrays[name]) != digests[name]:
            raise BadInputError(
                f"{pack_path} holds other values for {name!r} than {onnx_path} was compiled "
                f"with (the model records a digest of each weight): the pack is from another "
                f"compile of a model of this shape; pass the pack written with this .onnx, "
                f"or recompile both with `snnc compile MODEL --weights external --pack "
                f"PACK.snnpack`")


def quantized_weights(model: lite.Model) -> dict[str, lite.Tensor]:
    """{name: initializer} of the quantized weights a model holds: the integer (int4, int8,
    int16) initializers of 2 or more dimensions that a DequantizeLinear or Cast reads as
    input 0, or a MatMulInteger as input 1 (READERS: where snnc's ONNX backend puts every
    packed weight; zero points and shift constants are scalars)."""
    tensors = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            tensor = tensors.get(name)
            if tensor is None or tensor.data_type not in INTEGER_WEIGHTS or len(tensor.dims) < 2:
                continue
            if (node.op_type in ("DequantizeLinear", "Cast") and index == 0) or \
                    (node.op_type == "MatMulInteger" and index == 1):
                found[name] = tensor
    return found


def check_embedded(pack_path: str, model: lite.Model, onnx_path: str) -> None:
    """A pack given with a model that holds its own weights: it must hold exactly those
    quantized weights, read the way its layouts say, equal after decoding (values; an int4
    container equals the pack's int8 one) and, for levels layers, with the model's scales."""
    layers = read_pack(pack_path)
    held = quantized_weights(model)
    _check_same_layers(layers, held, pack_path, onnx_path, "holds", EMBEDDED)
    _check_readers(layers, model, pack_path, onnx_path, EMBEDDED)
    for layer in layers:
        array = onnx_initializers([layer])[layer.name]
        got = _initializer(model, layer.name, onnx_path, "the quantized weight")
        if got.shape != array.shape:
            raise BadInputError(f"{pack_path} holds {layer.name!r} as {list(array.shape)}, but "
                                f"{onnx_path} holds it as {list(got.shape)}: {EMBEDDED}")
        differ = np.flatnonzero(got.astype(np.int64).reshape(-1)
                                != array.astype(np.int64).reshape(-1))
        if differ.size:
            raise BadInputError(
                f"{pack_path} holds other weights than {onnx_path} in {layer.name!r} "
                f"({differ.size:,} of {array.size:,} values differ, the first at flat index "
                f"{int(differ[0]):,}): {EMBEDDED}")
    _check_scales(layers, model, pack_path, onnx_path, EMBEDDED)


def _pack_next_to(onnx_path: str, refs: dict[str, lite.Tensor]) -> str:
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
    With a self-contained model, `pack_path` is decoded and must hold exactly the model's
    quantized weights (check_embedded); an .ort model cannot be checked and refuses a pack.
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
        if pack_path is not None:
            raise BadInputError(f"{onnx_path} is an .ort model, which holds its own weights in "
                                f"a form snnc cannot compare with the pack {pack_path}; drop "
                                "the pack, or give the .onnx compiled with it")
        refs = {}  # the ORT format holds its weights
    else:
        try:
            model = lite.load(onnx_path)
            refs = external_tensors(model)
        except Exception as error:
            raise BadInputError(f"{onnx_path} is not a readable ONNX model ({first_line(error)}); "
                                "pass the .onnx that snnc compile wrote") from None
    if pack_path is None and refs:
        pack_path = _pack_next_to(onnx_path, refs)
    keep_alive = []
    if pack_path is not None and not refs:
        check_embedded(pack_path, model, onnx_path)
    elif pack_path is not None:
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
