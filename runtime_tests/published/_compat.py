"""Test-only stand-ins for what the published models import but this machine cannot install.

- timm: `trunc_normal_`, `DropPath`, `to_2tuple`, `register_model` (small local equivalents;
  DropPath is the identity in eval mode, as timm's is).
- SpikingJelly < 0.0.0.0.14 (`spikingjelly.clock_driven.neuron`): `MultiStepLIFNode`,
  `MultiStepParametricLIFNode`, `MultiStepIFNode`, mapped to SpikingJelly 2.0's classes
  (`activation_based.neuron.LIFNode(step_mode="m")` ...). `backend="cupy"` (a CUDA kernel
  of the same neuron) is dropped: SpikingJelly 2.0 has one implementation, its torch op.
  (The fixtures import `clock_driven`'s other modules, e.g. `layer`, from
  `spikingjelly.activation_based` directly.)
  `neuron_v0`: SpikingJelly 0.0.0.0.14's `activation_based.neuron` (whose IFNode, LIFNode
  and ParametricLIFNode took `backend=`): SpikingJelly 2.0's classes, the argument dropped.
- torchvision: SpikingJelly 2.0's sew_resnet, spiking_vgg and spiking_resnet import only
  `load_state_dict_from_url` from it (used for pretrained=True, which the fixtures never
  ask for). `install_torchvision_stub()` puts a module with that one name (torch.hub's) in
  sys.modules when no real torchvision is importable; nothing else of torchvision exists.

Importing this module changes nothing; the fixtures call what they need.
"""

from __future__ import annotations

import collections.abc
import importlib.util
import sys
import types
from itertools import repeat

import torch
from torch import nn


def install_torchvision_stub() -> None:
    """Make `from torchvision.models.utils import load_state_dict_from_url` work (torch.hub's
    function) when torchvision is not installed; a real torchvision is left alone."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    import torch.hub

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    tv.models, models.utils = models, utils
    tv.__snnc_stub__ = True
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.utils": utils})


def _multi_step(cls):
    def make(*args, backend: str | None = None, **kwargs):
        kwargs.setdefault("step_mode", "m")
        return cls(*args, **kwargs)
    make.__name__ = make.__qualname__ = f"MultiStep{cls.__name__}"
    make.__doc__ = (f"SpikingJelly 0.0.0.0.x's MultiStep{cls.__name__}: SpikingJelly 2.0's "
                    f"{cls.__name__}(step_mode='m'); the backend argument is dropped.")
    return make


from spikingjelly.activation_based import neuron as _neuron  # noqa: E402

def _accepts_backend(cls):
    """cls with SpikingJelly 0.0.0.0.14's `backend` argument ("torch"/"cupy"), dropped."""
    def __init__(self, *args, backend: str | None = None, **kwargs):
        cls.__init__(self, *args, **kwargs)
    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": __name__,
                                       "__doc__": f"{cls.__name__}, backend dropped."})


# SpikingJelly 0.0.0.0.14's `activation_based.neuron` as models of that release call it: the
# same classes, whose constructors also took backend="cupy"
neuron_v0 = types.ModuleType("neuron_v0")
neuron_v0.__dict__.update({k: v for k, v in vars(_neuron).items() if not k.startswith("__")})
for _cls in ("IFNode", "LIFNode", "ParametricLIFNode"):
    setattr(neuron_v0, _cls, _accepts_backend(getattr(_neuron, _cls)))

MultiStepLIFNode = _multi_step(_neuron.LIFNode)
MultiStepParametricLIFNode = _multi_step(_neuron.ParametricLIFNode)
MultiStepIFNode = _multi_step(_neuron.IFNode)


def _ntuple(n):
    def parse(x):
        if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
            return tuple(x)
        return tuple(repeat(x, n))
    return parse


to_2tuple = _ntuple(2)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0,
                  a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """timm.models.layers.trunc_normal_ (torch has the same function)."""
    return nn.init.trunc_normal_(tensor, mean, std, a, b)


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    if keep > 0.0 and scale_by_keep:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """timm's DropPath: stochastic depth in training, the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


def register_model(fn):
    """timm's registry decorator: here it registers nothing."""
    return fn


def _cfg(url: str = "", **kwargs) -> dict:
    return {"url": url, **kwargs}


__all__ = ["neuron_v0", "MultiStepLIFNode", "MultiStepParametricLIFNode", "MultiStepIFNode",
           "install_torchvision_stub", "to_2tuple", "trunc_normal_", "DropPath", "drop_path",
           "register_model", "_cfg", "fire"]


def fire(model: nn.Module, input_shape, seed: int = 0, batches: int = 2,
         **firing) -> nn.Module:
    """runtime_tests/zoo.py's make_firing (BatchNorm biases and statistics recalibrated on
    `batches` random batches of 8); returns the model in eval mode."""
    import zoo

    return zoo.make_firing(model, input_shape, seed=seed, batches=batches, **firing)
