"""Demo models that really fire, for samples, tests and benchmarks.

A randomly initialised SpikingJelly network never fires: every neuron stays below
threshold and every output is exactly 0, so any comparison passes vacuously. `make_firing`
sets BatchNorm biases and recalibrates BatchNorm statistics on random inputs, which gives
firing rates of roughly 10-50 % per layer.
"""

from __future__ import annotations

import torch

from snnc.files.loader import quiet_torch_logs

quiet_torch_logs()


def make_firing(model: torch.nn.Module, input_shape, seed: int = 0, batches: int = 4,
                bias: float = 0.5) -> torch.nn.Module:
    """BatchNorm biases to `bias`, statistics recalibrated on random inputs; returns eval()."""
    from spikingjelly.activation_based import functional

    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("make_firing needs a model with BatchNorm layers")
    if any(p.is_meta for p in model.parameters()):  # snnc's size probe: nothing to measure
        return model.eval()
    for bn in bns:
        torch.nn.init.constant_(bn.bias, bias)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            functional.reset_net(model)
            model(torch.rand(*input_shape))
    functional.reset_net(model)
    return model.eval()


def export(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with the neurons' memories reset before and after."""
    import warnings

    from spikingjelly.activation_based import functional

    from snnc.frontend.tracing import traceable

    functional.reset_net(model)
    with torch.no_grad(), warnings.catch_warnings(), traceable(model):
        warnings.simplefilter("ignore")  # SpikingJelly's memories trip a buffer warning
        program = torch.export.export(model, (example,))
    functional.reset_net(model)
    return program


# A heterogeneous per-layer configuration for spikformer_cifar10 (about 4.1 average bits):
# each layer uniform or power-of-two, 2 to 8 bits, as in SpikeHQ.
SPIKFORMER_HETEROGENEOUS = {
    "patch_embed.*": {"scheme": "uniform", "bits": 8},
    "blocks.*.attn.qkv_conv_bn.0": {"scheme": "pot", "bits": 4},
    "blocks.*.attn.proj_conv_bn.0": {"scheme": "uniform", "bits": 3},
    "blocks.*.mlp.fc1.0": {"scheme": "pot", "bits": 3},
    "blocks.*.mlp.fc2.0": {"scheme": "uniform", "bits": 2},
    "head": {"scheme": "uniform", "bits": 8},
}


def firing_spikformer(steps: int = 4, seed: int = 0, quantization: dict | None = None
                      ) -> torch.nn.Module:
    """spikformer_cifar10(T=steps) with firing neurons (32x32 RGB input, 10 classes),
    quantized first with `quantization` (a snnc.quantize config) if given."""
    from spikingjelly.activation_based.model import spikformer

    from snnc.quant.quantize import quantize

    torch.manual_seed(seed)
    model = spikformer.spikformer_cifar10(T=steps)
    if quantization is not None:
        quantize(model, quantization)
    return make_firing(model, (8, 3, 32, 32), seed=seed)


class ConvSNN(torch.nn.Module):
    """A small convolutional SNN: two conv-BN-neuron stages, a linear head, mean over time.

    `neuron` picks the neuron of the second stage: "lif", "if", "plif", "lif_soft" (soft
    reset, no input decay, tau 3) or "lif_reset" (v_reset -0.2). The input image
    [B, C, H, W] is repeated T times, as Spikformer does.
    """

    def __init__(self, steps: int = 4, channels: int = 2, size: int = 12, classes: int = 5,
                 neuron: str = "lif"):
        super().__init__()
        from spikingjelly.activation_based import layer
        from spikingjelly.activation_based import neuron as sn

        self.steps = steps
        kinds = {
            "lif": lambda: sn.LIFNode(step_mode="m"),
            "if": lambda: sn.IFNode(step_mode="m"),
            "plif": lambda: sn.ParametricLIFNode(step_mode="m", init_tau=3.0),
            "lif_soft": lambda: sn.LIFNode(step_mode="m", tau=3.0, v_reset=None,
                                           decay_input=False),
            "lif_reset": lambda: sn.LIFNode(step_mode="m", v_reset=-0.2),
        }
        self.conv1 = layer.Conv2d(channels, 8, 3, padding=1, bias=False, step_mode="m")
        self.bn1 = layer.BatchNorm2d(8, step_mode="m")
        self.lif1 = sn.LIFNode(step_mode="m")
        self.pool = layer.MaxPool2d(2, 2, step_mode="m")
        self.conv2 = layer.Conv2d(8, 16, 3, padding=1, bias=True, step_mode="m")
        self.bn2 = layer.BatchNorm2d(16, step_mode="m")
        self.lif2 = kinds[neuron]()
        self.head = torch.nn.Linear(16 * (size // 2) ** 2, classes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1)
        x = self.pool(self.lif1(self.bn1(self.conv1(x))))
        x = self.lif2(self.bn2(self.conv2(x)))
        return self.head(x.flatten(2)).mean(0)


def conv_snn(steps: int = 4, neuron: str = "lif", seed: int = 0, **kwargs) -> ConvSNN:
    """A firing ConvSNN (factory usable in snnc checkpoints: "snnc.demo:conv_snn")."""
    torch.manual_seed(seed)
    model = ConvSNN(steps=steps, neuron=neuron, **kwargs)
    return make_firing(model, (8, model.conv1.in_channels, 12, 12), seed=seed)


class TimeMeanClassifier(torch.nn.Module):
    """SpikingJelly's Spikformer (`spikingjelly.activation_based.model.spikformer.Spikformer`)
    whose per-step logits [T, N, classes] are averaged over time into [N, classes].

    Static input: an image [N, C, H, W] that Spikformer repeats T times. Event input: frames
    [T, N, C, H, W]. The bundled digits samples are this model.
    """

    def __init__(self, steps: int, channels: int, size: int, embed: int = 64, heads: int = 4,
                 depth: int = 2, mlp_ratio: float = 4.0, classes: int = 10,
                 patch_size: int = 4):
        super().__init__()
        from spikingjelly.activation_based.model.spikformer import Spikformer

        self.net = Spikformer(T=steps, in_channels=channels, img_size_h=size, img_size_w=size,
                              patch_size=patch_size, num_classes=classes, embed_dims=embed,
                              num_heads=heads, mlp_ratio=mlp_ratio, depths=depth)

    def forward(self, x):
        return self.net(x).mean(0)


def spikformer_classifier(steps: int = 4, channels: int = 1, size: int = 16,
                          **kwargs) -> TimeMeanClassifier:
    """A TimeMeanClassifier (factory usable in snnc checkpoints:
    "snnc.demo:spikformer_classifier"); weights come from the checkpoint's state_dict."""
    return TimeMeanClassifier(steps, channels, size, **kwargs)
