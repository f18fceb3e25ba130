"""The numpy array types the aggregation state is made of, and how its arrays grow."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


def grow(a: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    """``a`` with room for at least ``n`` entries, new ones set to ``fill`` (doubling, so
    adding series or groups one at a time costs amortised O(1))."""
    if a.shape[0] >= n:
        return a
    out = np.full(max(n, 2 * a.shape[0], 16), fill, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out
