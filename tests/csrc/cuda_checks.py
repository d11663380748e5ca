"""The CUDA kernels against the CPU kernels and the float64 references: plain functions
over plain case lists, so pytest (test_cuda_kernels.py) and the bare GPU runner
(tests/gpu/run_checks.py) run the same checks. Needs torch, numpy and a CUDA build of
recserve with a usable device; imports nothing else of the test suite's."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from topk_reference import (
    F32_EPS,
    assert_topk,
    inner_product_tolerance,
    make_exclude,
    make_scores,
    reference_scores_inner_product,
)

from recserve import _core
from recserve.core.kernels import DeviceItemMatrix, topk_inner_product, topk_scores
from recserve.engine.crossing import (
    DeviceItemTables,
    ItemTables,
    crossing_dcn_first_cuda,
    crossing_deepfm_cuda,
)

# Awkward sizes: empty, one, either side of a warp, a tile, a prime above a split.
NS = [0, 1, 31, 33, 1000, 100_003]
DS = [1, 3, 64, 97]
BS = [1, 7, 256]
KS = [1, 32, 100, 1024, "N+3"]


def _k(k: int | str, N: int) -> int:
    return min(N + 3, 1024) if k == "N+3" else int(k)


def _inner_product_cases() -> list[tuple]:
    """(N, D, B, k, exclude, dtype): every N x k pair, D, B, exclusion and dtype cycled so
    each value meets several others; the largest B only with a mid-size N except twice."""
    cases = []
    for i, (N, k) in enumerate(itertools.product(NS, KS)):
        D = DS[i % len(DS)]
        B = BS[(i // 2) % len(BS)]
        if N == 100_003 and B == 256 and i % 4:
            B = 7  # keeps the float64 reference affordable
        for dtype in ("float32", "bfloat16"):
            exclude = ("none", "random")[(i + (dtype == "bfloat16")) % 2]
            cases.append((N, D, B, k, exclude, dtype))
    return cases


INNER_PRODUCT_CASES = _inner_product_cases()
SCORES_CASES = [
    (B, N, k, kind, exclude)
    for (B, N, k), kind, exclude in itertools.product(
        [(1, 0, 3), (1, 1, 1), (7, 33, 32), (256, 1000, 100), (3, 100_003, 1024),
         (1, 100_003, 100), (7, 31, "N+3")],
        ["normal", "ties"],
        ["none", "random", "all"],
    )
]  # fmt: skip
CROSSING_CASES = [
    (N, D, H1) for N, D, H1 in itertools.product([0, 1, 7, 1023, 10_000], [0, 1, 17, 64], [1, 64, 256])
]  # fmt: skip
DCN_CASES = [
    (N, DU, DI) for N in (0, 1, 7, 10_000) for DU, DI in ((0, 1), (1, 0), (3, 5), (48, 80))
]


def bf16_widened(items: np.ndarray) -> np.ndarray:
    """items rounded to bfloat16 (nearest even) and widened back to float32."""
    bits = _core.to_bfloat16(np.ascontiguousarray(items, np.float32)).astype(np.uint32)
    return (bits << 16).view(np.float32)


def check_inner_product(case: tuple, rng: np.random.Generator, context: str) -> None:
    N, D, B, k, exclude_kind, dtype = case
    k = _k(k, N)
    queries = rng.standard_normal((B, D)).astype(np.float32)
    items = rng.standard_normal((N, D)).astype(np.float32)
    exclude = make_exclude(exclude_kind, B, N, rng)
    matrix = DeviceItemMatrix(items, dtype=dtype)
    scanned = items if dtype == "float32" else bf16_widened(items)
    where = f"{context} N={N} D={D} B={B} k={k} exclude={exclude_kind} dtype={dtype}"
    # Host queries: numpy out.
    values, indices = topk_inner_product(queries, matrix, k, exclude)
    scores = reference_scores_inner_product(queries, scanned)
    tol = inner_product_tolerance(queries, scanned)
    assert_topk(values, indices, scores, k, exclude, tol, where)
    cpu_values, cpu_indices = topk_inner_product(queries, scanned, k, exclude, backend="cpu")
    np.testing.assert_array_equal(indices < 0, cpu_indices < 0, err_msg=f"padding ({where})")
    real = indices >= 0
    np.testing.assert_allclose(
        values[real], cpu_values[real], rtol=0, atol=2 * float(tol.max(initial=0.0)),
        err_msg=f"CUDA and CPU values differ ({where})",
    )  # fmt: skip
    # Device queries: device out, the same answer.
    queries_d = torch.from_numpy(queries).to(matrix.device)
    values_d, indices_d = topk_inner_product(queries_d, matrix, k, exclude)
    assert values_d.is_cuda and indices_d.is_cuda, where
    np.testing.assert_array_equal(values_d.cpu().numpy(), values, err_msg=where)
    np.testing.assert_array_equal(indices_d.cpu().numpy(), indices, err_msg=where)


def check_scores(case: tuple, rng: np.random.Generator, context: str) -> None:
    """Selection only: the CUDA result equals the CPU's exactly (ties, NaN, +-inf)."""
    B, N, k, kind, exclude_kind = case
    k = _k(k, N)
    scores = make_scores(kind, B, N, rng)
    exclude = make_exclude(exclude_kind, B, N, rng)
    where = f"{context} B={B} N={N} k={k} kind={kind} exclude={exclude_kind}"
    cpu = topk_scores(scores, k, exclude, backend="cpu")
    gpu = topk_scores(scores, k, exclude, backend="cuda")
    np.testing.assert_array_equal(gpu[0], cpu[0], err_msg=where)
    np.testing.assert_array_equal(gpu[1], cpu[1], err_msg=where)
    assert_topk(gpu[0], gpu[1], scores, k, exclude, 0.0, where, exact=True)
    on_device = topk_scores(torch.from_numpy(scores).cuda(), k, exclude)
    np.testing.assert_array_equal(on_device[1].cpu().numpy(), cpu[1], err_msg=where)


def _tables(rng: np.random.Generator, I: int, D: int, H1: int, DI: int = 0) -> ItemTables:
    f32 = np.float32
    return ItemTables(
        rng.standard_normal(I).astype(f32),
        rng.standard_normal((I, D)).astype(f32),
        rng.standard_normal((I, H1)).astype(f32),
        rng.standard_normal((I, DI)).astype(f32),
    )


def check_crossing_deepfm(case: tuple, rng: np.random.Generator, context: str) -> None:
    N, D, H1 = case
    I = 5000
    items = _tables(rng, I, D, H1)
    scalar = float(rng.standard_normal())
    user_sum = rng.standard_normal(D).astype(np.float32)
    user_hidden = rng.standard_normal(H1).astype(np.float32)
    rows = rng.integers(0, I, N)  # duplicates included
    where = f"{context} N={N} D={D} H1={H1}"
    linear, hidden = crossing_deepfm_cuda(
        scalar, user_sum, user_hidden, DeviceItemTables.upload(items), rows
    )
    ref_linear, ref_hidden = _core.crossing_deepfm(
        scalar, user_sum, user_hidden, items.scalar, items.sum, items.hidden, rows
    )
    np.testing.assert_array_equal(hidden.cpu().numpy(), ref_hidden, err_msg=where)  # one rounding
    magnitude = (
        abs(scalar) + np.abs(items.scalar[rows]) + np.abs(items.sum[rows]) @ np.abs(user_sum)
    )
    bound = 2 * (D + 3) * F32_EPS * magnitude + 2 * F32_EPS * abs(scalar)
    error = np.abs(linear.cpu().numpy().astype(np.float64) - ref_linear)
    assert np.all(error <= bound), f"{where}: linear differs from the CPU by {error.max()}"


def check_crossing_dcn(case: tuple, rng: np.random.Generator, context: str) -> None:
    N, DU, DI = case
    I = 3000
    D = DU + DI
    items = _tables(rng, I, 0, D, DI)
    user_x0 = rng.standard_normal(DU).astype(np.float32)
    user_hidden = rng.standard_normal(D).astype(np.float32)
    rows = rng.integers(0, I, N)
    where = f"{context} N={N} DU={DU} DI={DI}"
    x0, x1 = crossing_dcn_first_cuda(user_x0, user_hidden, DeviceItemTables.upload(items), rows)
    ref0, ref1 = _core.crossing_dcn_first(user_x0, user_hidden, items.vectors, items.hidden, rows)
    np.testing.assert_array_equal(x0.cpu().numpy(), ref0, err_msg=where)
    bound = 2 * F32_EPS * (np.abs(ref1.astype(np.float64)) + np.abs(ref0))
    error = np.abs(x1.cpu().numpy().astype(np.float64) - ref1)
    assert np.all(error <= bound), f"{where}: x1 differs from the CPU by {error.max()}"


def check_crossing_rows_are_checked_on_the_host(rng: np.random.Generator) -> None:
    """A row outside [0, I) raises IndexError naming it, before anything is launched."""
    tables = DeviceItemTables.upload(_tables(rng, 10, 3, 4))
    for bad in (-1, 10, 2**40):
        rows = np.array([0, 3, bad, 1])
        try:
            crossing_deepfm_cuda(0.0, np.zeros(3), np.zeros(4), tables, rows)
        except IndexError as exc:
            if f"rows[2] = {bad}" not in str(exc):
                raise AssertionError(f"the message does not name the row: {exc}") from exc
        else:
            raise AssertionError(f"row {bad} of 10 items was accepted")
    torch.cuda.synchronize()  # nothing asynchronous failed either


def check_streams_and_dlpack(rng: np.random.Generator) -> None:
    """Work runs on torch's current stream; a DLPack object on the device is taken as is."""
    items = DeviceItemMatrix(rng.standard_normal((20_000, 64)).astype(np.float32))
    queries = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32)).cuda()
    expected = topk_inner_product(queries, items, 10)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = topk_inner_product(queries, items, 10)
    stream.synchronize()
    assert torch.equal(on_stream[1], expected[1])

    class Capsule:  # a foreign DLPack producer
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    foreign = topk_inner_product(Capsule(queries), items, 10)
    assert torch.equal(foreign[1], expected[1])
    bf16_items = torch.from_numpy(rng.standard_normal((999, 64)).astype(np.float32)).cuda()
    direct = topk_inner_product(queries, bf16_items.to(torch.bfloat16), 7)
    resident = topk_inner_product(queries, DeviceItemMatrix(bf16_items, dtype="bfloat16"), 7)
    assert torch.equal(direct[1], resident[1])


def check_k_limit() -> None:
    try:
        topk_scores(np.zeros((1, 10)), 1025, backend="cuda")
    except ValueError as exc:
        if "k <= 1024" not in str(exc):
            raise AssertionError(f"the message does not say the limit: {exc}") from exc
    else:
        raise AssertionError("k = 1025 was accepted by the CUDA top-k")
