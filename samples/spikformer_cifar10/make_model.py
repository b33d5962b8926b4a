"""Generate the sample model: SpikingJelly's spikformer_cifar10 with neurons that fire.

Nothing is downloaded: the weights are random, with BatchNorm recalibrated on random images
so that 10-50 % of the neurons fire (random initialisation alone never fires). The model is
saved the way a user would: torch.export.save of an ExportedProgram at batch 1.

    python3 samples/spikformer_cifar10/make_model.py -o out/sample/model.pt [--steps 4]
"""

import argparse
import os
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from snnc.demo import export, firing_spikformer

    torch.set_num_threads(2)
    model = firing_spikformer(steps=args.steps, seed=args.seed)
    program = export(model, torch.zeros(1, 3, 32, 32))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        torch.export.save(program, f)
    print(f"wrote {args.output} (spikformer_cifar10, T={args.steps}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
