"""What snnc changes while torch.export traces a model, and only then (every export snnc makes
runs inside `traceable(model)`; the model is the same object, unchanged, afterwards).

Two SpikingJelly neuron idioms cannot be traced as written, though their meaning in
inference is plain:

- `x.data` inside a neuron's forward (NonSpikingBaseNode's `full_like(x_seq[0].data, 0.0)`):
  torch.export records the detached alias as a constant made during tracing and fails ("a
  fake tensor in the exported program constant's list"). While a SpikingJelly neuron
  module's forward runs, `.data` reads as `.detach()`: the same values, without autograd,
  which is all `.data` means in inference. Assigning to `.data` is left as it is.
- MaskedPSN's `if self.lambda_ >= 1.0` branches on a buffer (torch.export cannot guard on
  a tensor's data). In eval lambda_ is a fixed number: while tracing, the module's `_lambda_`
  buffer is its float value (so its mask, lambda * mask0 + (1 - lambda) * mask1, is a
  constant of the program; float32 arithmetic on it rounds as on the buffer), restored
  afterwards in the buffers' order.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from snnc.errors import BadInputError
from snnc.frontend.neuron_regions import is_neuron_class

# Neuron classes whose scalar buffers their forward reads as Python numbers: (class name,
# buffer name). Subclasses are matched by their SpikingJelly base's name too.
FIXED_BUFFERS = (("MaskedPSN", "_lambda_"),)
_DATA = torch._C.TensorBase.__dict__["data"]  # torch.Tensor inherits it
_depth = [0]  # neuron forwards running (the outermost sets and removes the substitute)


@contextlib.contextmanager
def traceable(model: torch.nn.Module):
    """The model made traceable by torch.export for the duration (module docstring)."""
    with contextlib.ExitStack() as undo:
        for path, module in model.named_modules():
            cls = type(module)
            if not is_neuron_class(f"{cls.__module__}.{cls.__qualname__}"):
                continue
            _deterministic(path, module)
            undo.enter_context(_data_as_detach(module))
            bases = {c.__name__ for c in cls.__mro__}
            for name, buffer in FIXED_BUFFERS:
                if name in bases and isinstance(module._buffers.get(buffer), torch.Tensor):
                    undo.enter_context(_buffer_as_number(module, buffer))
        yield model


def _deterministic(path: str, module: torch.nn.Module) -> None:
    """SpikingJelly's noisy neurons (NoisyCUBALIFNode, ...) with is_training=True add noise
    they replay from stored sequences, one further with every call: no one function of the
    input, which a compiled model is. Refused, naming the layer and the fix."""
    if getattr(module, "is_training", False) is True and \
            any(c.__name__.startswith("Noisy") for c in type(module).__mro__):
        raise BadInputError(
            f"the neuron {path or '<model>'} ({type(module).__name__}) has is_training=True: "
            "it adds stored noise that changes with every call, so its output is not one "
            "function of its input. Set is_training=False for inference (no noise), then "
            "compile")


@contextlib.contextmanager
def _data_as_detach(module: torch.nn.Module):
    """`.data` reads as `.detach()` while this module's forward runs."""
    forward = module.forward
    had_own = "forward" in module.__dict__

    @functools.wraps(forward)
    def traced(*args, **kwargs):
        _depth[0] += 1
        if _depth[0] == 1:  # (a neuron's forward may call another neuron's)
            torch.Tensor.data = property(torch.Tensor.detach, _DATA.__set__)
        try:
            return forward(*args, **kwargs)
        finally:
            _depth[0] -= 1
            if _depth[0] == 0:
                del torch.Tensor.data  # torch.Tensor's own again: TensorBase's

    module.forward = traced
    try:
        yield
    finally:
        if had_own:
            module.forward = forward
        else:
            del module.forward


@contextlib.contextmanager
def _buffer_as_number(module: torch.nn.Module, name: str):
    """The one-element buffer `name` as its Python float while tracing."""
    order = list(module._buffers)
    value = float(module._buffers[name].reshape(()).item())
    tensor = module._buffers.pop(name)
    persistent = name not in module._non_persistent_buffers_set
    object.__setattr__(module, name, value)
    try:
        yield
    finally:
        object.__delattr__(module, name)
        module.register_buffer(name, tensor, persistent=persistent)
        module._buffers = {k: module._buffers[k] for k in order}
