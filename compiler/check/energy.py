"""The energy estimate (docs/verify.md, "The energy estimate"): one per-operation model that
`snnc compile --report`, `snnc search` (its figures and the gumbel method's cost) and their
figures all use, so the same configuration gets the same number everywhere.

A layer reading spikes (or spike counts: nonnegative integers) does one accumulate (AC) per
input spike per synapse: SOPs = MACs x mean input value; a layer reading real values (the
image) does all its multiply-accumulates (MAC). An operation costs what the weight's format
needs, from the 45 nm figures of M. Horowitz, "Computing's energy problem (and what we can
do about it)", ISSCC 2014 (the same source as Spikformer's and SpikingJelly's 0.9 / 4.6 pJ):
a k-bit uniform weight adds k-bit codes (times an 8-bit input for a MAC), a power-of-two
weight shifts and adds, a ternary or binary weight (codes -1, 0, +1 or -1, +1) has no
multiply at all: an AC adds or subtracts its 2-bit (1-bit) code and a MAC becomes an add or
subtract of the 8-bit input; a float32 weight does float32 arithmetic. "float" is the same model
with float32 weights: the same synaptic operations at float32 cost.
"""

from __future__ import annotations

from snnc.quant.weights import FIXED_BITS

SOURCE = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC "
          "2014, 45 nm: integer add 0.03 pJ (8 bit) to 0.1 pJ (32 bit), integer multiply "
          "0.2 pJ (8x8) to 3.1 pJ (32x32), float32 add 0.9 pJ, float32 multiply 3.7 pJ")

FLOAT32_ADD_PJ = 0.9  # an accumulate (AC) of a float32 weight
FLOAT32_MUL_PJ = 3.7
FLOAT32_MAC_PJ = 4.6  # multiply + add, written out (3.7 + 0.9 is 4.6000000000000005)
ADD_PJ_PER_BIT = 0.1 / 32  # integer add: about linear in the width (0.025 pJ at 8 bits)
MUL_PJ_PER_BIT2 = 3.1 / 32 ** 2  # integer multiply: about quadratic (0.19 pJ at 8x8)
INPUT_BITS = 8  # a real-valued input (the image) as 8-bit activations for the integer MAC


def op_pj(scheme: str, bits: int | None, spiking: bool) -> float:
    """Energy of one synaptic operation of a layer whose weights are `scheme` ("uniform",
    "pot", "ternary", "binary"; anything else, "float" or a matmul of two activations, is
    float32) at `bits` (ternary and binary: their code widths, 2 and 1, whatever is given).
    Spike input: an AC, one add of the weight's code (a PoT code is shifted into place
    first: a shift-add, counted as two adds). Real input: a MAC, a k x 8-bit multiply and an
    add; for a PoT weight the multiply is a shift: a shift-add, far below a MAC; for a
    ternary or binary weight it is no multiply: one add or subtract of the 8-bit input."""
    if scheme not in ("uniform", "pot", "ternary", "binary"):
        return FLOAT32_ADD_PJ if spiking else FLOAT32_MAC_PJ
    if scheme in FIXED_BITS:
        return ADD_PJ_PER_BIT * (FIXED_BITS[scheme] if spiking else INPUT_BITS)
    add = ADD_PJ_PER_BIT * bits
    if scheme == "pot":
        return 2 * add
    return add if spiking else MUL_PJ_PER_BIT2 * bits * INPUT_BITS + add


def float_op_pj(spiking: bool) -> float:
    """The same operation with a float32 weight: the "float" baseline."""
    return op_pj("float", 32, spiking)


def constants() -> dict:
    """The figures, for a report's JSON."""
    return {"float32_ac_pj": FLOAT32_ADD_PJ, "float32_mac_pj": FLOAT32_MAC_PJ,
            "int_add_pj_per_bit": ADD_PJ_PER_BIT, "int_mul_pj_per_bit2": MUL_PJ_PER_BIT2,
            "real_input_bits": INPUT_BITS, "source": SOURCE}
