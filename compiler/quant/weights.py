"""The integer weight formats, in one place (numpy only): what a quantizer's codes mean and
every integer form snnc stores or computes them in (docs/quantization.md).

- codes: uniform q in [-2^(k-1), 2^(k-1) - 1]; PoT sign * c, c in 0..2^(k-1) - 1, the
  weight sign * 2^(1 - c) * scale (c = 0 is a zero weight); ternary q in {-1, 0, 1} (k = 2)
  and binary q in {-1, 1} (k = 1), the weight q * scale: integer codes like uniform ones.
- levels (`container`): the integers DequantizeLinear scales back to the weights: uniform q;
  PoT sign * 2^(E + 1 - c) with the scale divided by 2^E, E = `pot_shift(k)`.
- signed levels (`signed_container`): a folded layer's levels times each channel's sign
  (its scale is +-unit or 0 after fold_scales).
- shift terms (`shift_terms`): sign and exponent of each PoT level, for shift layers.
- the GEMM matrix (`gemm_matrix`): signed levels arranged [K, M] for a token-major integer
  GEMM (a conv's window taps outermost, then input channels), int8.

The IR (ops, passes), the ONNX backend and the pack all use these; none of them re-derives a
format.
"""

from __future__ import annotations

import numpy as np

INT8 = (-128, 127)
UINT8 = (0, 255)
# The code width k of the schemes that take no bits in a config: binary codes are 1-bit
# (the sign), ternary ones fit 2 bits but are stored five to a byte (`stored_bits`).
FIXED_BITS = {"ternary": 2, "binary": 1}
TRITS_PER_BYTE = 5  # 3^5 = 243 <= 256: a ternary weight takes 8/5 = 1.6 bits in the pack


def stored_bits(scheme: str, bits: int) -> float:
    """Bits per weight as the pack stores it: k, but 1.6 for ternary (five trits a byte).
    The reports' bits columns and averages count this."""
    return 8 / TRITS_PER_BYTE if scheme == "ternary" else bits


def code_bytes(count: int, scheme: str, bits: int) -> int:
    """Bytes of `count` codes in the pack: ceil(count * k / 8), ternary ceil(count / 5)."""
    if scheme == "ternary":
        return -(-count // TRITS_PER_BYTE)
    return -(-count * bits // 8)


def pot_shift(bits: int) -> int:
    """E: PoT codes of k bits are the integers sign * 2^(E + 1 - |c|) times scale / 2^E."""
    return 2 ** (bits - 1) - 2


def unit(scheme: str, bits: int) -> float:
    """The scale of a folded channel: 1 (uniform) or 2^E (PoT); a folded layer's scales are
    +-unit, or +0 for a dead channel."""
    return 2.0 ** pot_shift(bits) if scheme == "pot" else 1.0


def dequantize(codes: np.ndarray, scale: np.ndarray, scheme: str) -> np.ndarray:
    """float32 weights, rounded as snnc.quant.quantize.dequantize rounds them: uniform q * scale;
    PoT sign(c) * 2^(1 - |c|) * scale, zero for c = 0; ternary and binary q * scale."""
    s = scale.astype(np.float32).reshape((-1,) + (1,) * (codes.ndim - 1))
    if scheme != "pot":
        return codes.astype(np.float32) * s
    magnitude = np.exp2(np.float32(1) - np.abs(codes).astype(np.float32)) * s
    return np.where(codes == 0, np.float32(0),
                    np.sign(codes).astype(np.float32) * magnitude).astype(np.float32)


def levels(codes: np.ndarray, scheme: str, bits: int) -> tuple[np.ndarray, int]:
    """(int64 levels, E): the integers whose product with scale / 2^E is the weights."""
    if scheme != "pot":
        return codes.astype(np.int64), 0
    e_max = pot_shift(bits)
    magnitude = np.abs(codes.astype(np.int64))
    power = np.where(magnitude == 0, 0, np.left_shift(np.int64(1), np.maximum(
        e_max + 1 - magnitude, 0)))
    return np.sign(codes).astype(np.int64) * power, e_max


def container(codes: np.ndarray, scheme: str, bits: int, allow_int4: bool
              ) -> tuple[np.ndarray, str, int]:
    """(levels in the smallest container, its name "int4" / "int8" / "int16", E). int4 only
    if allowed; int4 levels are returned in an int8 array."""
    values, shift = levels(codes, scheme, bits)
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if allow_int4 and -8 <= low and high <= 7:
        return values.astype(np.int8), "int4", shift
    if INT8[0] <= low and high <= INT8[1]:
        return values.astype(np.int8), "int8", shift
    return values.astype(np.int16), "int16", shift


def channel_signs(scales: np.ndarray) -> np.ndarray:
    """+1, -1 or 0 per output channel of a folded layer's scales."""
    return np.sign(scales.astype(np.float64)).astype(np.int64)


def signed_levels(codes: np.ndarray, scheme: str, bits: int, scales: np.ndarray
                  ) -> np.ndarray:
    """The integer weights of a folded layer (scales +-unit or 0): levels times each
    channel's sign, int64."""
    values, _ = levels(codes, scheme, bits)
    sign = channel_signs(scales).reshape((-1,) + (1,) * (values.ndim - 1))
    return values * sign


def signed_container(codes: np.ndarray, scheme: str, bits: int, scales: np.ndarray
                     ) -> np.ndarray:
    """signed_levels in int8 if they fit, else int16."""
    signed = signed_levels(codes, scheme, bits, scales)
    small = INT8[0] <= signed.min(initial=0) and signed.max(initial=0) <= INT8[1]
    return signed.astype(np.int8 if small else np.int16)


def shift_terms(codes: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(sign, exponent) of each PoT code: the weight is sign * 2^exponent (sign 0 for c = 0)."""
    magnitude = np.abs(codes.astype(np.int64))
    return np.sign(codes).astype(np.int64), np.where(magnitude == 0, 0, shift + 1 - magnitude)


def shift_weights(codes: np.ndarray, shift: int) -> np.ndarray:
    """The integers sign * 2^exponent of a shift layer's (signed) codes, int64."""
    sign, exponent = shift_terms(codes, shift)
    return sign * np.left_shift(np.int64(1), exponent)


def fits(array: np.ndarray, bounds: tuple[int, int]) -> bool:
    return bool(array.size == 0 or (bounds[0] <= array.min() and array.max() <= bounds[1]))


DIGIT_BASE = 128  # int8 digits of wider integer weights: w = sum_k d_k * 128^k


def digits(values: np.ndarray) -> list[np.ndarray]:
    """Integer weights as int8 digits, least significant first: the values themselves if
    they fit int8, else balanced base-128 digits in [-64, 63] (2^14, PoT-5's largest level,
    is three digits; an 8-bit code 128 after a sign flip two)."""
    v = np.asarray(values).astype(np.int64)
    if fits(v, INT8):
        return [v.astype(np.int8)]
    out = []
    while np.any(v != 0):
        d = (v + DIGIT_BASE // 2) % DIGIT_BASE - DIGIT_BASE // 2
        out.append(d.astype(np.int8))
        v = (v - d) // DIGIT_BASE
    return out


def gemm_matrix(weights: np.ndarray) -> np.ndarray:
    """A layer's integer weights [M, Cin, *kernel] (conv) or [M, K] (linear) as the int8
    [K, D * M] matrix of a token-major GEMM, D = len(digits(weights)): row index (kernel tap,
    input channel), taps in row-major order (how snnc's im2col lays out a window); the
    columns digit by digit, least significant first."""
    w = np.asarray(weights)
    if w.ndim == 2:
        matrix = w.T
    else:
        order = tuple(range(2, w.ndim)) + (1, 0)
        matrix = w.transpose(order).reshape(-1, w.shape[0])
    return np.ascontiguousarray(np.concatenate(digits(matrix), axis=1))


def gemm_weights(codes: np.ndarray, scheme: str, bits: int, scales: np.ndarray) -> np.ndarray:
    """A folded layer's GEMM matrix (its scales +-unit or 0): `gemm_matrix` of its
    `signed_levels`. What int_weights means, the ONNX backend stores and the pack rebuilds."""
    return gemm_matrix(signed_levels(codes, scheme, bits, scales))
