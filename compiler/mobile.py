"""The ONNX Runtime Mobile path: the ORT-format model (.ort) and the operator list a reduced
(minimal) ONNX Runtime build needs to run it (docs/mobile.md).

Both are made the way ONNX Runtime's own converter (onnxruntime.tools.
convert_onnx_models_to_ort, optimization style "Fixed") makes them: the graph is optimized
once, here, and saved; but without constant folding, which would store every quantized
layer's weights as float32 (to_ort). The ORT format
cannot hold int4 tensors (they convert but do not load), so the model must keep its
quantized weights in int8/int16 containers, and it must be self-contained: minimal builds
do not support external initializers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import tempfile

import onnx

from .errors import BadInputError, SnncError


def ort_paths(onnx_path: str) -> tuple[str, str]:
    """(model.ort, model.required_operators.config) next to model.onnx."""
    stem = os.path.splitext(onnx_path)[0]
    return stem + ".ort", stem + ".required_operators.config"


def check_convertible(model: onnx.ModelProto) -> None:
    """Refuse what the ORT format or a minimal build cannot carry."""
    for tensor in model.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            raise BadInputError(f"the ORT format cannot hold int4 tensors ({tensor.name}); "
                                "compile with --weight-container int8 for --ort")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise BadInputError("minimal ONNX Runtime builds cannot load external weights; "
                                "--ort needs --weights embedded (the default)")


# What ONNX Runtime's converter disables for ARM targets (NCHWc is x86-only), plus constant
# folding: it would turn each layer's int8 weights and their Cast into a float32 constant in
# the file, four times the size. Kept, the Cast runs in the session (exact, like at load).
DISABLED_OPTIMIZERS = ["NchwcTransformer", "ConstantFolding"]


def to_ort(model_bytes: bytes) -> tuple[bytes, str]:
    """(ORT-format model bytes, required operators config text) for a self-contained ONNX
    model: optimized once with ONNX Runtime's optimizers (level "all", as the converter's
    Fixed style) and saved in ORT format; the config comes from the converter's own tool."""
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import create_config_from_models

    with tempfile.TemporaryDirectory(prefix="snnc-ort-") as tmp:
        source = pathlib.Path(tmp, "model.onnx")
        source.write_bytes(model_bytes)
        ort_file = pathlib.Path(tmp, "model.ort")
        config = pathlib.Path(tmp, "model.required_operators.config")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(ort_file)
        options.add_session_config_entry("session.save_model_format", "ORT")
        log = io.StringIO()
        previous = logging.root.manager.disable
        logging.disable(max(previous, logging.INFO))  # the config tool logs each file
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                                     disabled_optimizers=DISABLED_OPTIMIZERS)
                create_config_from_models([ort_file], config, enable_type_reduction=False)
        except Exception as error:
            raise SnncError(f"converting to the ORT format failed: {error}\n"
                            f"{log.getvalue()[-800:]}") from None
        finally:
            logging.disable(previous)
        if not ort_file.is_file() or not config.is_file():
            raise SnncError("ONNX Runtime wrote no ORT-format model:\n"
                            f"{log.getvalue()[-800:]}")
        lines = [line for line in config.read_text().splitlines()
                 if not line.startswith("# - ")]  # drop the temporary path it names
        return ort_file.read_bytes(), "\n".join(lines) + "\n"
