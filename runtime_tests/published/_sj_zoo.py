"""Every public model constructor of SpikingJelly 2.0's `spikingjelly.activation_based.model`,
built small for the coverage harness (runtime_tests/coverage.py): num_classes 10, a small
input (32x32 RGB, 28x28 for the MNIST nets, 32x32 event frames for the DVS nets), T steps,
eval mode, made to fire (zoo.make_firing). The architecture is the constructor's own; only
the classifier of the VGGs is shrunk (their 512*7*7 -> 4096 -> 4096 head becomes 1x1 pooling
and 512 -> 64 -> 64 -> 10; the layer types and order are kept). The torchvision-importing
modules (sew_resnet, spiking_vgg, spiking_resnet) load through _compat's stub.

Models whose constructor builds single-step layers (sew/spiking resnets and VGGs, the
parametric-LIF nets) are wrapped as SpikingJelly's tutorials use them: the step mode set to
"m", the image repeated over T, the output averaged over T (MultiStep). spike_dhs exports no
whole network, only blocks: `spike_dhs_blocks` is a small net of them.

BUILDERS: name -> builder(T=2, seed=0) -> (model, input_shape at batch 1)
"""

from __future__ import annotations

import types
from functools import partial

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from published import _compat

_compat.install_torchvision_stub()

import zoo  # noqa: E402  (runtime_tests/zoo.py)

IMAGE32 = (1, 3, 32, 32)


class Loop(nn.Module):
    """A single-step net called once per step on the same image, outputs averaged (how OTTT
    networks run: online, one step at a time)."""

    def __init__(self, net: nn.Module, T: int):
        super().__init__()
        self.net, self.T = net, T

    def forward(self, x):
        out = 0.0
        for _ in range(self.T):
            out = out + self.net(x)
        return out / self.T


class MultiStep(nn.Module):
    """A single-step-built SpikingJelly net run multi-step: [B, ...] -> repeat over T ->
    net -> mean over T (as in SpikingJelly's tutorials)."""

    def __init__(self, net: nn.Module, T: int):
        super().__init__()
        self.net, self.T = net, T
        functional.set_step_mode(self.net, "m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, *([1] * x.dim()))
        return self.net(x).mean(0)


def _fire(make, shape, seed, conv_bias: float | None = None, last: bool = False, **firing):
    """Build under torch.manual_seed(seed), make it fire (zoo.make_firing: BatchNorm biases
    and statistics); a net without BatchNorm gets every conv and hidden linear bias (the
    last layer's too with `last`, where a neuron follows it) set to `conv_bias` instead."""
    torch.manual_seed(seed)
    model = make()
    if conv_bias is not None:
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in layers if last else layers[:-1]:
            if m.bias is not None:
                nn.init.constant_(m.bias, conv_bias)
    return zoo.make_firing(model, shape, seed=seed, **firing), shape


def _lif(**kw):
    return dict(spiking_neuron=neuron.LIFNode, tau=2.0, detach_reset=True,
                surrogate_function=surrogate.ATan(), **kw)


def _resnet(module: str, fn: str, T: int = 2, seed: int = 0):
    import importlib

    factory = getattr(importlib.import_module(f"spikingjelly.activation_based.model.{module}"), fn)
    extra = {"cnf": "ADD"} if module == "sew_resnet" else {}
    return _fire(lambda: MultiStep(factory(num_classes=10, **extra, **_lif()), T), IMAGE32, seed)


def _shrink_classifier(net: nn.Module) -> None:
    """A VGG's 7x7 pooling and 512*49 -> 4096 -> 4096 -> classes head (torchvision's) becomes
    1x1 pooling and 512 -> 64 -> 64 -> 10, each layer of its own class, in the same order."""
    seq = net.classifier if not hasattr(net, "avgpool") else None
    if seq is None:
        net.avgpool = layer.AdaptiveAvgPool2d((1, 1))
        seq = net.classifier
    linears = [i for i, m in enumerate(seq) if isinstance(m, nn.Linear)]
    for i, m in enumerate(seq):
        if isinstance(m, nn.AdaptiveAvgPool2d):
            seq[i] = layer.AdaptiveAvgPool2d((1, 1))
    for j, i in enumerate(linears):
        cin, cout = (512 if j == 0 else 64), (10 if i == linears[-1] else 64)
        seq[i] = type(seq[i])(cin, cout)


def _vgg(fn: str, T: int = 2, seed: int = 0):
    from spikingjelly.activation_based.model import spiking_vgg

    def make():
        net = getattr(spiking_vgg, fn)(num_classes=10, **_lif())
        _shrink_classifier(net)
        return MultiStep(net, T)
    # the hidden classifier Linears (no BatchNorm) get bias 1.5, or they stay silent and
    # the output is the same for every input
    return _fire(make, IMAGE32, seed, conv_bias=1.5)


def _ottt(fn: str, T: int = 2, seed: int = 0):
    from spikingjelly.activation_based.model import spiking_vggws_ottt

    def make():
        net = getattr(spiking_vggws_ottt, fn)(num_classes=10)
        _shrink_classifier(net)
        return Loop(net, T)
    # no BatchNorm: conv and hidden Linear biases 0.6 (at 1.5 every layer fires at 0.7-1.0
    # and the output is the same for every input; at 0.2 nothing fires)
    return _fire(make, IMAGE32, seed, conv_bias=0.6)


def _plif(cls: str, shape, T: int = 2, seed: int = 0):
    from spikingjelly.activation_based.model import parametric_lif_net

    make = lambda: MultiStep(getattr(parametric_lif_net, cls)(  # noqa: E731
        channels=16, spiking_neuron=neuron.ParametricLIFNode, init_tau=2.0,
        detach_reset=True, surrogate_function=surrogate.ATan()), T)
    # conv-BN layers fire from make_firing; the Linear layers (no BatchNorm, each followed
    # by a neuron, the last by the voting layer) get bias 1.2 or the head stays silent
    return _fire(make, shape, seed, conv_bias=1.2, last=True)


def _ms(fn: str, T: int = 2, seed: int = 0, **kw):
    from spikingjelly.activation_based import model as M

    return _fire(lambda: getattr(M, fn)(T=T, num_classes=10, **kw), IMAGE32, seed)


def _masnn(T: int = 2, seed: int = 0):
    from spikingjelly.activation_based.model import masnn

    shape = (1, 2, 32, 32)  # its temporal attention fixes reduction_t=5, so T >= 5
    return _fire(lambda: masnn.masnn_dvs128_gesture(T=max(T, 5), num_classes=10,
                                                    input_size=(32, 32)), shape, seed)


def _transformer(fn: str, T: int = 2, seed: int = 0, qkv_bias: float = 1.0, **kw):
    from spikingjelly.activation_based import model as M

    return _fire(lambda: getattr(M, fn)(T=T, num_classes=10, **kw), IMAGE32, seed,
                 biases={"attn.qkv": qkv_bias})


def _snas(T: int = 2, seed: int = 0):
    from spikingjelly.activation_based.model import snas_net

    args = types.SimpleNamespace(timestep=T, second_avgpooling=2, dataset="cifar10",
                                 celltype="forward", threshold=1.0, tau=2.0)
    con_mat = torch.tensor([[0, 3, 2, 1], [0, 0, 3, 2], [0, 0, 0, 3], [0, 0, 0, 0]])
    model, shape = _fire(lambda: snas_net.SNASNet(args, con_mat), IMAGE32, seed)
    fc = model.classifier[1]  # no bias, fan-in 32768: silent on sparse spikes unless shifted
    with torch.no_grad():
        fc.weight.add_(1.5 / (0.1 * fc.in_features))
    return model, shape


def _dhs(T: int = 2, seed: int = 0):
    """spike_dhs's blocks as a small net (stem conv, searched conv, pooling, global pooling,
    linear), run multi-step as their SeqToANNContainer batch norms and pools expect."""
    from spikingjelly.activation_based.model import spike_dhs as D

    make = lambda: MultiStep(nn.Sequential(  # noqa: E731
        D.SpikingConv2d(3, 16, v_threshold=0.5), D.SearchSpikingConv2d_stem(16, 16),
        D.SpikingAvgPool2d(2, 2), D.SpikingAdaptiveAvgPool2d(4), layer.Flatten(),
        D.SpikingLinear(16 * 16, 10, spiking=False)), T)  # pooled to 4x4: outputs differ
    return _fire(make, IMAGE32, seed)


RESNETS = {"spiking_resnet": ["18", "34", "50", "101", "152", "xt50_32x4d", "xt101_32x8d"],
           "sew_resnet": ["18", "34", "50", "101", "152", "xt50_32x4d", "xt101_32x8d"]}


def _builders() -> dict:
    b: dict = {}
    for module, sizes in RESNETS.items():
        prefix = module.split("_")[0]
        for s in sizes:
            fn = f"{prefix}_resne{s}" if s.startswith("xt") else f"{prefix}_resnet{s}"
            b[fn] = partial(_resnet, module, fn)
        for w in ("50_2", "101_2"):
            b[f"{prefix}_wide_resnet{w}"] = partial(_resnet, module, f"{prefix}_wide_resnet{w}")
    for d in ("11", "13", "16", "19"):
        for bn in ("", "_bn"):
            b[f"spiking_vgg{d}{bn}"] = partial(_vgg, f"spiking_vgg{d}{bn}")
        for ws in ("", "_ws"):
            b[f"ottt_spiking_vgg{d}{ws}"] = partial(_ottt, f"ottt_spiking_vgg{d}{ws}")
    b["ottt_spiking_vggws"] = partial(_ottt, "ottt_spiking_vggws")
    for cls, shape in (("MNISTNet", (1, 1, 28, 28)), ("FashionMNISTNet", (1, 1, 28, 28)),
                       ("NMNISTNet", (1, 2, 34, 34)), ("CIFAR10Net", IMAGE32),
                       ("CIFAR10DVSNet", (1, 2, 128, 128)), ("DVSGestureNet", (1, 2, 128, 128))):
        b[f"plif_{cls}"] = partial(_plif, cls, shape)
    b["ms_resnet18"] = partial(_ms, "ms_resnet18")
    b["ms_resnet34"] = partial(_ms, "ms_resnet34")
    b["max_resnet18"] = partial(_ms, "max_resnet18")
    b["att_ms_resnet18"] = partial(_ms, "att_ms_resnet18")
    b["masnn_dvs128_gesture"] = _masnn
    b["spikformer_cifar10"] = partial(_transformer, "spikformer_cifar10", qkv_bias=0.5)
    # (at qkv bias 0.5 their attention neurons never fire on random images)
    b["spikformer_ti"] = partial(_transformer, "spikformer_ti", img_size_h=32, img_size_w=32)
    b["spikformer_s"] = partial(_transformer, "spikformer_s", img_size_h=32, img_size_w=32)
    b["sdt_8_384"] = partial(_transformer, "sdt_8_384", qkv_bias=0.5)
    b["qkformer_10_384"] = partial(_transformer, "qkformer_10_384")
    b["maxformer_10_384"] = partial(_transformer, "maxformer_10_384")
    b["maxformer_cifar"] = partial(_transformer, "maxformer_cifar")
    b["snas_net"] = _snas
    b["spike_dhs_blocks"] = _dhs
    return b


BUILDERS = _builders()
# one per family, for --quick
QUICK = ["spiking_resnet18", "sew_resnet18", "spiking_vgg11_bn", "ottt_spiking_vgg11_ws",
         "plif_CIFAR10Net", "ms_resnet18", "max_resnet18", "att_ms_resnet18",
         "masnn_dvs128_gesture", "spikformer_cifar10", "sdt_8_384", "qkformer_10_384",
         "maxformer_cifar", "snas_net", "spike_dhs_blocks"]


def _cost(name: str) -> int:
    """Rough build + export cost: the deepest and widest nets last."""
    if any(k in name for k in ("101", "152", "wide", "resnext")):
        return 3
    if any(k in name for k in ("34", "50", "vgg16", "vgg19", "spikformer_s")):
        return 2
    return 1


# every constructor, cheapest first (a run cut short still covers every family)
ALL = sorted(BUILDERS, key=_cost)
