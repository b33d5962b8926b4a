"""snnc: compile quantized spiking neural networks to ONNX for ONNX Runtime (and Mobile)."""

from .errors import BadInputError, PassError, SnncError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"
__all__ = ["BadInputError", "PassError", "SnncError", "UnsupportedOpError",
           "VerificationError", "__version__", "compile", "quantize"]


def compile(model, example_input=None, path=None, *, pack_path=None, ort=False, **options):
    """Compile a SpikingJelly model (an nn.Module and an example input, or a
    torch.export.ExportedProgram) to ONNX, as torch.onnx.export does; returns the
    snnc.driver.Result (ONNX model and bytes, packed weights, summary). With `path`, writes
    the files. See snnc.driver.compile_model."""
    from .driver import compile_model  # imports torch only when used

    return compile_model(model, example_input, path, pack_path=pack_path, ort=ort, **options)


def quantize(model, config, calibration=None, method: str = "mse"):
    """Quantize a model's conv/linear weights per layer: see snnc.quant.quantize."""
    from .quant import quantize as _quantize  # imports torch only when used

    return _quantize(model, config, calibration=calibration, method=method)
