"""Top-k kernels of the C++ core against float64 numpy references.

Inputs are fresh random data on every run; the seed is printed (shown by pytest on
failure) and is part of every assertion message, so a failure can be replayed with
RECSERVE_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from topk_reference import (
    assert_topk,
    inner_product_tolerance,
    make_exclude,
    make_scores,
    reference_scores_inner_product,
)

import recserve.core.kernels
from recserve import _core
from recserve.core.kernels import topk_inner_product, topk_scores

# --- inputs ----------------------------------------------------------------------------


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("RECSERVE_TEST_SEED", np.random.SeedSequence().entropy))
    print(f"random seed: RECSERVE_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def k_value(k: int | str, N: int) -> int:
    return N + 3 if k == "N+3" else int(k)


SIZES_N = [0, 1, 7, 17, 1000]
SIZES_D = [1, 3, 16, 97]
SIZES_B = [0, 1, 3, 64]
KS = [0, 1, 5, "N+3"]
EXCLUDES = ["none", "random", "all"]


# --- against the references ------------------------------------------------------------


@pytest.mark.parametrize("exclude_kind", EXCLUDES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("B", SIZES_B)
@pytest.mark.parametrize("N", SIZES_N)
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_topk_scores_matches_reference(kind, N, B, k, exclude_kind, rng, seed):
    k = k_value(k, N)
    scores = make_scores(kind, B, N, rng)
    exclude = make_exclude(exclude_kind, B, N, rng)
    values, indices = topk_scores(scores, k, exclude, backend="cpu")
    context = f"seed={seed} kind={kind} N={N} B={B} k={k} exclude={exclude_kind}"
    assert_topk(values, indices, scores, k, exclude, 0.0, context, exact=True)


@pytest.mark.parametrize("exclude_kind", EXCLUDES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("B", SIZES_B)
@pytest.mark.parametrize("D", SIZES_D)
@pytest.mark.parametrize("N", SIZES_N)
def test_topk_inner_product_matches_reference(N, D, B, k, exclude_kind, rng, seed):
    k = k_value(k, N)
    queries = rng.standard_normal((B, D)).astype(np.float32)
    items = rng.standard_normal((N, D)).astype(np.float32)
    exclude = make_exclude(exclude_kind, B, N, rng)
    values, indices = topk_inner_product(queries, items, k, exclude, backend="cpu")
    context = f"seed={seed} N={N} D={D} B={B} k={k} exclude={exclude_kind}"
    scores = reference_scores_inner_product(queries, items)
    tol = inner_product_tolerance(queries, items)
    assert_topk(values, indices, scores, k, exclude, tol, context)


def test_ties_go_to_the_smaller_index():
    scores = np.array([[1, 2, 2, 0, 2, 1]], dtype=np.float32)
    values, indices = topk_scores(scores, 4)
    np.testing.assert_array_equal(indices, [[1, 2, 4, 0]])
    np.testing.assert_array_equal(values, [[2, 2, 2, 1]])
    items = np.array([[1.0], [3.0], [3.0], [2.0]], dtype=np.float32)
    values, indices = topk_inner_product(np.ones(1, np.float32), items, 3)
    np.testing.assert_array_equal(indices, [1, 2, 3])


def test_nan_is_never_selected_and_pads():
    scores = np.array([[np.nan, 1.0, np.nan, -np.inf, np.nan]], dtype=np.float32)
    values, indices = topk_scores(scores, 4)
    np.testing.assert_array_equal(indices, [[1, 3, -1, -1]])
    np.testing.assert_array_equal(values, [[1.0, -np.inf, -np.inf, -np.inf]])
    items = np.array([[np.nan, 0.0], [1.0, 1.0], [0.0, np.inf], [2.0, 0.0]], np.float32)
    query = np.array([1.0, 0.0], np.float32)  # item 2: 0 * inf = NaN
    values, indices = topk_inner_product(query, items, 4)
    np.testing.assert_array_equal(indices, [3, 1, -1, -1])
    np.testing.assert_array_equal(values, [2.0, 1.0, -np.inf, -np.inf])


def test_one_dimensional_input_gives_one_dimensional_result(rng):
    queries = rng.standard_normal((1, 8)).astype(np.float32)
    items = rng.standard_normal((50, 8)).astype(np.float32)
    values_2d, indices_2d = topk_inner_product(queries, items, 5, [[3, 4]])
    values_1d, indices_1d = topk_inner_product(queries[0], items, 5, [[3, 4]])
    assert values_1d.shape == (5,)
    assert indices_1d.shape == (5,)
    np.testing.assert_array_equal(values_1d, values_2d[0])
    np.testing.assert_array_equal(indices_1d, indices_2d[0])
    values, indices = topk_scores(queries[0], 3)
    assert values.shape == indices.shape == (3,)


def test_facade_converts_lists_float64_and_strided_input(rng):
    queries = rng.standard_normal((4, 16))  # float64
    items = rng.standard_normal((16, 100))[:, ::1].T  # not C-contiguous
    assert not items.flags.c_contiguous
    values, indices = topk_inner_product(queries, items, 7)
    expected = topk_inner_product(
        queries.astype(np.float32), np.ascontiguousarray(items, np.float32), 7
    )
    np.testing.assert_array_equal(values, expected[0])
    np.testing.assert_array_equal(indices, expected[1])
    values, indices = topk_scores([[0.5, 2.0, 1.0]], 2)
    np.testing.assert_array_equal(indices, [[1, 2]])


@pytest.mark.parametrize("num_threads", [2, 3, 8])
def test_threads_give_the_same_result(num_threads, rng):
    B, N, D = 37, 3000, 24
    queries = rng.standard_normal((B, D)).astype(np.float32)
    items = rng.standard_normal((N, D)).astype(np.float32)
    exclude = make_exclude("random", B, N, rng)
    one = topk_inner_product(queries, items, 20, exclude, num_threads=1, backend="cpu")
    many = topk_inner_product(queries, items, 20, exclude, num_threads=num_threads,
                              backend="cpu")  # fmt: skip
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    scores = make_scores("ties", B, N, rng)
    one = topk_scores(scores, 20, exclude, num_threads=1, backend="cpu")
    many = topk_scores(scores, 20, exclude, num_threads=num_threads, backend="cpu")
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


def test_gil_is_released_during_compute(rng):
    """A Python thread ticks while a long call runs: it needs the GIL to tick."""
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    items = rng.standard_normal((200_000, 32)).astype(np.float32)
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
            topk_inner_product(queries, items, 10, backend="cpu")
            end = time.perf_counter()
            # Without the GIL released the thread could only tick at the edges of the
            # call (one switch interval, 5 ms); ask for a tick in its middle half.
            low, high = start + 0.25 * (end - start), end - 0.25 * (end - start)
            if any(low < t < high for t in ticks):
                break
        else:
            pytest.fail("no Python thread ran during topk_inner_product: GIL held?")
    finally:
        stop.set()
        thread.join()


# --- every SIMD level, float32 and bfloat16, 1 and 2 threads --------------------------

LEVELS = list(_core.SUPPORTED_SIMD_LEVELS)


def core_topk(queries, items, k, exclude, *, level, num_threads, bf16):
    """_core.topk_inner_product(_bf16) at a forced SIMD level (the private override)."""
    indptr, ids = recserve.core.kernels._exclude_csr(exclude, queries.shape[0])
    if bf16:
        matrix = recserve.core.kernels.ItemMatrix(items)
        return _core.topk_inner_product_bf16(
            queries, matrix.float32, matrix.bfloat16, matrix.norms, k, indptr, ids,
            num_threads, level,
        )  # fmt: skip
    return _core.topk_inner_product(queries, items, k, indptr, ids, num_threads, level)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("N", "D", "B", "k", "exclude_kind"),
    [
        (0, 3, 1, 5, "none"),
        (1, 1, 1, 5, "none"),
        (7, 15, 3, 5, "random"),
        (1023, 17, 1, 10, "random"),
        (1023, 33, 9, 7, "none"),
        (50, 64, 2, 100, "random"),  # N < k
        (40, 97, 3, 5, "all"),
        (2000, 64, 64, 10, "random"),
        (3000, 3, 1, 50, "none"),
    ],
)
def test_every_level_matches_reference(level, N, D, B, k, exclude_kind, rng, seed):
    queries = rng.standard_normal((B, D)).astype(np.float32)
    items = rng.standard_normal((N, D)).astype(np.float32)
    exclude = make_exclude(exclude_kind, B, N, rng)
    scores = reference_scores_inner_product(queries, items)
    tol = inner_product_tolerance(queries, items)
    results = {}
    for bf16 in (False, True):
        for threads in (1, 2):
            values, indices = core_topk(
                queries, items, k, exclude, level=level, num_threads=threads, bf16=bf16
            )
            context = (
                f"seed={seed} level={level} bf16={bf16} threads={threads} N={N} D={D} "
                f"B={B} k={k} exclude={exclude_kind}"
            )
            assert_topk(values, indices, scores, k, exclude, tol, context)
            results[bf16, threads] = values, indices
    # One canonical float32 dot product per level: threads and bfloat16 change nothing.
    for key, (values, indices) in results.items():
        np.testing.assert_array_equal(values, results[False, 1][0], err_msg=str(key))
        np.testing.assert_array_equal(indices, results[False, 1][1], err_msg=str(key))


@pytest.mark.parametrize("level", LEVELS)
def test_batch_size_does_not_change_scores_within_a_path(level, rng):
    """Per path (rows below topk_small_batch, packed from it), a query's result does not
    depend on the batch it is in. Across paths only near-ties may differ."""
    small = _core.topk_small_batch(level)
    assert small >= 2
    queries = rng.standard_normal((small + 5, 33)).astype(np.float32)
    items = rng.standard_normal((500, 33)).astype(np.float32)
    rows = _core.topk_inner_product(queries[: small - 1], items, 9, simd_level=level)
    for b in range(small - 1):
        single = _core.topk_inner_product(queries[b : b + 1], items, 9, simd_level=level)
        np.testing.assert_array_equal(single[0][0], rows[0][b])
        np.testing.assert_array_equal(single[1][0], rows[1][b])
    packed = _core.topk_inner_product(queries, items, 9, simd_level=level)
    exactly = _core.topk_inner_product(queries[:small], items, 9, simd_level=level)
    np.testing.assert_array_equal(exactly[0], packed[0][:small])
    np.testing.assert_array_equal(exactly[1], packed[1][:small])
    # Both paths are correct float32 products: the values agree to rounding.
    tol = inner_product_tolerance(queries[: small - 1], items)[:, None]
    assert (np.abs(rows[0] - packed[0][: small - 1]) <= 2 * tol).all()


SMALL_B_CASES = [  # (N, k, exclude): empty, tiny, odd, N < k, all excluded
    (0, 5, "none"),
    (1, 5, "random"),
    (7, 3, "none"),
    (1023, 10, "random"),
    (50, 100, "random"),
    (40, 5, "all"),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("D", [1, 3, 15, 17, 33, 64, 97])
@pytest.mark.parametrize("B", [1, 2, "small-1"])
def test_small_batch_path_every_level(level, D, B, rng, seed):
    """The rows path (B < topk_small_batch) at every level: awkward N, d tails, N < k,
    everything excluded; float32 and bfloat16, 1 and 2 threads, identical results."""
    B = _core.topk_small_batch(level) - 1 if B == "small-1" else B
    for N, k, exclude_kind in SMALL_B_CASES:
        queries = rng.standard_normal((B, D)).astype(np.float32)
        items = rng.standard_normal((N, D)).astype(np.float32)
        exclude = make_exclude(exclude_kind, B, N, rng)
        scores = reference_scores_inner_product(queries, items)
        tol = inner_product_tolerance(queries, items)
        first = None
        for bf16 in (False, True):
            for threads in (1, 2):
                values, indices = core_topk(
                    queries, items, k, exclude, level=level, num_threads=threads, bf16=bf16
                )
                context = (
                    f"seed={seed} level={level} bf16={bf16} threads={threads} N={N} D={D} "
                    f"B={B} k={k} exclude={exclude_kind}"
                )
                assert_topk(values, indices, scores, k, exclude, tol, context)
                if first is None:
                    first = values, indices
                np.testing.assert_array_equal(values, first[0], err_msg=context)
                np.testing.assert_array_equal(indices, first[1], err_msg=context)


def test_exclusion_is_copied_before_the_gil_is_released(rng):
    """Another thread scribbling over the caller's exclude arrays during calls: each call
    either sees the list as it was when called (and is then right) or rejects it."""
    queries = rng.standard_normal((2, 16)).astype(np.float32)
    items = rng.standard_normal((100_000, 16)).astype(np.float32)
    indptr = np.array([0, 3, 5], np.int64)
    ids = np.array([4, 9, 2, 7, 7], np.int64)
    expected = _core.topk_inner_product(queries, items, 10, indptr, ids)
    stop = threading.Event()

    def scribble() -> None:
        garbage = np.array([0, 10**12, -(10**12)], np.int64)
        while not stop.is_set():
            saved = indptr.copy()
            indptr[1:] = garbage[1:]
            indptr[:] = saved

    thread = threading.Thread(target=scribble, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            try:
                got = _core.topk_inner_product(queries, items, 10, indptr, ids)
            except ValueError:
                continue
            np.testing.assert_array_equal(got[1], expected[1])
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_topk_scores_every_level(level, kind, rng, seed):
    scores = make_scores(kind, 3, 1023, rng)
    exclude = make_exclude("random", 3, 1023, rng)
    indptr, ids = recserve.core.kernels._exclude_csr(exclude, 3)
    for k in (1, 10, 2000):
        values, indices = _core.topk_scores(scores, k, indptr, ids, 2, level)
        context = f"seed={seed} level={level} kind={kind} k={k}"
        assert_topk(values, indices, scores, k, exclude, 0.0, context, exact=True)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_equals_float32_on_adversarial_near_ties(level, threads, rng, seed):
    """Items that bfloat16 cannot tell apart (differences below its resolution): the
    exact re-scoring must still return the float32 kernel's ids and values."""
    B, N, D, k = 3, 4000, 24, 20
    queries = rng.standard_normal((B, D)).astype(np.float32)
    base = rng.standard_normal((40, D)).astype(np.float32)
    items = base[rng.integers(0, 40, size=N)]
    items = items + rng.standard_normal((N, D)).astype(np.float32) * 1e-4  # below 2**-8
    items[::7] = items[3]  # exact duplicates: ties go to the lower id
    items = items.astype(np.float32)
    exclude = make_exclude("random", B, N, rng)
    f32 = core_topk(queries, items, k, exclude, level=level, num_threads=threads, bf16=False)
    bf16 = core_topk(queries, items, k, exclude, level=level, num_threads=threads, bf16=True)
    context = f"seed={seed} level={level} threads={threads}"
    np.testing.assert_array_equal(bf16[1], f32[1], err_msg=context)
    np.testing.assert_array_equal(bf16[0], f32[0], err_msg=context)


def test_bf16_handles_non_finite_and_huge_items(rng):
    items = rng.standard_normal((300, 16)).astype(np.float32)
    items[5, 3] = np.nan
    items[7, 0] = np.inf
    items[11] *= np.float32(3e37)  # bfloat16 rounding alone could overflow here
    queries = rng.standard_normal((2, 16)).astype(np.float32)
    queries[1, 2] = np.inf  # a non-finite query falls back to the float32 scan
    matrix = recserve.core.kernels.ItemMatrix(items)
    for level in LEVELS:
        f32 = _core.topk_inner_product(queries, items, 30, simd_level=level)
        bf16 = _core.topk_inner_product_bf16(
            queries, items, matrix.bfloat16, matrix.norms, 30, simd_level=level
        )
        np.testing.assert_array_equal(bf16[1], f32[1])
        np.testing.assert_array_equal(bf16[0], f32[0])


def test_item_matrix_facade(rng):
    items = rng.standard_normal((100, 8)).astype(np.float32)
    matrix = recserve.core.kernels.ItemMatrix(items)
    assert matrix.shape == (100, 8)
    assert matrix.bfloat16.dtype == np.uint16
    assert "bfloat16" in repr(matrix)
    # round to nearest even: 1 + 2**-8 is a tie between 1 and 1 + 2**-7 -> 1
    bits = _core.to_bfloat16(np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, np.nan], np.float32))
    assert bits[0] == bits[1] == 0x3F80
    assert bits[2] == 0x3F82
    assert (bits[3] & 0x7F80) == 0x7F80 and (bits[3] & 0x7F) != 0
    norms = _core.row_norms(items)
    assert (norms.astype(np.float64) >= np.linalg.norm(items.astype(np.float64), axis=1)).all()
    query = rng.standard_normal(8)
    plain = topk_inner_product(query, items, 5, [[1, 2]])
    fast = topk_inner_product(query, matrix, 5, [[1, 2]])
    np.testing.assert_array_equal(plain[1], fast[1])
    np.testing.assert_array_equal(plain[0], fast[0])
    float_only = recserve.core.kernels.ItemMatrix(items, bfloat16=False)
    np.testing.assert_array_equal(topk_inner_product(query, float_only, 5, [[1, 2]])[1], plain[1])


def test_bf16_bad_arguments_raise_value_error(rng):
    items = rng.standard_normal((10, 4)).astype(np.float32)
    matrix = recserve.core.kernels.ItemMatrix(items)
    query = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="same number of rows"):
        _core.topk_inner_product_bf16(query, items, matrix.bfloat16[:5], matrix.norms, 1)
    with pytest.raises(ValueError, match="dtype uint16"):
        _core.topk_inner_product_bf16(query, items, items, matrix.norms, 1)
    with pytest.raises(ValueError, match="same dimension D"):
        _core.topk_inner_product_bf16(np.zeros((1, 3), np.float32), items, matrix.bfloat16,
                                      matrix.norms, 1)  # fmt: skip
    with pytest.raises(IndexError, match="exclude id 10"):
        topk_inner_product(query, matrix, 1, [[10]])


def test_simd_level_override_and_errors():
    assert recserve.core.kernels.SIMD_LEVEL in recserve.core.kernels.SUPPORTED_SIMD_LEVELS
    assert recserve.core.kernels.SUPPORTED_SIMD_LEVELS[0] == "scalar"
    best = recserve.core.kernels.SUPPORTED_SIMD_LEVELS[-1]
    assert best == recserve.core.kernels.SIMD_LEVEL or "RECSERVE_SIMD_LEVEL" in os.environ
    with pytest.raises(ValueError, match="unknown SIMD level 'sse9'"):
        _core.topk_scores(np.zeros((1, 3), np.float32), 1, simd_level="sse9")


def _import_with_level(level: str) -> subprocess.CompletedProcess:
    code = "from recserve.core import kernels; print(kernels.SIMD_LEVEL)"
    env = dict(os.environ, RECSERVE_SIMD_LEVEL=level)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_environment_variable_forces_the_level():
    forced = _import_with_level("scalar")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == "scalar"
    bad = _import_with_level("sse9")
    assert bad.returncode != 0
    assert "RECSERVE_SIMD_LEVEL" in bad.stderr and "unknown SIMD level" in bad.stderr
    missing = [lv for lv in ("avx2", "avx512") if lv not in LEVELS]
    if missing:  # a level this CPU lacks is refused, naming the supported ones
        refused = _import_with_level(missing[0])
        assert refused.returncode != 0
        assert "does not support" in refused.stderr


# --- errors ----------------------------------------------------------------------------


def test_wrong_ndim_raises_value_error():
    with pytest.raises(ValueError, match="scores must be 1-D or 2-D"):
        topk_scores(np.zeros((2, 3, 4)), 1)
    with pytest.raises(ValueError, match="queries must be 1-D or 2-D"):
        topk_inner_product(np.zeros((2, 3, 4)), np.zeros((5, 4)), 1)
    with pytest.raises(ValueError, match="items must be 2-D"):
        topk_inner_product(np.zeros((2, 4)), np.zeros(4), 1)
    with pytest.raises(ValueError, match=r"scores must be a 2-D array \[B, N\]"):
        _core.topk_scores(np.zeros(4, np.float32), 1)
    with pytest.raises(ValueError, match="items must be a 2-D array"):
        _core.topk_inner_product(np.zeros((1, 4), np.float32), np.zeros(4, np.float32), 1)


def test_dimension_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="same dimension D"):
        topk_inner_product(np.zeros((2, 4)), np.zeros((5, 3)), 1)


def test_negative_k_raises_value_error():
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_scores(np.zeros((2, 4)), -1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_inner_product(np.zeros((2, 4)), np.zeros((5, 4)), -1)


def test_num_threads_below_one_raises_value_error():
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        topk_scores(np.zeros((2, 4)), 1, num_threads=0)


def test_exclude_id_out_of_range_raises_index_error():
    with pytest.raises(IndexError, match=r"exclude id 5 \(query row 1\).*N=5"):
        topk_scores(np.zeros((2, 5)), 1, [[0], [1, 5]])
    with pytest.raises(IndexError, match=r"exclude id -1 .*N=3"):
        topk_inner_product(np.zeros((1, 2)), np.zeros((3, 2)), 1, [[-1]])
    with pytest.raises(IndexError, match="N=0"):
        topk_scores(np.zeros((1, 0)), 1, [[0]])


def test_bad_exclude_lists_raise_value_error():
    with pytest.raises(ValueError, match="one id list per query row"):
        topk_scores(np.zeros((2, 5)), 1, [[0]])
    with pytest.raises(ValueError, match="integer item indices"):
        topk_scores(np.zeros((1, 5)), 1, [[1.5]])
    with pytest.raises(ValueError, match="integer item indices"):
        topk_scores(np.zeros((1, 5)), 1, [[[1]]])


@pytest.mark.parametrize(
    ("indptr", "ids", "message"),
    [
        ([0, 1], [0], r"B \+ 1 = 3 entries"),
        ([1, 1, 1], [0], r"exclude_indptr\[0\] must be 0"),
        ([0, 2, 1], [0, 1], "non-decreasing"),
        ([0, 1, 1], [0, 1], r"must equal len\(exclude_ids\)=2"),
        ([0, 1, 3], [0, 1], r"must equal len\(exclude_ids\)=2"),
    ],
)
def test_bad_indptr_raises_value_error(indptr, ids, message):
    scores = np.zeros((2, 4), np.float32)
    indptr = np.asarray(indptr, np.int64)
    ids = np.asarray(ids, np.int64)
    with pytest.raises(ValueError, match=message):
        _core.topk_scores(scores, 1, indptr, ids)
    with pytest.raises(ValueError, match=message):
        _core.topk_inner_product(scores, scores, 1, indptr, ids)


def test_raw_core_rejects_what_the_facade_would_convert():
    scores = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"C-contiguous.*np\.ascontiguousarray"):
        _core.topk_scores(scores[:, ::2], 1)
    with pytest.raises(ValueError, match=r"C-contiguous.*np\.ascontiguousarray"):
        _core.topk_inner_product(scores, np.asfortranarray(np.zeros((5, 6), np.float32)), 1)
    with pytest.raises(ValueError, match="dtype float32"):
        _core.topk_scores(scores.astype(np.float64), 1)
    with pytest.raises(ValueError, match="dtype int64"):
        _core.topk_scores(scores, 1, np.zeros(5, np.int32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="both exclude_indptr and exclude_ids"):
        _core.topk_scores(scores, 1, np.zeros(5, np.int64))
    unaligned = np.zeros(4 * 6 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(4, 6)
    with pytest.raises(ValueError, match="aligned"):
        _core.topk_scores(unaligned, 1)


def test_backend_choice():
    assert recserve.core.kernels.available_backends()[0] == "cpu"
    assert isinstance(recserve.core.kernels.SIMD_LEVEL, str)
    assert _core.__version__
    with pytest.raises(ValueError, match="backend must be"):
        topk_scores(np.zeros((1, 3)), 1, backend="tpu")  # type: ignore[arg-type]
    if not recserve.core.kernels.HAS_CUDA:
        assert "cuda" not in recserve.core.kernels.available_backends()
        with pytest.raises(RuntimeError, match="built without CUDA"):
            topk_scores(np.zeros((1, 3)), 1, backend="cuda")


# --- CUDA against the CPU path ---------------------------------------------------------


@pytest.mark.skipif(
    not recserve.core.kernels.HAS_CUDA,
    reason="built without CUDA; GPU tests compare CUDA against the CPU path",
)
class TestCuda:
    @pytest.fixture(autouse=True)
    def _needs_gpu(self) -> None:
        if "cuda" not in recserve.core.kernels.available_backends():
            pytest.skip("recserve has CUDA kernels but no GPU (or CUDA PyTorch) is usable")

    @pytest.mark.parametrize("exclude_kind", EXCLUDES)
    @pytest.mark.parametrize(
        ("B", "N", "k"), [(1, 0, 3), (3, 17, 20), (64, 1000, 5), (5, 5000, 1024), (2, 100_000, 100)]
    )
    def test_topk_scores_equals_cpu(self, B, N, k, exclude_kind, rng):
        scores = make_scores("ties", B, N, rng)
        exclude = make_exclude(exclude_kind, B, N, rng)
        cpu = topk_scores(scores, k, exclude, backend="cpu")
        gpu = topk_scores(scores, k, exclude, backend="cuda")
        np.testing.assert_array_equal(gpu[0], cpu[0])
        np.testing.assert_array_equal(gpu[1], cpu[1])

    @pytest.mark.parametrize("exclude_kind", EXCLUDES)
    @pytest.mark.parametrize(
        ("B", "N", "D", "k"),
        [(1, 0, 4, 3), (3, 17, 3, 20), (64, 1000, 97, 5), (2, 50_000, 64, 100)],
    )
    def test_topk_inner_product_matches_cpu(self, B, N, D, k, exclude_kind, rng, seed):
        queries = rng.standard_normal((B, D)).astype(np.float32)
        items = rng.standard_normal((N, D)).astype(np.float32)
        exclude = make_exclude(exclude_kind, B, N, rng)
        values, indices = topk_inner_product(queries, items, k, exclude, backend="cuda")
        context = f"seed={seed} CUDA N={N} D={D} B={B} k={k} exclude={exclude_kind}"
        scores = reference_scores_inner_product(queries, items)
        tol = inner_product_tolerance(queries, items)
        assert_topk(values, indices, scores, k, exclude, tol, context)

    def test_k_above_limit_raises(self):
        with pytest.raises(ValueError, match="k <= 1024"):
            topk_scores(np.zeros((1, 10)), 1025, backend="cuda")
