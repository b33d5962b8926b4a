"""Model files snnc accepts (docs/model_files.md), loaded into a torch.export ExportedProgram.

(a) a torch.export ExportedProgram saved with torch.export.save (the default);
(b) an snnc checkpoint: a dict loadable with torch.load(weights_only=True) naming a factory
    "package.module:function", its keyword arguments, a state_dict and the input shape;
(c) a whole pickled nn.Module: refused unless the user trusts it (unpickling runs code).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import pickle
import warnings
import zipfile
from typing import Any

import torch

from .errors import BadInputError, SnncError, first_line

CHECKPOINT_KEYS = ("factory", "kwargs", "state_dict", "input_shape")
NEURON_OP_MODULES = ("lif", "if_", "plif", "clif", "eif", "ilif", "qif", "izhikevich", "stbif",
                     "activation_aware_if")


def quiet_torch_logs() -> None:
    """torch logs "Triton not available" once per SpikingJelly op on CPU-only machines."""
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


def register_spikingjelly_ops() -> None:
    """Register SpikingJelly's neuron ops; exported programs cannot load without them."""
    quiet_torch_logs()
    from . import quant  # noqa: F401  (registers snnc::fake_quant for quantized programs)

    for name in NEURON_OP_MODULES:
        try:
            importlib.import_module(f"spikingjelly._ops.{name}")
        except ImportError:
            pass


def make_checkpoint(factory: str, kwargs: dict, model: torch.nn.Module,
                    input_shape: list[int]) -> dict:
    """The snnc checkpoint dict for `model`, built by `factory(**kwargs)`."""
    return {"format": "snnc-checkpoint", "version": 1, "factory": factory,
            "kwargs": dict(kwargs), "state_dict": model.state_dict(),
            "input_shape": list(input_shape)}


def load_checkpoint(path: str) -> dict:
    """An snnc checkpoint dict, or BadInputError saying why `path` is not one."""
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file")
    if _is_exported_program(path):
        raise BadInputError(
            f"{path} is a torch.export archive; snnc quantize needs an snnc checkpoint (the "
            "model's factory and state_dict, docs/model_files.md) because it changes the "
            "model's weights before export. Quantize the model in Python with "
            "snnc.quantize(model, config) and export it, or save a checkpoint.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise _not_a_model(path) from None
    if not (isinstance(obj, dict) and all(k in obj for k in CHECKPOINT_KEYS)):
        raise BadInputError(f"{path} is not an snnc checkpoint: it needs the keys "
                            f"{list(CHECKPOINT_KEYS)} (docs/model_files.md)")
    return obj


def build_from_checkpoint(path: str, ckpt: dict) -> torch.nn.Module:
    """The model an snnc checkpoint describes, weights loaded, in eval mode."""
    return _model_from_checkpoint(path, ckpt).eval()


def load_program(path: str, trust_pickle: bool = False,
                 input_shape: list[int] | None = None) -> torch.export.ExportedProgram:
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file. Pass the path of a model saved with "
                            "torch.export.save (docs/model_files.md).")
    if os.path.isdir(path):
        raise BadInputError(f"{path} is a directory, not a model file.")
    register_spikingjelly_ops()
    if _is_exported_program(path):
        try:
            with open(path, "rb") as f:  # a file object: torch warns on names not ending .pt2
                return torch.export.load(f)
        except Exception as error:
            raise BadInputError(
                f"{path} looks like a torch.export archive but does not load "
                f"({type(error).__name__}: {first_line(error)}). If it uses custom ops "
                "other than SpikingJelly's, import their module first; otherwise re-export "
                "it with torch.export.save.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise _not_a_model(path) from None
        if not trust_pickle:
            raise BadInputError(
                f"{path} is a pickled Python object (for example a whole nn.Module saved with "
                "torch.save(model)). Loading it runs arbitrary code from the file, so snnc "
                "refuses it. Save the model with torch.export.save or as an snnc checkpoint "
                "(docs/model_files.md), or pass --trust-pickle if you trust this file."
            ) from None
        return _load_pickled_module(path, input_shape)
    except Exception:
        raise _not_a_model(path) from None
    if isinstance(obj, dict) and all(k in obj for k in CHECKPOINT_KEYS):
        return _program_from_checkpoint(path, obj)
    if isinstance(obj, dict):
        raise BadInputError(
            f"{path} holds a dict with keys {sorted(map(str, obj))[:8]}, not an snnc "
            f"checkpoint: it needs the keys {list(CHECKPOINT_KEYS)} (docs/model_files.md). A "
            "bare state_dict is not enough: snnc also needs the model's code (a factory).")
    raise _not_a_model(path)


def _is_exported_program(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/archive_format") for n in names) and \
        any("/models/" in n for n in names)


def _not_a_model(path: str) -> BadInputError:
    return BadInputError(
        f"{path} is not a model file snnc can read: expected a torch.export archive "
        "(torch.export.save), an snnc checkpoint dict, or (with --trust-pickle) a pickled "
        "nn.Module. See docs/model_files.md.")


def _export(model: torch.nn.Module, input_shape, where: str) -> torch.export.ExportedProgram:
    model.eval()
    try:
        example = torch.zeros(*[int(d) for d in input_shape])
    except (TypeError, ValueError, RuntimeError):
        raise BadInputError(f"{where}: input shape {input_shape!r} is not a list of sizes") \
            from None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SpikingJelly's neuron memories trip a warning
            return torch.export.export(model, (example,))
    except SnncError:
        raise
    except Exception as error:
        raise BadInputError(
            f"{where}: torch.export could not trace the model with an input of shape "
            f"{list(input_shape)} ({type(error).__name__}: {first_line(error)}). Check the "
            "input shape and that the model runs in eval mode.") from None


def _program_from_checkpoint(path: str, ckpt: dict[str, Any]) -> torch.export.ExportedProgram:
    return _export(_model_from_checkpoint(path, ckpt), ckpt["input_shape"], path)


def _model_from_checkpoint(path: str, ckpt: dict[str, Any]) -> torch.nn.Module:
    factory = ckpt["factory"]
    if not isinstance(factory, str) or ":" not in factory:
        raise BadInputError(f"{path}: checkpoint factory {factory!r} must look like "
                            "'package.module:function'")
    module_name, fn_name = factory.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as error:
        raise BadInputError(f"{path}: cannot import the checkpoint's factory {factory!r} "
                            f"({first_line(error)}). Install the package that defines it.") \
            from None
    try:
        model = fn(**dict(ckpt["kwargs"]))
        quantization = ckpt.get("quantization")
        if quantization:  # rebuild the quantizers; their scales come with the state dict
            from . import quant

            quant.quantize(model, quantization["config"], method="minmax")
        model.load_state_dict(ckpt["state_dict"])
    except SnncError:
        raise
    except Exception as error:
        raise BadInputError(f"{path}: building {factory}(**kwargs) and loading its state_dict "
                            f"failed: {type(error).__name__}: {first_line(error)}") from None
    return model


def _load_pickled_module(path: str, input_shape) -> torch.export.ExportedProgram:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise BadInputError(f"{path}: unpickling failed: {type(error).__name__}: "
                            f"{first_line(error)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise BadInputError(f"{path} unpickles to a {type(obj).__name__}, not an nn.Module")
    if not input_shape:
        raise BadInputError(f"{path} is a whole module and carries no input shape: pass "
                            "--input-shape, e.g. --input-shape 1,3,32,32")
    return _export(obj, input_shape, path)


def save_program_bytes(program: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()
