"""The ONNX Runtime Mobile path: the ORT-format model (.ort) and the operator list a reduced
(minimal) ONNX Runtime build needs to run it (docs/mobile.md).

Both come from ONNX Runtime's own converter (onnxruntime.tools.convert_onnx_models_to_ort,
optimization style "Fixed": the graph is optimized once, here, and saved). The ORT format
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


def to_ort(model_bytes: bytes) -> tuple[bytes, str]:
    """(ORT-format model bytes, required operators config text) for a self-contained ONNX
    model, converted by ONNX Runtime's converter in a temporary directory."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (OptimizationStyle,
                                                              convert_onnx_models_to_ort)

    with tempfile.TemporaryDirectory(prefix="snnc-ort-") as tmp:
        source = pathlib.Path(tmp, "model.onnx")
        source.write_bytes(model_bytes)
        out = pathlib.Path(tmp, "out")
        log = io.StringIO()
        logging.disable(logging.INFO)  # the converter logs each file it writes
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                convert_onnx_models_to_ort(source, output_dir=out,
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as error:
            raise SnncError(f"ONNX Runtime's ORT-format converter failed: {error}\n"
                            f"{log.getvalue()[-800:]}") from None
        finally:
            logging.disable(logging.NOTSET)
        ort_file, config = out / "model.ort", out / "model.required_operators.config"
        if not ort_file.is_file() or not config.is_file():
            raise SnncError("ONNX Runtime's ORT-format converter wrote no model:\n"
                            f"{log.getvalue()[-800:]}")
        lines = [line for line in config.read_text().splitlines()
                 if not line.startswith("# - ")]  # drop the temporary path it names
        return ort_file.read_bytes(), "\n".join(lines) + "\n"
