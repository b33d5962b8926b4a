"""Load a compiled model into ONNX Runtime, with its weights from an .snnpack if it has one.

    from snnc.runtime import load_session
    session = load_session("model.onnx", "model.snnpack", intra_op_num_threads=2)

A model compiled with `--weights external` holds references instead of its quantized
weights; `load_session` decodes the pack and hands the integer tensors to ONNX Runtime
through SessionOptions.add_external_initializers, before the graph is optimized. The
result runs exactly like the self-contained model.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from .errors import BadInputError, first_line
from .pack import decode, onnx_initializers


def external_weights(onnx_path: str) -> dict[str, str]:
    """{initializer name: location} of the model's external-data references."""
    model = onnx.load(onnx_path, load_external_data=False)
    refs = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            refs[tensor.name] = {e.key: e.value for e in tensor.external_data}.get("location", "")
    return refs


def load_session(onnx_path: str, pack_path: str | None = None, providers=None,
                 **session_config) -> ort.InferenceSession:
    """An InferenceSession for `onnx_path`, quantized weights decoded from `pack_path`.

    Without `pack_path`, the pack the model refers to (next to the model) is used, if any.
    A self-contained model ignores `pack_path`: it has no references to fill.
    Keyword arguments set SessionOptions attributes (intra_op_num_threads=2, ...) or, for
    names with a dot (session.disable_quant_qdq=1), session config entries.
    """
    if not os.path.isfile(onnx_path):
        raise BadInputError(f"{onnx_path}: no such model file")
    options = ort.SessionOptions()
    for key, value in session_config.items():
        if "." in key:
            options.add_session_config_entry(key, str(value))
        elif hasattr(options, key):
            setattr(options, key, value)
        else:
            raise BadInputError(f"unknown session option {key!r}")
    if onnx_path.lower().endswith(".ort"):
        refs = {}  # the ORT format holds its weights
    else:
        try:
            refs = external_weights(onnx_path)
        except Exception as error:
            raise BadInputError(f"{onnx_path} is not a readable ONNX model ({first_line(error)}); "
                                "pass the .onnx that snnc compile wrote") from None
    if pack_path is None and refs:
        locations = set(refs.values())
        pack_path = os.path.join(os.path.dirname(os.path.abspath(onnx_path)), locations.pop())
    keep_alive = []
    if pack_path is not None and refs:
        if not os.path.isfile(pack_path):
            raise BadInputError(f"{pack_path}: no such weight pack (the model's weights are "
                                "in a separate .snnpack: pass its path)")
        with open(pack_path, "rb") as f:
            arrays = onnx_initializers(decode(f.read(), pack_path))
        missing = sorted(set(refs) - set(arrays))
        if missing:
            raise BadInputError(f"{pack_path} does not hold the weights {missing[:4]} that "
                                f"{onnx_path} expects: was it compiled from the same model?")
        names = sorted(refs)
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
