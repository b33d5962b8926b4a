"""Compare a compiled ONNX model with its PyTorch source on random images, layer by layer.

Runs the exported program in PyTorch, recording every neuron layer's spikes and membrane,
and a debug build of the same compilation (every layer's spikes as outputs) in ONNX
Runtime; checks that MODEL.onnx gives exactly the debug build's logits; then applies the
rounding rule of docs/testing.md: spikes must be identical except where the membrane is
within 1e-5 of the threshold (float rounding), and samples without such a spike must
match logits within 1e-4. Exits 1 when a difference is not explained by rounding.

    python3 samples/spikformer_cifar10/check.py MODEL.pt MODEL.onnx [-n 16]
"""

import argparse
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("onnx")
    parser.add_argument("-n", type=int, default=16)
    args = parser.parse_args()
    from snnc.check import parity
    from snnc.driver import compile_program
    from snnc.files.loader import load_program
    from snnc.options import Options

    torch.set_num_threads(2)
    program = load_program(args.model)
    debug = parity.onnx_session(compile_program(program, Options(debug_outputs=True)).data)
    compiled = parity.onnx_session(args.onnx)
    rng = np.random.default_rng(0)
    comparison = parity.Comparison()
    top1 = 0
    for _ in range(args.n):
        x = rng.random((1, 3, 32, 32), dtype=np.float32)  # the program's batch is 1
        reference = parity.torch_trace(program, x)
        got = parity.onnx_trace(debug, x)
        logits = compiled.run(None, {compiled.get_inputs()[0].name: x})[0]
        if not np.array_equal(logits, got.outputs[0]):
            print(f"{args.onnx} differs from the debug build of the same model")
            return 1
        parity.compare(reference, got, comparison)
        top1 += int(reference.outputs[0].mean(0).argmax() == logits.mean(0).argmax())
    rates = list(comparison.layers_firing.values())
    print(f"PyTorch vs ONNX Runtime: {comparison.report()}")
    print(f"firing rates per layer {min(rates):.1%}..{max(rates):.1%}; top-1 agreement "
          f"{top1}/{args.n} (a rounding-decided spike may flip an untrained model's "
          "near-tied logits)")
    for problem in comparison.problems:
        print("  NOT ROUNDING:", problem)
    return 1 if comparison.problems else 0


if __name__ == "__main__":
    sys.exit(main())
