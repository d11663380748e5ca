"""The fused DeepFM crossing kernel of the C++ core against a float64 numpy reference.

Inputs are fresh random data on every run; the seed is printed (shown by pytest on
failure) and is part of every assertion message, so a failure can be replayed with
RECSERVE_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from recserve import _core

F32_EPS = 2.0**-24  # unit roundoff of float32


def reference_crossing(
    user_scalar, user_sum, user_hidden, item_scalar, item_sum, item_hidden, rows
):
    """(linear float64 [N], hidden float64 [N, H1]) by the contract in crossing.h."""
    rows = np.arange(item_scalar.shape[0]) if rows is None else rows
    item_scalar, item_sum, item_hidden, user_sum, user_hidden = (
        np.asarray(a, dtype=np.float64)
        for a in (item_scalar, item_sum, item_hidden, user_sum, user_hidden)
    )
    linear = user_scalar + item_scalar[rows] + item_sum[rows] @ user_sum
    hidden = np.maximum(user_hidden + item_hidden[rows], 0.0)
    return linear, hidden


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("RECSERVE_TEST_SEED", np.random.SeedSequence().entropy))
    print(f"random seed: RECSERVE_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_inputs(rng: np.random.Generator, I: int, D: int, H1: int) -> dict:
    f32 = np.float32
    return dict(
        user_scalar=float(rng.standard_normal()),
        user_sum=rng.standard_normal(D).astype(f32),
        user_hidden=rng.standard_normal(H1).astype(f32),
        item_scalar=rng.standard_normal(I).astype(f32),
        item_sum=rng.standard_normal((I, D)).astype(f32),
        item_hidden=rng.standard_normal((I, H1)).astype(f32),
    )


def check_against_reference(inputs: dict, rows, context: str) -> None:
    linear, hidden = _core.crossing_deepfm(**inputs, rows=rows)
    ref_linear, ref_hidden = reference_crossing(**inputs, rows=rows)
    N = ref_linear.shape[0]
    H1 = inputs["user_hidden"].shape[0]
    assert linear.dtype == np.float32 and hidden.dtype == np.float32, context
    assert linear.shape == (N,) and hidden.shape == (N, H1), context
    # One float32 addition of two float32 values is correctly rounded: exact match.
    np.testing.assert_array_equal(hidden, ref_hidden.astype(np.float32), err_msg=context)
    # Dot product of D terms plus two scalars, each rounded: (D + 3) u Σ|terms|.
    r = np.arange(inputs["item_scalar"].shape[0]) if rows is None else rows
    D = inputs["user_sum"].shape[0]
    magnitude = (
        abs(np.float32(inputs["user_scalar"]))
        + np.abs(inputs["item_scalar"][r].astype(np.float64))
        + np.abs(inputs["item_sum"][r].astype(np.float64)) @ np.abs(inputs["user_sum"])
    )
    # user_scalar is a Python float rounded once to float32 by the binding.
    bound = (D + 3) * F32_EPS * magnitude + F32_EPS * abs(inputs["user_scalar"])
    error = np.abs(linear.astype(np.float64) - ref_linear)
    assert np.all(error <= bound), f"{context}: max error {error.max()} > bound"


@pytest.mark.parametrize("N", [0, 1, 7, 1023])
@pytest.mark.parametrize("D", [1, 3, 16, 17])
@pytest.mark.parametrize("H1", [1, 7, 64, 256])
def test_crossing_matches_reference(N, D, H1, rng, seed):
    I = 50
    inputs = make_inputs(rng, I, D, H1)
    rows = rng.integers(0, I, N)  # duplicates included
    check_against_reference(inputs, rows, f"seed={seed} N={N} D={D} H1={H1}")


@pytest.mark.parametrize("I", [0, 1, 1023])
def test_all_items_when_rows_is_none(I, rng, seed):
    inputs = make_inputs(rng, I, 17, 64)
    check_against_reference(inputs, None, f"seed={seed} I={I} rows=None")
    linear, hidden = _core.crossing_deepfm(**inputs)
    with_rows = _core.crossing_deepfm(**inputs, rows=np.arange(I))
    np.testing.assert_array_equal(linear, with_rows[0])
    np.testing.assert_array_equal(hidden, with_rows[1])


def test_relu_keeps_nan_and_zeroes_negatives():
    inputs = make_inputs(np.random.default_rng(0), 2, 3, 4)
    inputs["item_hidden"][:] = [[np.nan, -5.0, 5.0, -np.inf], [0.0, -0.0, np.inf, 1.0]]
    inputs["user_hidden"][:] = 0.0
    _, hidden = _core.crossing_deepfm(**inputs, rows=np.array([0, 1]))
    np.testing.assert_array_equal(hidden, [[np.nan, 0, 5, 0], [0, 0, np.inf, 1]])


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 5, 10**12, -(2**63)])
def test_out_of_range_row_raises_index_error_with_the_id(bad):
    inputs = make_inputs(np.random.default_rng(0), 5, 3, 4)
    with pytest.raises(IndexError, match=rf"rows\[2\] = {bad} is not an item row.*\[0, 5\)"):
        _core.crossing_deepfm(**inputs, rows=np.array([0, 4, bad, 1]))


def test_out_of_range_row_on_an_empty_catalog():
    inputs = make_inputs(np.random.default_rng(0), 0, 3, 4)
    with pytest.raises(IndexError, match=r"rows\[0\] = 0"):
        _core.crossing_deepfm(**inputs, rows=np.array([0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(user_sum=np.zeros(3, np.float64)), r"user_sum must have dtype float32.*np\.asarray"),
        (dict(item_hidden=np.zeros((5, 4), np.float16)), "item_hidden must have dtype float32"),
        (dict(rows=np.array([0, 1], np.int32)), "rows must have dtype int64"),
        (dict(rows=np.array([0.0])), "rows must have dtype int64"),
        (dict(user_sum=np.zeros((1, 3), np.float32)), r"user_sum must be a 1-D array \[D\]"),
        (dict(item_sum=np.zeros(15, np.float32)), r"item_sum must be a 2-D array \[I, D\]"),
        (dict(rows=np.zeros((2, 1), np.int64)), r"rows must be a 1-D array \[N\]"),
        (dict(item_sum=np.zeros((5, 4), np.float32)), r"item_sum's columns.*must be 3"),
        (dict(item_sum=np.zeros((6, 3), np.float32)), r"item_sum's rows.*must be 5"),
        (dict(item_hidden=np.zeros((5, 5), np.float32)), r"item_hidden's columns.*must be 4"),
        (dict(item_hidden=np.zeros((4, 4), np.float32)), r"item_hidden's rows.*must be 5"),
        (dict(item_scalar=np.zeros(4, np.float32)), r"item_sum's rows.*must be 4"),
        (
            dict(item_hidden=np.zeros((5, 8), np.float32)[:, ::2]),
            r"item_hidden must be C-contiguous.*np\.ascontiguousarray",
        ),
        (dict(rows=np.arange(4)[::2]), "rows must be C-contiguous"),
        (dict(user_hidden=np.zeros(8, np.float32)[::2]), "user_hidden must be C-contiguous"),
    ],
)
def test_bad_arguments_raise_value_error_with_the_fix(change, message):
    inputs = {**make_inputs(np.random.default_rng(0), 5, 3, 4), "rows": np.array([0, 1])}
    with pytest.raises(ValueError, match=message):
        _core.crossing_deepfm(**{**inputs, **change})


def test_misaligned_buffer_raises_value_error():
    raw = np.zeros(4 * 5 * 4 + 1, dtype=np.uint8)[1:].view(np.float32).reshape(5, 4)
    inputs = make_inputs(np.random.default_rng(0), 5, 3, 4)
    with pytest.raises(ValueError, match="item_hidden is not aligned"):
        _core.crossing_deepfm(**{**inputs, "item_hidden": raw})


def test_gil_is_released_during_compute(rng):
    """A Python thread ticks while a long call runs: it needs the GIL to tick."""
    inputs = make_inputs(rng, 2_000, 16, 256)
    rows = rng.integers(0, 2_000, 60_000)
    ticks: list[float] = []
    started = threading.Event()
    stop = threading.Event()

    def tick() -> None:
        started.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        for _ in range(5):  # a loaded machine may starve the thread once; not 5 times
            start = time.perf_counter()
            _core.crossing_deepfm(**inputs, rows=rows)
            end = time.perf_counter()
            low, high = start + 0.25 * (end - start), end - 0.25 * (end - start)
            if any(low < t < high for t in ticks):
                break
        else:
            pytest.fail("no Python thread ran during crossing_deepfm: GIL held?")
    finally:
        stop.set()
        thread.join()


def test_wide_deep_calls_with_no_sums(rng):
    """Wide&Deep has no FM term: D = 0, linear = user_scalar + item_scalar[r]."""
    inputs = make_inputs(rng, 9, 0, 5)
    check_against_reference(inputs, rng.integers(0, 9, 7), "D=0")


# --- DCN-v2 first cross layer ---------------------------------------------------------


def reference_dcn_first(user_x0, user_hidden, item_x0, item_hidden, rows):
    """(x0 float64 [N, D], x1 float64 [N, D]) by the contract in crossing.h."""
    rows = np.arange(item_x0.shape[0]) if rows is None else rows
    item_x0 = item_x0.astype(np.float64)[rows]
    x0 = np.concatenate(
        [np.broadcast_to(user_x0.astype(np.float64), (rows.size, user_x0.size)), item_x0], axis=1
    )
    t = (user_hidden[None, :] + item_hidden[rows]).astype(np.float32)  # one rounded addition
    return x0, x0 * t.astype(np.float64) + x0


def make_dcn_inputs(rng: np.random.Generator, I: int, DU: int, DI: int) -> dict:
    f32 = np.float32
    return dict(
        user_x0=rng.standard_normal(DU).astype(f32),
        user_hidden=rng.standard_normal(DU + DI).astype(f32),
        item_x0=rng.standard_normal((I, DI)).astype(f32),
        item_hidden=rng.standard_normal((I, DU + DI)).astype(f32),
    )


def check_dcn(inputs: dict, rows, context: str) -> None:
    x0, x1 = _core.crossing_dcn_first(**inputs, rows=rows)
    ref0, ref1 = reference_dcn_first(**inputs, rows=rows)
    assert x0.dtype == np.float32 and x1.dtype == np.float32, context
    assert x0.shape == ref0.shape and x1.shape == ref1.shape, context
    np.testing.assert_array_equal(x0, ref0.astype(np.float32), err_msg=context)
    # x0 * t + x0 from float32 x0 and t: at most two roundings (one with FMA).
    # |x0 t| <= |x1| + |x0|, so each rounding is at most u (|x1| + |x0|).
    bound = 2 * F32_EPS * (np.abs(ref1) + np.abs(ref0))
    error = np.abs(x1.astype(np.float64) - ref1)
    assert np.all(error <= bound), f"{context}: max error {error.max()}"


@pytest.mark.parametrize("N", [0, 1, 7, 1023])
@pytest.mark.parametrize(("DU", "DI"), [(0, 1), (1, 0), (3, 5), (16, 33), (48, 80)])
def test_dcn_first_matches_reference(N, DU, DI, rng, seed):
    I = 50
    inputs = make_dcn_inputs(rng, I, DU, DI)
    check_dcn(inputs, rng.integers(0, I, N), f"seed={seed} N={N} DU={DU} DI={DI}")


@pytest.mark.parametrize("I", [0, 1, 1023])
def test_dcn_first_all_items_when_rows_is_none(I, rng, seed):
    inputs = make_dcn_inputs(rng, I, 5, 11)
    check_dcn(inputs, None, f"seed={seed} I={I} rows=None")
    x0, x1 = _core.crossing_dcn_first(**inputs)
    with_rows = _core.crossing_dcn_first(**inputs, rows=np.arange(I))
    np.testing.assert_array_equal(x0, with_rows[0])
    np.testing.assert_array_equal(x1, with_rows[1])


@pytest.mark.parametrize("bad", [-1, 5, 10**12])
def test_dcn_first_out_of_range_row(bad):
    inputs = make_dcn_inputs(np.random.default_rng(0), 5, 2, 3)
    with pytest.raises(IndexError, match=rf"rows\[1\] = {bad} is not an item row.*\[0, 5\)"):
        _core.crossing_dcn_first(**inputs, rows=np.array([0, bad]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(user_x0=np.zeros(2, np.float64)), r"crossing_dcn_first: user_x0 must have dtype"),
        (dict(item_x0=np.zeros(15, np.float32)), r"item_x0 must be a 2-D array \[I, DI\]"),
        (dict(user_hidden=np.zeros(6, np.float32)), r"user_hidden's size D.*must be 5"),
        (dict(item_hidden=np.zeros((5, 6), np.float32)), r"item_hidden's columns.*must be 5"),
        (dict(item_hidden=np.zeros((4, 5), np.float32)), r"item_hidden's rows.*must be 5"),
        (dict(rows=np.array([0, 1], np.int32)), "rows must have dtype int64"),
        (dict(item_x0=np.zeros((5, 6), np.float32)[:, ::2]), "item_x0 must be C-contiguous"),
    ],
)
def test_dcn_first_bad_arguments(change, message):
    inputs = {**make_dcn_inputs(np.random.default_rng(0), 5, 2, 3), "rows": np.array([0, 1])}
    with pytest.raises(ValueError, match=message):
        _core.crossing_dcn_first(**{**inputs, **change})
