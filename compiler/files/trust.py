"""Which code an snnc checkpoint may run: the factory policy (docs/model_files.md).

A checkpoint names a factory "package.module:function" that snnc imports and calls with the
checkpoint's keyword arguments. That is code execution chosen by the file, so by default the
name must be on an allowlist, checked on the string *before anything is imported*:

- `spikingjelly.activation_based.model.<module>:<public name>`, SpikingJelly's model zoo;
- snnc's own model factories (`SNNC_FACTORIES`).

Any other factory needs the user's explicit consent (`--trust-code`, `trust_code=True`). Such
a factory is imported with the current directory first on the import path, as `python
train.py` imported it when the checkpoint was saved: run snnc from the folder that holds
`mymodel.py` (the directory is on the path for that import only, and never for an
allowlisted name, which a planted folder could otherwise shadow). Even then a name from
the standard library (os, subprocess, sys, shutil, importlib, builtins, ...) or from the numeric and runtime libraries snnc loads (torch, numpy, onnx, ...) is
refused: no model is built by those, and they are how a file would reach the shell or the
disk. After the import, the object must be a Python function or an nn.Module class defined
in the module named (a re-exported `os.system` is refused), and no factory may be asked to
download pretrained weights.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import reprlib
import sys
from typing import Any, Callable

from snnc.errors import BadInputError, first_line

ZOO_PREFIX = "spikingjelly.activation_based.model."
# snnc's own factories: functions or classes that only build a model from plain arguments.
SNNC_FACTORIES = frozenset({"snnc.demo:conv_snn", "snnc.demo:ConvSNN",
                            "snnc.demo:firing_spikformer", "snnc.demo:spikformer_classifier",
                            "snnc.demo:TimeMeanClassifier", "snnc.nir.module:from_nir"})
# Module roots never accepted, even with --trust-code: the standard library, the libraries snnc
# itself depends on (computed from the installed metadata, see refused_roots), and packages
# whose functions reach a shell, evaluate strings or deserialize objects.
KNOWN_REFUSED = frozenset({
    "torch", "torchvision", "torchaudio", "numpy", "scipy", "onnx", "onnxruntime",
    "onnxscript", "onnx_ir", "click", "matplotlib", "h5py", "loguru", "sympy", "mpmath",
    "networkx", "jinja2", "markupsafe", "fsspec", "filelock", "yaml", "dill", "cloudpickle",
    "joblib", "pexpect", "ptyprocess", "sh", "plumbum", "invoke", "fabric", "paramiko",
    "requests", "urllib3", "httpx", "aiohttp", "IPython", "ipykernel", "jupyter_client",
    "pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "_pytest", "pytest",
    "pluggy", "pandas", "sklearn", "tqdm", "google", "protobuf", "flatbuffers", "ml_dtypes",
    "packaging", "typing_extensions", "snnc", "compiler", "passes"})
# Keyword arguments that make a zoo factory fetch weights from the network.
DOWNLOAD_KWARGS = ("pretrained",)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def resolve_factory(factory: Any, kwargs: Any, where: str,
                    trust_code: bool = False) -> Callable[..., Any]:
    """The callable an snnc checkpoint's `factory` names, after the policy allows it."""
    if not isinstance(factory, str) or len(factory) > 300 or not _NAME.fullmatch(factory):
        raise BadInputError(f"{where}: the checkpoint's factory {short_repr(factory)} must look "
                            "like 'package.module:function' (docs/model_files.md)")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BadInputError(f"{where}: the checkpoint's kwargs must be a dict of keyword "
                            f"arguments, got {type(kwargs).__name__}")
    module_name, attr = factory.split(":")
    allowed = _allowlisted(factory, module_name, attr)
    if not allowed:
        _check_trusted_name(factory, module_name, where, trust_code)
    downloads = [k for k in DOWNLOAD_KWARGS if kwargs.get(k, False) is not False
                 and kwargs.get(k) is not None]
    if downloads:
        raise BadInputError(f"{where}: the checkpoint asks {factory} for {downloads[0]}="
                            f"{short_repr(kwargs[downloads[0]])}, which downloads weights; "
                            "snnc never downloads at run time. Save the trained weights in "
                            "the checkpoint's state_dict instead.")
    try:
        obj = getattr(_import(module_name, local=not allowed), attr)
    except (ImportError, AttributeError) as error:
        here = f"the current directory ({os.getcwd()}) or " if not allowed else ""
        raise BadInputError(
            f"{where}: cannot import the checkpoint's factory {factory!r} "
            f"({first_line(error)}). snnc looks for it in {here}the installed packages: "
            f"run snnc from the folder that holds {module_name.split('.')[0]}.py (or its "
            "package folder), or install the package that defines it.") from None
    _check_object(obj, factory, module_name, where)
    return obj


def _import(module_name: str, local: bool):
    """The module, imported with the current directory first on sys.path when `local`."""
    if not local:
        return importlib.import_module(module_name)
    here = os.getcwd()
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if sys.path and sys.path[0] == here:
            del sys.path[0]
        else:  # the import moved it: remove one occurrence
            try:
                sys.path.remove(here)
            except ValueError:
                pass


def _allowlisted(factory: str, module_name: str, attr: str) -> bool:
    if factory in SNNC_FACTORIES:
        return True
    zoo_module = module_name[len(ZOO_PREFIX):] if module_name.startswith(ZOO_PREFIX) else ""
    return bool(zoo_module) and "." not in zoo_module and not attr.startswith("_")


def _check_trusted_name(factory: str, module_name: str, where: str, trust_code: bool) -> None:
    root = module_name.split(".")[0]
    if root in refused_roots():
        raise BadInputError(
            f"{where}: the checkpoint's factory {factory!r} comes from {root!r}, which builds "
            "no model and can reach the shell or the disk; snnc refuses it even with "
            "--trust-code. A checkpoint's factory must be a function or nn.Module class of "
            "the package that defines the model.")
    if not trust_code:
        raise BadInputError(
            f"{where}: the checkpoint's factory {factory!r} is not on snnc's allowlist "
            f"(SpikingJelly's model zoo {ZOO_PREFIX}*, or {', '.join(sorted(SNNC_FACTORIES))}). "
            "Building the model would import and run that code. If you trust the file and "
            "that package, pass --trust-code (trust_code=True in Python); otherwise save "
            "the model as a torch.export archive (docs/model_files.md).")


def _check_object(obj: Any, factory: str, module_name: str, where: str) -> None:
    import torch

    defined_in = getattr(obj, "__module__", None)
    defined_in = defined_in if isinstance(defined_in, str) else ""
    is_model_class = inspect.isclass(obj) and issubclass(obj, torch.nn.Module)
    if not (inspect.isfunction(obj) or is_model_class):
        raise BadInputError(f"{where}: the checkpoint's factory {factory!r} is a "
                            f"{type(obj).__name__}, not a Python function or nn.Module class")
    if defined_in != module_name:
        raise BadInputError(f"{where}: the checkpoint's factory {factory!r} is defined in "
                            f"{defined_in!r}, not in {module_name!r}; name it where it is "
                            f"defined ('{defined_in}:{factory.split(':')[1]}')")


@functools.lru_cache(maxsize=1)
def refused_roots() -> frozenset[str]:
    """KNOWN_REFUSED, the standard library, and the import names of every distribution snnc
    depends on, directly or not (read from the installed metadata)."""
    from importlib import metadata

    roots = set(KNOWN_REFUSED) | set(sys.stdlib_module_names)
    try:
        providers = metadata.packages_distributions()
        closure, todo = set(), ["snnc"]
        while todo:
            name = todo.pop()
            if name.lower() in closure:
                continue
            closure.add(name.lower())
            for requirement in metadata.requires(name) or []:
                if "extra ==" not in requirement:
                    todo.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    except (metadata.PackageNotFoundError, OSError, ValueError):
        return frozenset(roots)
    for module, distributions in providers.items():
        if any(d.lower().replace("_", "-") in {c.replace("_", "-") for c in closure}
               for d in distributions):
            roots.add(module)
    return frozenset(roots)


def short_repr(value: Any, limit: int = 120) -> str:
    """repr for an untrusted value: bounded in depth and length whatever its nesting or
    sharing (a 1 KB pickle can describe a value whose full repr is petabytes)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80
