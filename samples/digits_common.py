"""What the two digits samples share: the data (scikit-learn's digits, fixed split), the
emulated event streams, a small Spikformer, and the train / quantize / fine-tune / export loop.

Nothing is downloaded: `sklearn.datasets.load_digits` ships inside scikit-learn (1,797 8x8
grey images, 16 levels). The split is fixed: 20 % test, stratified, random_state 0.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

SPLIT_SEED = 0
TEST_FRACTION = 0.2
VAL_SEED = 1  # the validation split (snnc search's --val) of the training split
VAL_FRACTION = 0.2

# Both samples' quantization: each layer uniform or power-of-two with its own bit width
# (SpikeHQ's search space), 3.33 bits on average. 8 bits for the first conv (72-144 weights,
# real-valued or count input) and the head, 3-4 bits elsewhere.
HETEROGENEOUS = {
    "net.patch_embed.stages.0.*": {"scheme": "uniform", "bits": 8},
    "net.patch_embed.stages.1.*": {"scheme": "uniform", "bits": 4},
    "net.patch_embed.stages.2.*": {"scheme": "uniform", "bits": 4},
    "net.patch_embed.stages.3.*": {"scheme": "pot", "bits": 4},
    "net.patch_embed.positional_encoding.*": {"scheme": "uniform", "bits": 3},
    "net.blocks.*.attn.qkv_conv_bn.0": {"scheme": "pot", "bits": 4},
    "net.blocks.*.attn.proj_conv_bn.0": {"scheme": "uniform", "bits": 3},
    "net.blocks.*.mlp.fc1.0": {"scheme": "pot", "bits": 3},
    "net.blocks.*.mlp.fc2.0": {"scheme": "uniform", "bits": 3},
    "net.head": {"scheme": "uniform", "bits": 8},
}


def digits_split():
    """(train images, train labels, test images, test labels): float32 [n, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                   random_state=SPLIT_SEED, stratify=labels)
    return images[train], labels[train], images[test], labels[test]


def train_val_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) of the training split: 20 % for validation, stratified,
    random_state 1. Models train on the first; snnc search chooses on the second."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=VAL_FRACTION, random_state=VAL_SEED,
                            stratify=y)


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """[n, 8, 8] -> [n, size, size], bilinear."""
    x = torch.from_numpy(images)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False)
    return x[:, 0].clamp(0, 1).numpy()


def _translate(image: torch.Tensor, dy: float, dx: float, canvas: int) -> torch.Tensor:
    """The image [h, w] placed on a black canvas at sub-pixel offset (dy, dx), bilinear."""
    h, w = image.shape
    out = torch.zeros(canvas + 1, canvas + 1)
    iy, ix = int(math.floor(dy)), int(math.floor(dx))
    fy, fx = dy - iy, dx - ix
    for oy, ox, weight in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)),
                           (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        out[iy + oy:iy + oy + h, ix + ox:ix + ox + w] += weight * image
    return out[:canvas, :canvas]


# N-MNIST's three saccades: down-right, left, then up-right back to the start (offsets in
# pixels, row and column, of the digit on the canvas).
SACCADES = ((0.0, 2.0), (4.0, 4.0), (4.0, 0.0), (0.0, 2.0))


def emulate_events(images: np.ndarray, steps: int = 8, digit: int = 12, canvas: int = 16,
                   substeps: int = 12, contrast: float = 0.15, mismatch: float = 0.05,
                   seed: int = 0) -> np.ndarray:
    """Emulated event-camera recordings of `images` [n, 8, 8] (values in [0, 1]).

    As N-MNIST was recorded: the digit (upscaled to `digit` pixels) moves across a
    `canvas`-pixel sensor in three saccades (SACCADES, `substeps` positions each). Each
    pixel keeps a reference log intensity; whenever the log intensity moves `contrast`
    above (below) it, the pixel emits an ON (OFF) event and the reference follows. Each
    pixel's contrast threshold varies by `mismatch` (relative, fixed per sample, seeded),
    as a real sensor's do. The events are binned into `steps` frames of event counts:
    float32 [n, steps, 2, canvas, canvas], channel 0 ON, channel 1 OFF.
    """
    rng = np.random.default_rng(seed)
    big = torch.from_numpy(upscale(images, digit))
    path = []
    for (y0, x0), (y1, x1) in zip(SACCADES, SACCADES[1:]):
        for k in range(substeps):
            a = k / substeps
            path.append((y0 + a * (y1 - y0), x0 + a * (x1 - x0)))
    path.append(SACCADES[-1])
    bins = np.minimum((np.arange(1, len(path)) * steps) // len(path), steps - 1)
    out = np.zeros((len(images), steps, 2, canvas, canvas), np.float32)
    for i, image in enumerate(big):
        frames = torch.stack([_translate(image, dy, dx, canvas) for dy, dx in path]).numpy()
        log = np.log(frames + 0.05)
        threshold = contrast * (1 + mismatch * rng.standard_normal((canvas, canvas)))
        reference = log[0].copy()
        for t in range(1, len(path)):
            delta = log[t] - reference
            on = np.floor(np.maximum(delta, 0) / threshold)
            off = np.floor(np.maximum(-delta, 0) / threshold)
            reference += (on - off) * threshold
            out[i, bins[t - 1], 0] += on
            out[i, bins[t - 1], 1] += off
    return out


def make_model(steps: int, channels: int, size: int) -> torch.nn.Module:
    """The samples' model: a small Spikformer (SpikingJelly's, embed 64, 4 heads, 2 blocks)
    whose logits are averaged over the T timesteps, built by the factory the checkpoints
    name (snnc.demo:spikformer_classifier, on snnc's allowlist)."""
    from snnc.demo import spikformer_classifier

    return spikformer_classifier(steps, channels, size)


FACTORY = "snnc.demo:spikformer_classifier"


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + size] for i in range(0, n, size)]


def to_model_input(x: torch.Tensor, sequence: bool) -> torch.Tensor:
    """Samples-first data [n, ...] -> the model's input ([T, n, ...] for sequences)."""
    return x.transpose(0, 1).contiguous() if sequence else x


def evaluate(model, x: torch.Tensor, y: torch.Tensor, sequence: bool, batch: int = 128) -> float:
    from spikingjelly.activation_based import functional

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            functional.reset_net(model)
            logits = model(to_model_input(x[i:i + batch], sequence))
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    functional.reset_net(model)
    return correct / len(x)


def train(model, x, y, sequence: bool, epochs: int, lr: float, seed: int,
          augment=None, batch: int = 64, log=print) -> None:
    """AdamW with a cosine schedule, cross-entropy on the time-averaged logits."""
    from spikingjelly.activation_based import functional

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(x) / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        for index in _batches(len(x), batch, generator):
            xb = x[index] if augment is None else augment(x[index], generator)
            functional.reset_net(model)
            loss = torch.nn.functional.cross_entropy(model(to_model_input(xb, sequence)),
                                                     y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(index)
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
            f"({time.perf_counter() - start:.1f}s)")
    functional.reset_net(model)


def shift_augment(max_shift: int):
    """Random translation by up to `max_shift` pixels (zero fill), per sample."""

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=generator)
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        for i, (dy, dx) in enumerate(shifts.tolist()):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[i, ..., yd, xd] = x[i, ..., ys, xs]
        return out

    return augment


def checkpoint(model, kwargs: dict, input_shape: list[int], config: dict | None = None) -> bytes:
    """The snnc checkpoint of the model (factory, kwargs, state_dict; the quantization config
    if quantized): snnc compile, quantize and search all read it."""
    from snnc.files.loader import checkpoint_bytes, make_checkpoint

    return checkpoint_bytes(make_checkpoint(FACTORY, kwargs, model, input_shape), config=config)


def npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    return buffer.getvalue()


def run(name: str, here: str, x_train, y_train, x_test, y_test, *, sequence: bool,
        kwargs: dict, config: dict, float_epochs: int, qat_epochs: int, lr: float,
        qat_lr: float, augment=None, seed: int = 0) -> dict:
    """Hold out the validation split, train float on the rest, quantize per `config`
    (snnc.quantize, scales calibrated on training data), fine-tune, evaluate both, and write
    float.pt, quantized.pt (snnc checkpoints), train.npz, val.npz, test.npz and
    results.json into `here`."""
    from snnc.files.outputs import write_all_atomic
    from snnc.quant import quantize as quant

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    start = time.perf_counter()
    fit, val = train_val_split(y_train)
    x_val, y_val = x_train[val], y_train[val]
    x_train, y_train = x_train[fit], y_train[fit]
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_test), torch.from_numpy(y_test)
    model = make_model(**kwargs)
    print(f"{name}: train float ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(xt)} train / {len(y_val)} val / {len(xv)} test samples)")
    train(model, xt, yt, sequence, float_epochs, lr, seed, augment)
    float_accuracy = evaluate(model, xv, yv, sequence)
    print(f"{name}: float test accuracy {float_accuracy:.4f}")
    # batch 1: snnc verify runs the source at its example batch
    shape = list(to_model_input(xv[:1], sequence).shape)
    float_pt = checkpoint(model, kwargs, shape)

    quant.quantize(model, config, calibration=to_model_input(xt[:256], sequence))
    ptq_accuracy = evaluate(model, xv, yv, sequence)
    print(f"{name}: quantized before fine-tuning {ptq_accuracy:.4f}")
    train(model, xt, yt, sequence, qat_epochs, qat_lr, seed + 1, augment)
    quant_accuracy = evaluate(model, xv, yv, sequence)
    rows, average = quant.report(model)
    print(quant.format_report(rows, average))
    print(f"{name}: quantized test accuracy {quant_accuracy:.4f} at {average:.2f} average bits")
    quantized_pt = checkpoint(model, kwargs, shape, config)
    results = {"float_accuracy": float_accuracy, "quantized_before_finetune": ptq_accuracy,
               "quantized_accuracy": quant_accuracy, "average_bits": round(average, 4),
               "test_samples": len(yv), "val_samples": len(y_val), "train_samples": len(yt),
               "train_seconds": round(time.perf_counter() - start, 1),
               "quantized_by": "the hand-set configuration below", "config": config}
    # all files or none: an interrupted run leaves the old, matching set
    write_all_atomic([(os.path.join(here, "float.pt"), float_pt),
                      (os.path.join(here, "quantized.pt"), quantized_pt),
                      (os.path.join(here, "train.npz"), npz(x_train, y_train)),
                      (os.path.join(here, "val.npz"), npz(x_val, y_val)),
                      (os.path.join(here, "test.npz"), npz(x_test, y_test)),
                      (os.path.join(here, "results.json"),
                       (json.dumps(results, indent=2) + "\n").encode())])
    return results
