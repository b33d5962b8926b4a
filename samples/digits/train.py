"""Train the static digits sample: a small Spikformer on scikit-learn's digits (8x8,
upscaled to 16x16, repeated over T = 4 steps), then its heterogeneous quantized version.

    python3 samples/digits/train.py          # about 6 minutes on 2 CPU cores

Writes float.pt and quantized.pt (snnc checkpoints that snnc compile, quantize and search
accept), train.npz, val.npz, test.npz (x: [n, 1, 16, 16] float32, y: labels) and
results.json next to this file. Fixed seeds
and a fixed split: rerunning gives the same models up to PyTorch's thread scheduling.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import digits_common as common  # noqa: E402

STEPS, SIZE = 4, 16


def main() -> None:
    x_train, y_train, x_test, y_test = common.digits_split()
    x_train = common.upscale(x_train, SIZE)[:, None]
    x_test = common.upscale(x_test, SIZE)[:, None]
    common.run("digits", HERE, x_train, y_train, x_test, y_test, sequence=False,
               kwargs={"steps": STEPS, "channels": 1, "size": SIZE},
               config=common.HETEROGENEOUS,
               float_epochs=40, qat_epochs=10, lr=3e-3, qat_lr=5e-4,
               augment=common.shift_augment(1))


if __name__ == "__main__":
    main()
