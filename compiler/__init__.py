"""snnc: compile quantized spiking neural networks to ONNX for ONNX Runtime (and Mobile)."""

from .errors import BadInputError, PassError, SnncError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"
__all__ = ["BadInputError", "PassError", "SnncError", "UnsupportedOpError",
           "VerificationError", "__version__"]
