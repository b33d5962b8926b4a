"""The QNN form's values and emitter (`--target qnn`, docs/qnn.md): each IR value as an
int32 tensor standing for integers times a compile-time unit (Fx), and the HTP-exact building
blocks every lowering in snnc.backend.onnx_qnn uses: constants, floor division, the crossing
into and out of QDQ tensors, and GEMMs split into exact uint8 x int8 pieces."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, numpy_helper

from snnc.backend.onnx_emit import _Emitter
from snnc.errors import SnncError
from snnc.ir.graph import Graph, Node, Value
from snnc.options import Options
from snnc.quant.weights import digits

INT32 = (-(2 ** 31) + 1, 2 ** 31 - 1)
EXACT = 1024  # a GEMM's int16 sum read back through HTP's float (measured exact to 2^10)
SIGNIFICANT = 27  # bits a leaky membrane's input keeps: 4 to spare (IF sums 16 steps)


class Refused(SnncError):
    """The model holds something HTP cannot compute exactly."""


@dataclass
class Fx:
    """An IR value as int32 `name` of integers in [lo, hi] standing for Z * unit."""
    name: str
    unit: np.ndarray  # float64, broadcastable to the value: () or per channel
    lo: np.ndarray  # per channel (broadcast like unit), int64-valued float64
    hi: np.ndarray
    q16: str | None = None  # the int16 QDQ tensor Z was cast from (a layer's sum)

    @property
    def bound(self) -> tuple[int, int]:
        return int(np.min(self.lo)), int(np.max(self.hi))

    @property
    def top(self) -> float:
        """The largest magnitude Z can take."""
        return max(abs(float(np.min(self.lo))), abs(float(np.max(self.hi))))


def refuse(node: Node | None, what: str) -> None:
    where = "an output" if node is None else \
        f"{node.source.layer if node.source else node.op} ({node.op})"
    raise Refused(f"--target qnn: {where}: {what}. Compile without --target qnn to run it "
                  "on the CPU.")


class QnnEmitter(_Emitter):
    def __init__(self, graph: Graph, opts: Options):
        super().__init__(graph, opts)
        self.fx: dict[Value, Fx] = {}
        self.weights: dict[Value, tuple[np.ndarray, np.ndarray]] = {}
        self.planes: dict[tuple, list[tuple[str, int, int]]] = {}
        self.u8: dict[str, str] = {}

    # ---------------------------------------------------------------- constants and casts
    def i32(self, array, base: str = "c") -> str:
        a = np.asarray(array)
        if np.any(a < INT32[0]) or np.any(a > INT32[1]):
            raise Refused(f"--target qnn: a constant ({base}) leaves int32")
        return self.const(a.astype(np.int32), base if a.ndim else f"c{int(a)}_i32")

    def zero(self, dtype) -> str:
        return self.const(np.array(0, dtype), f"zero_{np.dtype(dtype).name}")

    def check(self, node: Node, lo, hi, what: str) -> None:
        if np.min(lo) < INT32[0] or np.max(hi) > INT32[1]:
            refuse(node, f"{what} could leave int32 (bound {max(abs(np.min(lo)), np.max(hi)):.3g})")

    def get(self, node: Node, index: int) -> Fx:
        value = node.inputs[index]
        if value in self.fx:
            return self.fx[value]
        const = self.graph.constants.get(value)
        if const is not None and np.all(np.round(const) == const) and const.size:
            c = np.asarray(const, np.float64)
            return Fx(self.i32(c, value.hint or "const"), np.ones(()), c, c)
        if value in self.weights:
            refuse(node, "reads quantized weights other than as a layer's weights")
        if const is not None:
            example = " (e.g. an average pool written as a matrix)" if node.op == "matmul" else ""
            refuse(node, f"reads a real-valued constant as a tensor operand{example}, not as "
                   "quantized weights: HTP would compute it in reduced float precision")
        refuse(node, "reads a real-valued tensor (a float island: an op that is not "
                "spike-driven), which HTP computes in reduced float precision")
        raise AssertionError

    # ------------------------------------------------------------------------- GEMMs
    def uint8_planes(self, node: Node, x: Fx, module: str, top: int = 255
                     ) -> list[tuple[str, int, int]]:
        """x (integers >= 0) as int32 digits in base 2^k, each <= top:
        [(name, weight base^j, bound)]."""
        lo, hi = x.bound
        if lo < 0:
            refuse(node, f"reads negative integers (down to {lo}); HTP's exact GEMMs take "
                    "uint8 activations")
        base = 256 if hi <= top else 2 ** int(math.log2(min(top, 255) + 1))
        key = (x.name, base)
        if key in self.planes:
            return self.planes[key]
        planes, rest, weight = [], x.name, 1
        while True:
            last = hi // weight < base
            if last:
                digit = rest
            else:
                high = self.floor_div(node, rest, base, module, 0, hi)
                low = self.op("Mul", [high, self.i32(base)], module, "plane_low")
                digit = self.op("Sub", [rest, low], module, "plane")
            planes.append((digit, weight, min(hi // weight, base - 1)))
            if last:
                break
            rest, weight = high, weight * base
        self.planes[key] = planes
        return planes

    def as_uint8(self, z: str, module: str) -> str:
        """int32 integers in [0, 255] as a DequantizeLinear'd uint8 tensor (HTP's GEMM input):
        Cast to float and QuantizeLinear (HTP refuses a raw Cast into a quantized tensor)."""
        if z not in self.u8:
            f = self.op("Cast", [z], module, "as_float", to=TensorProto.FLOAT)
            one, zu8 = self.scalar(1.0), self.zero(np.uint8)
            q = self.op("QuantizeLinear", [f, one, zu8], module, "u8")
            self.u8[z] = self.op("DequantizeLinear", [q, one, zu8], module, "u8_dq")
        return self.u8[z]

    def floor_div(self, node: Node, a: str, d: int, module: str, lo, hi) -> str:
        """floor(a / d) for int32 a in [lo, hi] and d >= 1. HTP's integer Div is exact for
        dividends >= 0 (measured to 2^30) but rounds some negative quotients down and
        others toward zero, so a negative range is lifted first:
        floor(a / d) = (a + k d) / d - k, k d >= -lo."""
        if d == 1:
            return a
        lo, hi = float(np.min(lo)), float(np.max(hi))
        k = max(0, math.ceil(-lo / d))
        self.check(node, lo, hi + k * d, "a division's dividend, lifted to >= 0 (HTP's Div "
                   "rounds negative ones inconsistently),")
        lifted = a if k == 0 else self.op("Add", [a, self.i32(k * d)], module, "lifted")
        q = self.op("Div", [lifted, self.i32(d)], module, "quotient")
        return q if k == 0 else self.op("Sub", [q, self.i32(k)], module, "floor")

    def exact_int32(self, q: str, dtype, module: str) -> str:
        """A QDQ tensor of integers within +-EXACT as int32: DequantizeLinear (HTP's float
        holds them exactly) and a Cast. (HTP refuses a Cast of the quantized tensor itself.)"""
        dq = self.op("DequantizeLinear", [q, self.scalar(1.0), self.zero(dtype)], module, "sum_dq")
        # HTP's DequantizeLinear gives -1.9999998 for -2 (measured): round, then Cast
        rounded = self.op("Round", [dq], module, "sum_rounded")
        return self.op("Cast", [rounded], module, "sum", to=TensorProto.INT32)

    def gemm(self, node: Node, x: Fx, w: np.ndarray, scale: np.ndarray, module: str,
             conv: dict | None) -> Fx:
        """x (unit scalar) times integer weights w [M, Cin, *k] (conv) or [M, K] (linear,
        over x's last axis): a Fx of unit x.unit * scale (per output channel)."""
        if np.asarray(x.unit).size != 1:
            refuse(node, "reads per-channel fixed-point values")
        acc, lo, hi, single = None, 0.0, 0.0, None
        m, split = w.shape[0], digits(w)
        widest = max(int(np.abs(d.astype(np.int64)).reshape(m, d.shape[1], -1).sum(axis=2).max(
            initial=1)) for d in split)
        taps = widest > EXACT  # one input channel's kernel alone sums beyond: split its taps
        if taps:
            widest = max(int(np.abs(d.astype(np.int64)).max(initial=1)) for d in split)
        for plane, pw, bound in self.uint8_planes(node, x, module, EXACT // max(widest, 1)):
            for k, d in enumerate(split):
                pieces = self._taps if taps else self._pieces
                for piece in pieces(d.astype(np.int64), bound):
                    part, plo, phi, q = self._piece(plane, d, piece, bound, pw * 128 ** k,
                                                    module, conv)
                    lo, hi = lo + plo, hi + phi
                    single = q if acc is None else None
                    acc = part if acc is None else self.op("Add", [acc, part], module, "sum")
        shape = (m,) + (1,) * (len(conv["kernel_shape"]) if conv else 0)
        unit = np.asarray(x.unit, np.float64) * np.asarray(scale, np.float64).reshape(shape)
        self.check(node, lo, hi, "a layer's integer sum")
        return Fx(acc, unit, np.asarray(lo).reshape(shape), np.asarray(hi).reshape(shape),
                  single)

    @staticmethod
    def _pieces(d: np.ndarray, bound: int) -> list[slice]:
        """Input-channel ranges whose sums (inputs <= bound) stay within +-EXACT."""
        per_in = np.abs(d).reshape(d.shape[0], d.shape[1], -1).sum(axis=2) * bound  # [M, Cin]
        pieces, start, running = [], 0, np.zeros(d.shape[0])
        for c in range(d.shape[1]):
            if c > start and np.any(running + per_in[:, c] > EXACT):
                pieces.append(slice(start, c))
                start, running = c, np.zeros(d.shape[0])
            running = running + per_in[:, c]
        pieces.append(slice(start, d.shape[1]))
        return pieces

    @staticmethod
    def _taps(d: np.ndarray, bound: int) -> list[np.ndarray]:
        """Masks over a conv kernel's (input channel, tap) entries whose sums stay within
        +-EXACT: for kernels where one input channel alone sums beyond (an 8-bit 5x5)."""
        flat = np.abs(d).reshape(d.shape[0], -1) * bound  # [M, Cin * taps]
        pieces, running = [np.zeros(flat.shape[1], bool)], np.zeros(d.shape[0])
        for j in range(flat.shape[1]):
            if pieces[-1].any() and np.any(running + flat[:, j] > EXACT):
                pieces.append(np.zeros(flat.shape[1], bool))
                running = np.zeros(d.shape[0])
            pieces[-1][j] = True
            running = running + flat[:, j]
        return [mask.reshape(d.shape[1:]) for mask in pieces]

    def _piece(self, plane: str, d: np.ndarray, piece, bound: int, weight: int,
               module: str, conv: dict | None):
        """One exact QDQ GEMM: over a range of input channels (a slice) or over some of a
        kernel's entries (a mask; the others zero)."""
        if isinstance(piece, np.ndarray):
            return self._gemm_piece(plane, d * piece, bound, weight, module, conv)
        part = d[:, piece]
        x = plane
        if piece != slice(0, d.shape[1]):
            axis = 1 if conv else -1
            x = self.op("Slice", [plane, self.ints([piece.start], "starts"),
                                  self.ints([piece.stop], "ends"), self.ints([axis], "axes")],
                        module, "channels")
        return self._gemm_piece(x, part, bound, weight, module, conv)

    def _gemm_piece(self, x: str, part: np.ndarray, bound: int, weight: int, module: str,
                    conv: dict | None):
        x = self.as_uint8(x, module)
        one, zi8, zi16 = self.scalar(1.0), self.zero(np.int8), self.zero(np.int16)
        matrix = part if conv else np.ascontiguousarray(part.T)
        wq = self.unique(f"{module}.weight_digits")  # one per GEMM: ORT's layout pass for
        self.initializers.append(numpy_helper.from_array(matrix.astype(np.int8), wq))  # HTP
        wd = self.op("DequantizeLinear", [wq, one, zi8], module, "weight_dq")  # breaks shared
        if conv:
            y = self.op("Conv", [x, wd], module, "conv", **conv)
        else:
            y = self.op("MatMul", [x, wd], module, "matmul")
        q = self.op("QuantizeLinear", [y, one, zi16], module, "sum_i16")
        z = self.exact_int32(q, np.int16, module)
        pos = np.clip(part, 0, None).reshape(part.shape[0], -1).sum(axis=1) * bound
        neg = np.clip(part, None, 0).reshape(part.shape[0], -1).sum(axis=1) * bound
        if weight != 1:
            z = self.op("Mul", [z, self.i32(weight)], module, "digit")
        return z, neg * weight, pos * weight, (q if weight == 1 else None)


def weights_of(e: QnnEmitter, node: Node, index: int) -> tuple[np.ndarray, np.ndarray]:
    value = node.inputs[index]
    if value in e.weights:
        return e.weights[value]
    const = e.graph.constants.get(value)
    if const is not None and np.all(np.round(const) == const):
        return const.astype(np.int64), np.ones(const.shape[0])
    refuse(node, "has real-valued weights (not quantized): HTP would compute them in "
            "reduced float precision")
    raise AssertionError


def same_unit(p, q) -> bool:
    """Whether two values' units (each broadcast to its value's trailing axes) are equal."""
    try:
        shape = np.broadcast_shapes(np.shape(p), np.shape(q))
    except ValueError:
        return False
    return bool(np.array_equal(np.broadcast_to(p, shape), np.broadcast_to(q, shape)))
