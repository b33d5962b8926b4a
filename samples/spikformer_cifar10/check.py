"""Compare a compiled ONNX model with its PyTorch source on random images.

Runs the exported program in PyTorch and the ONNX file in ONNX Runtime on the same inputs,
one at a time, and prints top-1 agreement (logits averaged over timesteps) and the largest
logit difference.

    python3 samples/spikformer_cifar10/check.py MODEL.pt MODEL.onnx [-n 16]
"""

import argparse
import sys
import warnings

import numpy as np
import onnxruntime as ort
import torch

warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("onnx")
    parser.add_argument("-n", type=int, default=16)
    args = parser.parse_args()
    from snnc.loader import load_program

    torch.set_num_threads(2)
    module = load_program(args.model).module()
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    agree, worst = 0, 0.0
    for _ in range(args.n):
        x = rng.random((1, 3, 32, 32), dtype=np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        agree += int(ref.mean(0).argmax() == got.mean(0).argmax())
        worst = max(worst, float(np.abs(ref - got).max()))
    print(f"PyTorch vs ONNX Runtime on {args.n} random images: top-1 agreement "
          f"{agree}/{args.n}, max |logit difference| {worst:.2e}")
    return 0 if agree == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
