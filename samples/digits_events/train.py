"""Train the event-camera digits sample: scikit-learn's digits turned into EMULATED event
streams the way N-MNIST was recorded (the digit moves across a 16x16 sensor in three
saccades; ON/OFF events where log intensity changes; binned into T = 8 frames of event
counts, 2 channels), and a small Spikformer that reads one frame per timestep.

    python3 samples/digits_events/train.py   # about 8 minutes on 2 CPU cores

Writes float.pt and quantized.pt (snnc checkpoints that snnc compile, quantize and search
accept; input [T=8, N, 2, 16, 16]), train.npz, val.npz, test.npz (x: [n, 8, 2, 16, 16]
float32, samples first; y: labels) and results.json next to this file. Fixed seeds and a fixed split.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import digits_common as common  # noqa: E402

STEPS, SIZE = 8, 16


def main() -> None:
    x_train, y_train, x_test, y_test = common.digits_split()
    x_train = common.emulate_events(x_train, steps=STEPS, canvas=SIZE, seed=1)
    x_test = common.emulate_events(x_test, steps=STEPS, canvas=SIZE, seed=2)
    common.run("digits_events", HERE, x_train, y_train, x_test, y_test, sequence=True,
               kwargs={"steps": STEPS, "channels": 2, "size": SIZE},
               config=common.HETEROGENEOUS,
               float_epochs=30, qat_epochs=8, lr=3e-3, qat_lr=5e-4)


if __name__ == "__main__":
    main()
