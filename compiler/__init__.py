"""snnc: compile quantized spiking neural networks to ONNX for ONNX Runtime (and Mobile)."""

from .errors import BadInputError, PassError, SnncError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"
__all__ = ["BadInputError", "PassError", "SnncError", "UnsupportedOpError",
           "VerificationError", "__version__", "quantize"]


def quantize(model, config, calibration=None, method: str = "mse"):
    """Quantize a model's conv/linear weights per layer: see snnc.quant.quantize."""
    from .quant import quantize as _quantize  # imports torch only when used

    return _quantize(model, config, calibration=calibration, method=method)
