"""DDSketch: the relative-error guarantee and exact, order-free merging (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.aggregate.sketch import DDSketch

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = st.lists(st.one_of(finite, st.floats(-1e6, 1e6), st.integers(-1000, 1000).map(float)),
                  min_size=1, max_size=300)
alphas = st.sampled_from([0.005, 0.01, 0.02, 0.05])
phis = st.floats(0, 1)


def sketch_of(vals: list[float], alpha: float = 0.01) -> DDSketch:
    sk = DDSketch(alpha)
    sk.add_many(np.asarray(vals, dtype=np.float64))
    return sk


@settings(max_examples=300)
@given(values, alphas, phis)
def test_quantile_within_relative_error(vals: list[float], alpha: float, q: float) -> None:
    sk = sketch_of(vals, alpha)
    exact = sorted(vals)[math.floor(q * (len(vals) - 1))]
    est = sk.quantile(q)
    # the stated bound, plus float rounding of the bucket arithmetic
    assert abs(est - exact) <= alpha * abs(exact) * (1 + 1e-9) + 1e-300


@given(values, values, values)
def test_merge_is_associative_and_commutative(a: list[float], b: list[float],
                                              c: list[float]) -> None:
    sa, sb, sc = sketch_of(a), sketch_of(b), sketch_of(c)
    left = sa.copy()
    left.merge(sb)
    left.merge(sc)          # (a + b) + c
    bc = sb.copy()
    bc.merge(sc)
    right = sa.copy()
    right.merge(bc)         # a + (b + c)
    swapped = sc.copy()
    swapped.merge(sa)
    swapped.merge(sb)       # (c + a) + b
    assert left == right == swapped
    # and merging equals sketching the concatenation
    assert left == sketch_of(a + b + c)


@given(values)
def test_state_roundtrip(vals: list[float]) -> None:
    sk = sketch_of(vals)
    assert DDSketch.from_state(sk.to_state()) == sk


def test_non_finite_values_are_skipped_and_counted() -> None:
    sk = sketch_of([1.0, math.nan, math.inf, -math.inf, 2.0])
    assert (sk.count, sk.skipped) == (2, 3)
    assert sk.quantile(1) == 2.0
    assert math.isnan(DDSketch().quantile(0.5))


def test_extremes_exact_and_bad_arguments() -> None:
    sk = sketch_of([0.0, -5.0, 3.0, 1e-320])
    assert sk.quantile(0) == -5.0 and sk.quantile(1) == 3.0
    assert sk.quantile(0.5) == 0.0  # zero and the subnormal share the zero bucket
    with pytest.raises(ValueError, match="between 0 and 1"):
        sk.quantile(1.5)
    with pytest.raises(ValueError, match="cannot merge"):
        sk.merge(DDSketch(0.02))
    with pytest.raises(ValueError, match="between 0 and 1"):
        DDSketch(0)


def test_bucket_count_stays_small() -> None:
    rng = np.random.default_rng(1)
    sk = DDSketch(0.01)
    sk.add_many(rng.lognormal(0, 3, 100_000))
    assert sk.buckets < 2000
