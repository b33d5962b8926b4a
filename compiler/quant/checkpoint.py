"""`snnc quantize`: an snnc checkpoint (or a NIR graph) quantized per layer, written as a
checkpoint (docs/quantization.md), with the float and quantized accuracy when given data.

The data is read and checked against the checkpoint's input shape before the model is built:
a wrong file is refused in a second, not after the model loads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snnc.errors import BadInputError


@dataclass
class Quantized:
    rows: list  # snnc.quant.quantize.LayerQuant per layer
    average_bits: float
    float_accuracy: float | None = None  # on `data`, in PyTorch
    accuracy: float | None = None
    samples: int = 0


def quantize_checkpoint(path: str, config: dict, output: str, method: str = "mse",
                        calibration: np.ndarray | None = None,
                        data: tuple[np.ndarray, np.ndarray | None] | None = None,
                        trust_code: bool = False, max_neuron_steps: int | None = None,
                        nir=None, where: tuple[str, str] = ("--calibration", "--data")
                        ) -> Quantized:
    """Quantize the checkpoint at `path` with `config` (snnc.quantize's), write it to
    `output`; `calibration` (samples-first x) refines the scales, `data` (x, y) measures
    the float and the quantized model's accuracy."""
    from snnc.files import loader
    from snnc.files.outputs import write_atomic
    from snnc.frontend import budget
    from snnc.quant import quantize as quant
    from snnc.quant.search import runner

    ckpt = loader.load_checkpoint(path, nir=nir)
    if ckpt.get("quantization"):
        raise BadInputError(f"{path} is already quantized")
    shape = ckpt["input_shape"]
    for name, x in ((where[0], calibration), (where[1], None if data is None else data[0])):
        if x is not None:
            runner.sample_axes(shape, x, name)
    if data is not None and data[1] is None:
        raise BadInputError(f"{where[1]}: the data has no labels y; accuracy needs them")
    steps = budget.MAX_NEURON_STEPS if max_neuron_steps is None else max_neuron_steps
    net = loader.build_from_checkpoint(path, ckpt, trust_code=trust_code, max_neuron_steps=steps)
    result = Quantized([], 0.0)
    axis = None
    if data is not None:
        axis, _ = runner.batch_axis(net, shape, data[0], where[1], per_step=True)
        result.float_accuracy = runner.accuracy(net, data[0], data[1], axis)
        result.samples = len(data[0])
    batches = None
    if calibration is not None:  # in verify's batches of 64
        cal_axis, _ = runner.batch_axis(net, shape, calibration, where[0], per_step=True)
        batches = runner.batches(calibration, cal_axis, 64)
    quant.quantize(net, config, calibration=batches, method=method)
    result.rows, result.average_bits = quant.report(net)
    if data is not None:
        result.accuracy = runner.accuracy(net, data[0], data[1], axis)
    write_atomic(output, loader.checkpoint_bytes(ckpt, net, config, method))
    return result
