"""Fixed point: floats to elements of the ring Z/2^64 and back, so that masks can be added.

A value x becomes ``round(x * 2**SCALE_BITS)`` as a two's-complement uint64; numpy's uint64
arithmetic wraps mod 2^64, so the masked sum of encodings is the encoding of the sum as long as
the true sum stays inside the signed range: ``|sum| * 2**SCALE_BITS < 2**63``. The encoder is told
how many encodings will be summed and refuses magnitudes that could break that (``max_abs``);
past it the sum would silently wrap to a wrong value, which no one downstream could notice.

Precision: each encoding is off by at most ``2**-(SCALE_BITS + 1)`` (about 1.2e-10), a sum of n
by at most n times that; the range per value is ``|x| < 2**(63 - SCALE_BITS) / n`` (2^31 / n).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SCALE_BITS = 32
SCALE = float(2**SCALE_BITS)

_RING_LIMIT = 2**63 - 1  # the largest |integer| a signed sum may reach


def max_abs(summands: int) -> float:
    """The magnitude each value must stay strictly below when ``summands`` encodings are added."""
    if type(summands) is not int or summands < 1:
        raise ValueError(f"summands must be a positive int, got {summands!r}")
    return 2.0 ** (63 - SCALE_BITS) / summands


def encode(values: npt.ArrayLike, summands: int = 1) -> npt.NDArray[np.uint64]:
    """``values`` (float16/32/64, any shape) as uint64 ring elements of the same shape, safe to
    add ``summands`` of. ``ValueError`` on a non-float dtype, NaN/Inf, or a magnitude that could
    overflow the ring (checked exactly on the rounded integers, not on a float estimate)."""
    x = np.asarray(values)
    if x.dtype.kind != "f":
        raise ValueError(f"fixed-point encoding takes float arrays, got dtype {x.dtype}")
    if summands < 1 or type(summands) is not int:
        raise ValueError(f"summands must be a positive int, got {summands!r}")
    x = x.astype(np.float64, copy=False)
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.uint64)
    peak = float(np.max(np.abs(x)))  # NaN propagates through max, Inf is the max
    if not math.isfinite(peak):
        raise ValueError("cannot encode NaN or Inf")
    # ceil(peak * 2^32) bounds every |rint(x * 2^32)|; the product by a power of two is exact
    if peak >= 2.0 ** (63 - SCALE_BITS) or math.ceil(peak * SCALE) * summands > _RING_LIMIT:
        raise ValueError(
            f"|value| up to {peak:g} would overflow the 64-bit ring when {summands} encodings are summed "
            f"at scale 2**{SCALE_BITS}: keep |value| < {max_abs(summands):g}"
        )
    return np.rint(x * SCALE).astype(np.int64).view(np.uint64)


def decode(total: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """A sum of encodings (of any number, each ``encode``d with that number as ``summands``)
    back to float64: read as two's complement, divide by the scale."""
    t = np.asarray(total)
    if t.dtype != np.uint64:
        raise ValueError(f"decode takes uint64 ring elements, got dtype {t.dtype}")
    return t.view(np.int64).astype(np.float64) / SCALE


__all__ = ["SCALE", "SCALE_BITS", "decode", "encode", "max_abs"]
