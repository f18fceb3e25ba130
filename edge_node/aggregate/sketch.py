"""A mergeable quantile sketch with a relative-error guarantee (DDSketch, sans-IO).

Values go into logarithmic buckets: bucket ``i`` holds the values ``v`` with
``gamma**(i-1) < |v| <= gamma**i``, ``gamma = (1 + a) / (1 - a)``, positives and negatives in
separate stores, exact zeros (and subnormals) in a zero count. A bucket answers with
``2 * gamma**i / (gamma + 1)``, which is within a relative ``a`` of every value the bucket can
hold. So for any quantile ``q`` the estimate ``e`` satisfies ``|e - x| <= a * |x|`` where ``x``
is the exact lower quantile (the value of rank ``floor(q * (n - 1))`` in the sorted input), for
every finite input, however skewed.

Two sketches of the same ``a`` merge by adding bucket counts: merging is exact, associative
and commutative, so per-device sketches roll up into per-site ones, and window sketches into
longer windows, with the same error bound. Non-finite values (NaN, infinities) are not
bucketed: they are counted in ``skipped``.

Memory: one counter per occupied bucket. With ``a = 0.01`` a bucket spans 2%, so six decades
of values take ~700 buckets at most; the whole float range at most ~70k.

Reference: Masson, Rim, Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with
Relative-Error Guarantees", VLDB 2019.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_RELATIVE_ERROR = 0.01
MIN_NORMAL = 2.2250738585072014e-308

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def bucket_keys(values: F64, log_gamma: float) -> tuple[I64, npt.NDArray[np.bool_],
                                                        npt.NDArray[np.bool_]]:
    """Bucket index of each value, whether it is negative, and whether it is bucketable.

    Zeros (and subnormals) get index 0 with ``negative`` False and must be counted as zeros by
    the caller: see :meth:`DDSketch.add_many`.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.abs(values)
        ok = np.isfinite(values)
        big = ok & (mag >= MIN_NORMAL)
        keys = np.zeros(values.shape[0], dtype=np.int64)
        keys[big] = np.ceil(np.log(mag[big]) / log_gamma).astype(np.int64)
    return keys, values < 0, ok


class DDSketch:
    """Quantiles of a stream within a relative error ``relative_error``."""

    __slots__ = (
        "_log_mid",
        "alpha",
        "count",
        "gamma",
        "log_gamma",
        "max",
        "min",
        "neg",
        "pos",
        "skipped",
        "zero",
    )

    def __init__(self, relative_error: float = DEFAULT_RELATIVE_ERROR) -> None:
        if not 0 < relative_error < 1:
            raise ValueError("relative_error must be between 0 and 1")
        self.alpha = relative_error
        self.gamma = (1 + relative_error) / (1 - relative_error)
        self.log_gamma = math.log(self.gamma)
        self._log_mid = math.log(2.0 / (self.gamma + 1.0))
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.skipped = 0
        self.min = math.inf
        self.max = -math.inf

    # -- adding -----------------------------------------------------------------------------

    def add(self, value: float) -> None:
        self.add_many(np.asarray([value], dtype=np.float64))

    def add_many(self, values: F64) -> None:
        keys, negative, ok = bucket_keys(values, self.log_gamma)
        self.add_keys(keys, negative, ok, values)

    def add_keys(self, keys: I64, negative: npt.NDArray[np.bool_], ok: npt.NDArray[np.bool_],
                 values: F64) -> None:
        """Add values whose keys :func:`bucket_keys` computed (so callers can vectorise)."""
        n_ok = int(ok.sum())
        self.skipped += int(values.shape[0]) - n_ok
        if not n_ok:
            return
        v = values[ok]
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        self.count += n_ok
        mag = np.abs(v)
        zero = mag < MIN_NORMAL
        self.zero += int(zero.sum())
        k, neg = keys[ok][~zero], negative[ok][~zero]
        for store, sel in ((self.pos, ~neg), (self.neg, neg)):
            if not sel.any():
                continue
            uk, cnt = np.unique(k[sel], return_counts=True)
            get = store.get
            for key, c in zip(uk.tolist(), cnt.tolist(), strict=True):
                store[key] = get(key, 0) + c

    # -- combining --------------------------------------------------------------------------

    def merge(self, other: DDSketch) -> None:
        """Add ``other``'s counts to this sketch (both must have the same relative error)."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of relative error {self.alpha} and "
                             f"{other.alpha}")
        for store, src in ((self.pos, other.pos), (self.neg, other.neg)):
            get = store.get
            for k, c in src.items():
                store[k] = get(k, 0) + c
        self.zero += other.zero
        self.count += other.count
        self.skipped += other.skipped
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> DDSketch:
        out = DDSketch(self.alpha)
        out.merge(self)
        return out

    # -- answering --------------------------------------------------------------------------

    def _value(self, key: int) -> float:
        try:
            return math.exp(key * self.log_gamma + self._log_mid)
        except OverflowError:  # the top bucket of the float range: clamped to max by quantile()
            return math.inf

    def quantile(self, q: float) -> float:
        """The estimated value of rank ``floor(q * (count - 1))``; NaN when empty."""
        if not 0 <= q <= 1:
            raise ValueError("q must be between 0 and 1")
        if self.count == 0:
            return math.nan
        rank = math.floor(q * (self.count - 1))
        if rank == 0:
            return self.min  # the extremes are known exactly
        if rank == self.count - 1:
            return self.max
        seen = 0
        est: float | None = None
        for key in sorted(self.neg, reverse=True):
            seen += self.neg[key]
            if seen > rank:
                est = -self._value(key)
                break
        if est is None:
            seen += self.zero
            if seen > rank:
                est = 0.0
        if est is None:
            for key in sorted(self.pos):
                seen += self.pos[key]
                if seen > rank:
                    est = self._value(key)
                    break
        if est is None:  # pragma: no cover - counts always add up to count
            est = self.max
        # the extremes are known exactly: never answer outside them
        return min(max(est, self.min), self.max)

    def quantiles(self, qs: list[float]) -> list[float]:
        return [self.quantile(q) for q in qs]

    @property
    def buckets(self) -> int:
        return len(self.pos) + len(self.neg) + (1 if self.zero else 0)

    # -- persistence ------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"a": self.alpha, "z": self.zero, "n": self.count, "s": self.skipped,
                "lo": self.min, "hi": self.max,
                "p": [list(self.pos.keys()), list(self.pos.values())],
                "m": [list(self.neg.keys()), list(self.neg.values())]}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> DDSketch:
        sk = cls(float(d["a"]))
        sk.zero, sk.count, sk.skipped = int(d["z"]), int(d["n"]), int(d["s"])
        sk.min, sk.max = float(d["lo"]), float(d["hi"])
        sk.pos = dict(zip(d["p"][0], d["p"][1], strict=True))
        sk.neg = dict(zip(d["m"][0], d["m"][1], strict=True))
        return sk

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DDSketch):
            return NotImplemented
        return (self.alpha, self.zero, self.count, self.skipped, self.min, self.max, self.pos,
                self.neg) == (other.alpha, other.zero, other.count, other.skipped, other.min,
                              other.max, other.pos, other.neg)

    __hash__ = None  # type: ignore[assignment]
