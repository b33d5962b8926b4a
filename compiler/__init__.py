"""snnc: compile quantized spiking neural networks to ONNX for ONNX Runtime (and Mobile)."""

from snnc.errors import BadInputError, PassError, SnncError, UnsupportedOpError, VerificationError

__version__ = "0.1.0"
__all__ = ["BadInputError", "PassError", "SnncError", "UnsupportedOpError",
           "VerificationError", "__version__", "compile", "quantize", "search", "verify"]


def compile(model, example_input=None, path=None, *, pack_path=None, ort=False, **options):
    """Compile a SpikingJelly model (an nn.Module and an example input, or a
    torch.export.ExportedProgram) to ONNX, as torch.onnx.export does; returns the
    snnc.driver.Result (ONNX model and bytes, packed weights, summary). With `path`, writes
    the files. See snnc.driver.compile_model."""
    from snnc.driver import compile_model  # imports torch only when used

    return compile_model(model, example_input, path, pack_path=pack_path, ort=ort, **options)


def quantize(model, config, calibration=None, method: str = "mse"):
    """Quantize a model's conv/linear weights per layer: see snnc.quant.quantize."""
    from snnc.quant.quantize import quantize as _quantize  # imports torch only when used

    return _quantize(model, config, calibration=calibration, method=method)


def search(model, train, val, *, method: str = "sensitivity", max_bits: float | None = None,
           max_drop: float | None = None, input_shape=None, progress: bool = False,
           state_path: str | None = None, resume: bool = False, **options):
    """Search a model's per-layer quantization under a budget (docs/search.md), then
    fine-tune it. `train` and `val` are (x, y) pairs of samples-first arrays or .npz paths;
    `options` are snnc.quant.search.engine.Options fields (seed, finetune_epochs,
    allow_float, ...). Returns a snnc.quant.search.engine.Result: `config` (what
    snnc.quantize takes), the fine-tuned quantized `model`, the per-layer `rows`,
    `average_bits` and validation accuracies."""
    import numpy as np

    from snnc.files.data import load_data
    from snnc.quant.search import api  # imports torch only when used

    def data(d):
        if isinstance(d, str):
            return api.Data(*load_data(d))
        x, y = d
        return api.Data(np.ascontiguousarray(np.asarray(x), dtype=np.float32),
                        np.asarray(y).astype(np.int64))

    opts = api.Options(method=method, max_bits=max_bits, max_drop=max_drop, **options)
    return api.search(model, data(train), data(val), opts, input_shape=input_shape,
                      progress=progress, state_path=state_path, resume=resume)


def verify(source, compiled, data, *, pack_path=None, batch_size: int = 64,
           trust_code: bool = False, trust_pickle: bool = False,
           allow_other_source: bool = False):
    """Run `source` in PyTorch and the compiled model in ONNX Runtime on `data`, as `snnc
    verify` does (docs/verify.md). `source`: a model file's path or a
    torch.export.ExportedProgram; `compiled`: an .onnx path (with `pack_path` for a
    --weights external model); `data`: an .npz path or an (x, y) pair, samples first (y may
    be None). Returns a snnc.check.accuracy.Verification (accuracies, top-1 agreement, logit
    differences, spike agreement with --debug-outputs); its `format()` is the CLI's text."""
    import numpy as np

    from snnc.backend.runtime import load_session
    from snnc.check import accuracy
    from snnc.files import loader
    from snnc.files.data import load_data
    from snnc.frontend.lift import lift

    if isinstance(data, str):
        x, y = load_data(data)
    else:
        x, y = data
        x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
        y = None if y is None else np.asarray(y).astype(np.int64)
    session = load_session(compiled, pack_path, intra_op_num_threads=2)
    program = loader.load_program(source, trust_pickle=trust_pickle, trust_code=trust_code) \
        if isinstance(source, str) else source
    lift(program)  # the source runs in PyTorch only if its ops are ones snnc knows
    accuracy.check_source(program, session, allow_other_source)
    return accuracy.verify(program, session, x, y, batch_size)
