"""Fuzz harness for the C++ entry points of ``recserve._core``.

Each input (bytes) picks an entry point and builds its arguments from the bytes: shapes
(including 0 and mismatched ones), dtypes (float32, float64, int32, int64, uint16,
float16), non-contiguous and misaligned arrays, wrong ndim, NaN/inf values, k (negative,
0, above N), num_threads, SIMD level names, and CSR exclusion lists with bad indptr
and out-of-range, negative or duplicate ids. Every call must either return results
within bounds (checked below) or raise ValueError, IndexError or TypeError; anything
else, or a crash, is a bug (with sanitizers: also any ASan/UBSan report).

    python tests/fuzz/fuzz_core.py -atheris_runs=20000 DIR tests/fuzz/corpus/core
        coverage-guided (atheris, libFuzzer flags; new inputs go to the first DIR)
    python tests/fuzz/fuzz_core.py --replay tests/fuzz/corpus/core --random 3000
        no atheris: every corpus file, then N pseudo-random inputs (seed 0)
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recserve import _core

EXPECTED = (ValueError, IndexError, TypeError)
DTYPES = (np.float32, np.float32, np.float32, np.float64, np.int64, np.int32, np.uint16,
          np.float16)  # fmt: skip
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45], np.float32)


class Bytes:
    """Reads small numbers from fuzz input; past its end every read is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, lo: int, hi: int) -> int:
        """An int in [lo, hi]."""
        span = hi - lo + 1
        value = self.byte() | self.byte() << 8
        return lo + value % span

    def chance(self, one_in: int) -> bool:
        """True one time in ``one_in``; False past the end (short inputs stay tame)."""
        return self.pos < len(self.data) and self.byte() % one_in == 0

    def floats(self, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng(self.int(0, 65535))
        x = rng.standard_normal(shape).astype(np.float32)
        if x.size and self.chance(3):  # a few special values
            flat = x.reshape(-1)
            for _ in range(self.int(1, 4)):
                flat[self.int(0, flat.size - 1)] = SPECIAL[self.int(0, SPECIAL.size - 1)]
        if self.chance(4):  # ties
            x = np.round(x)
        return x

    def ids(self, n: int, num_items: int) -> np.ndarray:
        rng = np.random.default_rng(self.int(0, 65535))
        out = rng.integers(0, max(num_items, 1), size=n, dtype=np.int64)
        if n and self.chance(6):
            for _ in range(self.int(1, 3)):
                out[self.int(0, n - 1)] = [-1, num_items, num_items + 7, -(2**63), 2**63 - 1][
                    self.int(0, 4)
                ]
        return out


def mangle(b: Bytes, x: np.ndarray) -> np.ndarray:
    """Usually ``x``; sometimes another dtype, ndim, a non-contiguous view or misaligned."""
    choice = b.int(0, 39)
    if choice == 0:
        with np.errstate(all="ignore"):
            return x.astype(DTYPES[b.int(0, len(DTYPES) - 1)])
    if choice == 1 and x.ndim >= 1 and x.shape[0] > 1:
        return x[::2]
    if choice == 2 and x.ndim == 2:
        return x.T
    if choice == 3:
        return x.reshape(-1) if x.ndim != 1 else x.reshape(1, -1)
    if choice == 4 and x.size:  # same values, an address not aligned to the item size
        raw = np.zeros(x.nbytes + 1, np.uint8)[1:]
        view = raw.view(x.dtype) if x.itemsize == 1 else np.frombuffer(raw.data, x.dtype)
        view = view.reshape(x.shape)
        view[...] = x
        return view
    if choice == 5:
        return x[..., None]
    return x


def exclusion(b: Bytes, rows: int, num_items: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if b.chance(2):
        return None, None
    counts = [b.int(0, 4) for _ in range(rows)]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = b.ids(int(indptr[-1]), num_items)
    if b.chance(12) and indptr.size > 1:  # not non-decreasing, or not ending at nnz
        indptr[b.int(0, indptr.size - 1)] += b.int(-3, 3)
    if b.chance(16):
        indptr = indptr[:-1]
    if b.chance(16):
        return mangle(b, indptr), ids if b.chance(2) else None
    return mangle(b, indptr), mangle(b, ids)


def check_topk(values, indices, b_rows: int, n_items: int, k: int, scores=None, excl=None):
    """The documented result contract of the top-k entry points."""
    assert values.shape == (b_rows, k) and indices.shape == (b_rows, k), (values.shape, k)
    assert values.dtype == np.float32 and indices.dtype == np.int64
    assert ((indices >= -1) & (indices < n_items)).all(), indices
    pad = indices == -1
    assert np.isneginf(values[pad]).all(), values
    assert not np.isnan(values).any(), values
    for r in range(b_rows):
        row = indices[r][~pad[r]]
        assert len(set(row.tolist())) == row.size, row
        # real results first, descending; padding only at the end
        assert (np.diff(pad[r].astype(np.int8)) >= 0).all(), indices[r]
        v = values[r][~pad[r]]
        assert (v[:-1] >= v[1:]).all(), v
        if excl is not None:
            assert not set(row.tolist()) & excl[r], (row, excl[r])
        if scores is not None:
            np.testing.assert_array_equal(v, scores[r, row])
            allowed = np.ones(n_items, bool)
            allowed[list(excl[r]) if excl is not None else []] = False
            allowed &= ~np.isnan(scores[r])
            assert row.size == min(k, int(allowed.sum())), (row.size, k, allowed.sum())


def excluded_sets(indptr, ids, rows: int) -> list[set[int]] | None:
    if indptr is None:
        return None
    return [set(ids[indptr[r] : indptr[r + 1]].tolist()) for r in range(rows)]


def simd_level(b: Bytes) -> str:
    levels = ["", *_core.SUPPORTED_SIMD_LEVELS, "avx512", "sse9", "SCALAR", "\x00"]
    return levels[b.int(0, len(levels) - 1)] if b.chance(4) else ""


def fuzz_topk_scores(b: Bytes) -> None:
    rows, n = b.int(0, 6), b.int(0, 70)
    k = b.int(0, n + 10) if not b.chance(16) else b.int(-(2**15), 2**15)
    scores = b.floats((rows, n))
    indptr, ids = exclusion(b, rows, n)
    threads = b.int(1, 4) if not b.chance(12) else b.int(-1, 0)
    s = mangle(b, scores)
    values, indices = _core.topk_scores(s, k, indptr, ids, threads, simd_level(b))
    rows, n = s.shape  # the call took it: 2-D float32 (a view of one row is contiguous)
    check_topk(values, indices, rows, n, k, s, excluded_sets(indptr, ids, rows))


def fuzz_topk_inner_product(b: Bytes, bf16: bool) -> None:
    rows, n, d = b.int(0, 9), b.int(0, 70), b.int(0, 40)
    k = b.int(0, n + 10) if not b.chance(16) else b.int(-3, -1)
    queries = b.floats((rows, d))
    items = b.floats((n, d))
    indptr, ids = exclusion(b, rows, n)
    threads = b.int(1, 4) if not b.chance(12) else b.int(-1, 0)
    q, x = mangle(b, queries), mangle(b, items)
    if b.chance(10):  # queries and items of different dimensions
        x = b.floats((n, b.int(0, 40)))
    level = simd_level(b)
    if bf16:
        xb = _core.to_bfloat16(items)
        norms = _core.row_norms(items)
        if b.chance(6):
            norms = mangle(b, b.floats((b.int(0, 70),)))
        values, indices = _core.topk_inner_product_bf16(
            q, x, mangle(b, xb), norms, k, indptr, ids, threads, level
        )
    else:
        values, indices = _core.topk_inner_product(q, x, k, indptr, ids, threads, level)
    rows, n = q.shape[0], x.shape[0]
    check_topk(values, indices, rows, n, k, excl=excluded_sets(indptr, ids, rows))


def fuzz_conversions(b: Bytes) -> None:
    shape = tuple(b.int(0, 9) for _ in range(b.int(0, 3)))
    x = mangle(b, b.floats(shape))
    if b.chance(2):
        out = _core.to_bfloat16(x)
        assert out.shape == x.shape and out.dtype == np.uint16
        want = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncated
        nan = np.isnan(x)
        assert (np.abs(out[~nan].astype(np.int64) - want[~nan]) <= 1).all()  # or rounded up
        assert (out[nan] & 0x7F80 == 0x7F80).all() and (out[nan] & 0x7F).all()  # stays NaN
    else:
        out = _core.row_norms(x)
        assert x.ndim == 2 and out.shape == (x.shape[0],) and out.dtype == np.float32
        finite = np.isfinite(x).all(axis=1)
        exact = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
        assert (out[finite] >= exact[finite].astype(np.float32) * (1 - 1e-6)).all()
        assert np.isposinf(out[~finite]).all()


def fuzz_check_exclude(b: Bytes) -> None:
    rows, n = b.int(0, 6), b.int(0, 30)
    indptr, ids = exclusion(b, rows, n)
    if indptr is None:
        indptr, ids = np.zeros(rows + 1, np.int64), np.zeros(0, np.int64)
    if ids is None:
        ids = np.zeros(0, np.int64)
    if b.chance(8):
        rows, n = b.int(-2, rows), b.int(-2, n)
    _core.check_exclude_csr(indptr, ids, rows, n)


def fuzz_crossing(b: Bytes) -> None:
    n_items, d, h1 = b.int(0, 40), b.int(0, 12), b.int(0, 12)
    rows = b.ids(b.int(0, 50), n_items) if b.chance(4) else None
    if b.chance(2):
        user_sum, user_hidden = b.floats((d,)), b.floats((h1,))
        item_scalar, item_sum = b.floats((n_items,)), b.floats((n_items, d))
        item_hidden = b.floats((n_items, h1))
        if b.chance(8):
            item_sum = b.floats((n_items, b.int(0, 12)))
        args = [user_sum, user_hidden, item_scalar, item_sum, item_hidden]
        args[b.int(0, 4)] = mangle(b, args[b.int(0, 4)])
        linear, hidden = _core.crossing_deepfm(0.5, *args, rows)
        r = np.arange(n_items) if rows is None else rows
        assert linear.shape == (r.size,) and hidden.shape == (r.size, h1)
        total = args[1] + args[4][r]
        np.testing.assert_array_equal(hidden, np.where(total < 0, np.float32(0), total))
    else:
        du, di = d, h1
        user_x0, item_x0 = b.floats((du,)), b.floats((n_items, di))
        user_hidden, item_hidden = b.floats((du + di,)), b.floats((n_items, du + di))
        if b.chance(8):
            user_hidden = b.floats((b.int(0, 24),))
        args = [user_x0, user_hidden, item_x0, item_hidden]
        args[b.int(0, 3)] = mangle(b, args[b.int(0, 3)])
        x0, x1 = _core.crossing_dcn_first(*args, rows)
        r = np.arange(n_items) if rows is None else rows
        assert x0.shape == x1.shape == (r.size, du + di)
        want = np.concatenate([np.broadcast_to(args[0], (r.size, du)), args[2][r]], axis=1)
        np.testing.assert_array_equal(x0, want)


ENTRY_POINTS: dict[str, Callable[[Bytes], None]] = {
    "topk_scores": fuzz_topk_scores,
    "topk_inner_product": lambda b: fuzz_topk_inner_product(b, bf16=False),
    "topk_inner_product_bf16": lambda b: fuzz_topk_inner_product(b, bf16=True),
    "to_bfloat16/row_norms": fuzz_conversions,
    "check_exclude_csr": fuzz_check_exclude,
    "crossing": fuzz_crossing,
}
STATS: Counter[str] = Counter()  # "entry point: returned / raised <error>" -> calls


def test_one_input(data: bytes) -> None:
    b = Bytes(data)
    names = list(ENTRY_POINTS)
    name = names[b.byte() % len(names)]
    try:
        ENTRY_POINTS[name](b)
    except EXPECTED as exc:
        STATS[f"{name}: raised {type(exc).__name__}"] += 1
    else:
        STATS[f"{name}: returned, checked"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replay", type=Path, help="run every file of this corpus dir")
    parser.add_argument("--random", type=int, default=0, help="then N random inputs")
    parser.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args()
    if args.replay is None and not args.random:
        import atheris  # only for coverage-guided runs

        atheris.instrument_func(test_one_input)
        for function in (fuzz_topk_scores, fuzz_topk_inner_product, fuzz_conversions,
                         fuzz_check_exclude, fuzz_crossing, exclusion, mangle, check_topk):  # fmt: skip
            atheris.instrument_func(function)
        atheris.Setup([sys.argv[0], *rest], test_one_input)
        atheris.Fuzz()
        return 0
    files = sorted(p for p in args.replay.iterdir() if p.is_file()) if args.replay else []
    for path in files:
        test_one_input(path.read_bytes())
    rng = random.Random(args.seed)
    for _ in range(args.random):
        test_one_input(rng.randbytes(rng.randint(0, 96)))
    print(f"fuzz_core: {len(files)} corpus inputs and {args.random} random inputs, no failure")
    for key, count in sorted(STATS.items()):
        print(f"  {key}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
