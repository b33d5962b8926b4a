"""Model files snnc accepts (docs/model_files.md), loaded into a torch.export ExportedProgram.

(a) a torch.export ExportedProgram saved with torch.export.save (the default);
(b) an snnc checkpoint: a dict loadable with torch.load(weights_only=True) naming a factory
    "package.module:function", its keyword arguments, a state_dict and the input shape;
    the factory must be on snnc's allowlist unless the user trusts the code (snnc.files.trust);
(c) a whole pickled nn.Module: refused unless the user trusts it (unpickling runs code).

A model file is untrusted input: loading one runs no code from it unless the user says so.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import pickle
import re
import warnings
from typing import Any

import torch

from snnc.errors import BadInputError, SnncError, first_line
from snnc.files import archive
from snnc.files.paths import KINDS, check_input, sniff, wrong_kind
from snnc.files.tensors import check_finite, check_saved_tensors
from snnc.files.trust import resolve_factory, short_repr
from snnc.frontend import budget
from snnc.frontend.tracing import traceable
from snnc.quant import quantize  # also registers snnc::fake_quant, which quantized programs use

CHECKPOINT_KEYS = ("factory", "kwargs", "state_dict", "input_shape")
NEURON_OP_MODULES = ("lif", "if_", "plif", "clif", "eif", "ilif", "qif", "izhikevich", "stbif",
                     "activation_aware_if")


def quiet_torch_logs() -> None:
    """torch logs "Triton not available" once per SpikingJelly op on CPU-only machines."""
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


def register_spikingjelly_ops() -> None:
    """Register SpikingJelly's neuron ops; exported programs cannot load without them."""
    quiet_torch_logs()
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


def checkpoint_bytes(ckpt: dict, model: torch.nn.Module | None = None,
                     config: dict | None = None, method: str = "mse") -> bytes:
    """The torch.save bytes of `ckpt`, with `model`'s state_dict and, given a `config`, the
    quantization record that makes loading re-apply snnc.quantize (docs/model_files.md)."""
    import io

    out = dict(ckpt)
    if model is not None:
        out["state_dict"] = model.state_dict()
    if config is not None:
        out["quantization"] = {"config": config, "method": method}
    buffer = io.BytesIO()
    torch.save(out, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str, command: str = "snnc quantize", nir=None) -> dict:
    """An snnc checkpoint dict, or BadInputError saying why `path` is not one (for
    `command`, which changes or trains the model's weights). A NIR file becomes the
    checkpoint of its NIRModule, given `nir`, its snnc.nir.load.Settings (docs/nir.md)."""
    check_input("MODEL", path)
    kind = sniff(path)
    if kind == "nir":
        from snnc.nir.load import Settings, checkpoint
        return checkpoint(path, nir or Settings())
    if nir is not None:
        raise BadInputError(f"--dt, --timesteps, --readout and --discretize are for NIR files; "
                            f"{path} is "
                            f"{KINDS[kind]}")
    if kind == "export":
        raise BadInputError(
            f"{path} is a torch.export archive; {command} needs an snnc checkpoint (the "
            "model's factory and state_dict, docs/model_files.md) because it changes the "
            "model's weights: an archive is a traced graph whose batch size is fixed and "
            "whose convolutions are not modules to quantize or fine-tune. Save a checkpoint "
            "(snnc.loader.make_checkpoint; snnc compile accepts it too), or quantize the model "
            "in Python with snnc.quantize(model, config) and export it.")
    if kind not in ("torch", "pickle"):
        raise wrong_kind("MODEL", path, kind, "an snnc checkpoint")
    obj = _torch_load(path, kind, trust_pickle=False)
    if not (isinstance(obj, dict) and all(k in obj for k in CHECKPOINT_KEYS)):
        raise BadInputError(f"{path} is not an snnc checkpoint: it needs the keys "
                            f"{list(CHECKPOINT_KEYS)} (docs/model_files.md)")
    _check_checkpoint(obj, path)
    return obj


def _check_checkpoint(ckpt: dict, path: str) -> None:
    """The fields of an snnc checkpoint have the types docs/model_files.md gives."""
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BadInputError(f"{path}: the checkpoint's state_dict must map parameter names to "
                            "tensors (model.state_dict())")
    quantization = ckpt.get("quantization")
    if quantization is not None and not (
            isinstance(quantization, dict) and isinstance(quantization.get("config"), dict)
            and quantization.get("method", "minmax") in ("minmax", "mse")):
        raise BadInputError(f"{path}: the checkpoint's quantization must be "
                            '{"config": {...}, "method": "mse" or "minmax"} as snnc quantize '
                            f"writes it, not {short_repr(quantization)}")


def build_from_checkpoint(path: str, ckpt: dict, trust_code: bool = False,
                          max_neuron_steps: int = budget.MAX_NEURON_STEPS) -> torch.nn.Module:
    """The model an snnc checkpoint describes, weights loaded, in eval mode. Its factory must
    be on the allowlist unless `trust_code` (snnc.files.trust); a model of more than
    `max_neuron_steps` per sample is refused (snnc.frontend.budget)."""
    model, counted = _model_from_checkpoint(path, ckpt, trust_code, max_neuron_steps)
    if not counted:  # the factory could not be probed: count on the real model's trace
        budget.check(_export(model, ckpt["input_shape"], path), max_neuron_steps, path)
    return model.eval()


def load_program(path: str, trust_pickle: bool = False, input_shape: list[int] | None = None,
                 trust_code: bool = False, max_neuron_steps: int = budget.MAX_NEURON_STEPS,
                 one_step: bool = False, nir=None
                 ) -> torch.export.ExportedProgram:
    """The program in a model file (docs/model_files.md). Loading runs no code from the file:
    pickled objects need `trust_pickle`, a checkpoint factory off the allowlist `trust_code`.
    A program of more than `max_neuron_steps` per sample is refused (snnc.frontend.budget;
    `one_step`: it will run one step per call, --timesteps stream). A NIR file needs
    `nir`, its snnc.nir.load.Settings (docs/nir.md)."""
    check_input("MODEL", path)
    kind = sniff(path)
    if kind == "nir":
        from snnc.nir.load import load_program as load_nir
        from snnc.nir.load import Settings
        program = load_nir(path, nir or Settings(), one_step=one_step,
                           max_neuron_steps=max_neuron_steps)
    elif nir is not None:
        raise BadInputError(f"--dt, --timesteps N and --discretize are for NIR files; {path} is "
                            f"{KINDS[kind]}, whose model fixes its own steps")
    else:
        program = _load_program(path, kind, trust_pickle, input_shape, trust_code,
                                max_neuron_steps)
    budget.check(program, max_neuron_steps, path, one_step)
    return program


def _load_program(path: str, kind: str, trust_pickle: bool, input_shape: list[int] | None,
                  trust_code: bool, max_neuron_steps: int) -> torch.export.ExportedProgram:
    """A checked model file of kind `kind` (paths.sniff) that is not a NIR graph."""
    register_spikingjelly_ops()
    if kind == "export":
        return _load_export(path, trust_pickle)
    if kind not in ("torch", "pickle"):
        raise wrong_kind("MODEL", path, kind, "a model file (a torch.export archive, an snnc "
                         "checkpoint, or with --trust-pickle a pickled nn.Module)")
    obj = _torch_load(path, kind, trust_pickle)
    if obj is _PICKLED:
        return _load_pickled_module(path, input_shape)
    if isinstance(obj, dict) and all(k in obj for k in CHECKPOINT_KEYS):
        _check_checkpoint(obj, path)
        model, _ = _model_from_checkpoint(path, obj, trust_code, max_neuron_steps)
        return _export(model, obj["input_shape"], path)
    if isinstance(obj, dict):
        raise BadInputError(
            f"{path} holds a dict with keys {short_repr(sorted(map(str, obj))[:8])}, not an snnc "
            f"checkpoint: it needs the keys {list(CHECKPOINT_KEYS)} (docs/model_files.md). A "
            "bare state_dict is not enough: snnc also needs the model's code (a factory).")
    raise BadInputError(f"{path} holds a Python {type(obj).__name__}, not a model file snnc can "
                        "read: expected a "
                        "torch.export archive, an snnc checkpoint dict, or (with "
                        "--trust-pickle) a pickled nn.Module. See docs/model_files.md.")


_PICKLED = object()  # _torch_load's answer for a pickle of objects that the user trusts


def _torch_load(path: str, kind: str, trust_pickle: bool):
    """torch.load(weights_only=True), which builds only tensors and plain containers, on a
    checked copy of the file (archive.check_torch_save); _PICKLED for a pickle of arbitrary
    objects when the user trusts it; BadInputError otherwise."""
    if kind == "pickle":  # torch.save's format before PyTorch 1.6, or a plain pickle
        if trust_pickle:
            return _PICKLED
        raise BadInputError(
            f"{path} is a plain pickle or a torch.save file in the format of PyTorch < 1.6, "
            "not a model file snnc can read: snnc reads checkpoints in torch.save's zip "
            "format. Save it again with a current "
            "torch.save (or pass --trust-pickle if it is a pickled model you trust).")
    data = archive.check_torch_save(path, any_global=trust_pickle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise _unreadable(path, error) from None
        if trust_pickle:
            return _PICKLED
        raise BadInputError(
            f"{path} is a pickled Python object (for example a whole nn.Module saved with "
            "torch.save(model)). Loading it runs arbitrary code from the file, so snnc "
            "refuses it. Save the model with torch.export.save or as an snnc checkpoint "
            "(docs/model_files.md), or pass --trust-pickle if you trust this file."
        ) from None
    except (Exception, RecursionError) as error:
        raise _unreadable(path, error) from None
    check_saved_tensors(obj, path)
    return obj


def _unreadable(path: str, error: Exception) -> BadInputError:
    return BadInputError(f"{path} looks like a torch.save file or pickle but is not a model "
                         f"file snnc can read (torch.load: {first_line(error)}); it may be "
                         "truncated, corrupt, or a plain pickle rather than torch.save output")


_UNSAFE_ARCHIVE = ("{path} is a torch.export archive holding pickled Python objects ({what}); "
                   "loading them runs code from the file, so snnc refuses it. Pass "
                   "--trust-pickle if you trust this file.")


def _load_export(path: str, trust_pickle: bool) -> torch.export.ExportedProgram:
    """torch.export.load, which trusts its input (its docs: never load an untrusted file).
    Unless the user trusts the file, snnc.files.archive checks every member, record, text field and
    pickle first and torch reads the checked copy it returns, with every torch.load inside
    forced to weights_only (TORCH_FORCE_WEIGHTS_ONLY_LOAD): a crafted archive runs no code."""
    try:
        with _weights_only(not trust_pickle), _quiet_torch():
            if trust_pickle:
                with open(path, "rb") as f:  # a file object: torch warns on names not .pt2
                    program = torch.export.load(f)
            else:  # torch reads the checked copy, never the file itself
                program = torch.export.load(io.BytesIO(archive.check_export(path)))
    except SnncError:
        raise
    except (RecursionError, MemoryError) as error:
        raise BadInputError(f"{path}: loading the archive exceeds this machine's "
                            f"{'stack' if isinstance(error, RecursionError) else 'memory'}"
                            ) from None
    except Exception as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            found = re.search(r"GLOBAL (\S+)", str(error))
            what = f"it would call {found.group(1)}" if found else "a non-tensor object"
            raise BadInputError(_UNSAFE_ARCHIVE.format(path=path, what=what)) from None
        raise BadInputError(
            f"{path} looks like a torch.export archive but does not load "
            f"({type(error).__name__}: {first_line(error)}). If it uses custom ops "
            "other than SpikingJelly's, import their module first; otherwise re-export "
            "it with torch.export.save.") from None
    _check_consistent(program, path)
    try:  # torch.fx generates and exec's the module's code from the graph's names
        with _quiet_torch():
            program.module()
    except Exception as error:
        raise BadInputError(f"{path}: torch cannot rebuild a module from the archive's "
                            f"program ({type(error).__name__}: {first_line(error)}); the "
                            "archive is damaged: re-export the model") from None
    return program


def _check_consistent(program: torch.export.ExportedProgram, path: str) -> None:
    """Every weight, buffer and constant is a tensor of the shape and dtype the graph says."""
    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
             **signature.inputs_to_lifted_tensor_constants}
    tensors = {**program.state_dict, **program.constants}
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in names:
            continue
        value, meta = tensors.get(names[node.name]), node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not isinstance(meta, torch.Tensor) or \
                tuple(value.shape) != tuple(meta.shape) or value.dtype != meta.dtype:
            got = (f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor)
                   else f"a Python {type(value).__name__}")
            raise BadInputError(f"{path}: {names[node.name]} is {got}, but the graph uses "
                                f"{getattr(meta, 'dtype', '?')} {list(getattr(meta, 'shape', []))}"
                                "; the archive is damaged: re-export the model")


@contextlib.contextmanager
def _quiet_torch():
    """torch.export.load logs warnings (with tracebacks) on odd archives; snnc reports one
    paragraph of its own instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _weights_only(force: bool):
    """Every torch.load in this block runs with weights_only=True (torch reads the variable
    at each call; it overrides an explicit weights_only=False)."""
    key, previous = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    if force:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if force and previous is None:
            os.environ.pop(key, None)
        elif force:
            os.environ[key] = previous


MAX_EXAMPLE_ELEMENTS = 2 ** 27  # a checkpoint's example input: 512 MB of float32 at most


def _valid_shape(input_shape) -> bool:
    return isinstance(input_shape, (list, tuple)) and 1 <= len(input_shape) <= 8 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape) \
        and math.prod(input_shape) <= MAX_EXAMPLE_ELEMENTS


def _export(model: torch.nn.Module, input_shape, where: str) -> torch.export.ExportedProgram:
    model.eval()
    if not _valid_shape(input_shape):
        raise BadInputError(f"{where}: input shape {short_repr(input_shape)} is not a list of "
                            f"1 to 8 positive sizes of at most {MAX_EXAMPLE_ELEMENTS:,} "
                            "elements, e.g. [1, 3, 32, 32]")
    example = torch.zeros(*input_shape)
    try:
        with torch.no_grad(), warnings.catch_warnings(), traceable(model):
            warnings.simplefilter("ignore")  # SpikingJelly's neuron memories trip a warning
            return torch.export.export(model, (example,))
    except SnncError:
        raise
    except Exception as error:
        raise BadInputError(
            f"{where}: torch.export could not trace the model with an input of shape "
            f"{list(input_shape)} ({type(error).__name__}: {first_line(error)}). Check the "
            "input shape and that the model runs in eval mode.") from None


def _model_from_checkpoint(path: str, ckpt: dict[str, Any], trust_code: bool,
                           max_neuron_steps: int) -> tuple[torch.nn.Module, bool]:
    """(the model, whether its neuron steps were counted before it was built)."""
    factory, kwargs = ckpt["factory"], ckpt["kwargs"]
    build = resolve_factory(factory, kwargs, path, trust_code)
    counted = _probe(build, kwargs, factory, path, ckpt["input_shape"], max_neuron_steps)
    try:
        model = build(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise BadInputError(f"{path}: the checkpoint's factory {factory} returned a "
                                f"{type(model).__name__}, not an nn.Module")
        check_finite(ckpt["state_dict"].items() if isinstance(ckpt["state_dict"], dict)
                     else (), path)
        quantization = ckpt.get("quantization")
        if quantization:  # rebuild the quantizers; their scales come with the state dict
            quantize.quantize(model, quantization["config"], method="minmax")
        model.load_state_dict(ckpt["state_dict"])
    except SnncError:
        raise
    except Exception as error:
        raise BadInputError(f"{path}: building {factory}(**kwargs) and loading its state_dict "
                            f"failed: {type(error).__name__}: {first_line(error)}") from None
    return model, counted


MAX_PARAMETERS = 1 << 29  # 2 GiB of float32 weights: far above any spiking network here


def _probe(build, kwargs: dict, factory: str, path: str, input_shape,
           max_neuron_steps: int) -> bool:
    """Build the model on PyTorch's meta device first (no memory, no arithmetic) and refuse
    it beyond MAX_PARAMETERS (a 1 KB checkpoint can ask an allowlisted factory for
    embed_dims=16384) or, traced there, beyond `max_neuron_steps` (or for T=10**7): before
    the real build, which may run the model (snnc's demo factories calibrate BatchNorm).
    Whether the steps were counted; a factory that cannot build or trace on the meta device
    is built for real, and its steps counted on the real trace."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = build(**kwargs)
        count = sum(t.numel() for t in list(probe.parameters()) + list(probe.buffers()))
    except SnncError:
        raise
    except Exception:
        return False
    if count > MAX_PARAMETERS:
        raise BadInputError(f"{path}: {factory}(**kwargs) builds a model of {count:,} weights, "
                            f"more than snnc compiles ({MAX_PARAMETERS:,}); check the "
                            "checkpoint's kwargs")
    if not (isinstance(probe, torch.nn.Module) and _valid_shape(input_shape)):
        return False
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_torch(), traceable(probe):
            warnings.simplefilter("ignore")
            traced = torch.export.export(probe.eval(),
                                         (torch.zeros(*input_shape, device="meta"),))
    except Exception:
        return False
    budget.check(traced, max_neuron_steps, path)
    return True


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


def inspect_pack(path: str, as_json: bool = False) -> str:
    """`snnc inspect PACK`: the layer table of a weight pack, as text or one JSON object."""
    import json

    from snnc.backend import pack
    check_input("PACK", path)
    kind = sniff(path)
    if kind != "snnpack":
        raise wrong_kind("PACK", path, kind, "an snnc weight pack (.snnpack)",
                         doc="docs/binary_format.md")
    with open(path, "rb") as f:
        blob = f.read()
    layers = pack.decode(blob, path)
    return (json.dumps(pack.table_json(layers, len(blob)), sort_keys=True) if as_json
            else pack.format_table(layers, len(blob)))
