"""Fused inner-product top-k (recserve) against numpy, measured in the same run.

Baseline: what a user would write with numpy alone, ``scores = q @ items.T``, then
``np.argpartition`` for the k best and a sort of those k. numpy's matmul uses its BLAS
(multi-threaded unless told otherwise, e.g. OMP_NUM_THREADS=1), so say which when
quoting numbers.

    python bench/topk.py                       # 100k x 64 items, k=100, batch 1 and 16
    python bench/topk.py --items 1000000 --threads 2

Prints the median of --repeats timed calls for each, and recserve/numpy (below 1: recserve
is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from recserve import kernels


def numpy_topk(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ items.T
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best, order, axis=1)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up: page in the items, start BLAS threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="N, number of items")
    parser.add_argument("--dim", type=int, default=64, help="D, embedding size")
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="recserve num_threads")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    items = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    print(
        f"items {args.items} x {args.dim} float32, k={args.k}, recserve num_threads="
        f"{args.threads}, SIMD_LEVEL={kernels.SIMD_LEVEL}, median of {args.repeats}"
    )
    print(f"{'batch':>6} {'recserve ms':>12} {'numpy ms':>10} {'recserve/numpy':>15}  same ids")
    for batch in args.batches:
        queries = rng.standard_normal((batch, args.dim)).astype(np.float32)

        def ours(queries: np.ndarray = queries) -> tuple[np.ndarray, np.ndarray]:
            return kernels.topk_inner_product(
                queries, items, args.k, num_threads=args.threads, backend="cpu"
            )

        def baseline(queries: np.ndarray = queries) -> tuple[np.ndarray, np.ndarray]:
            return numpy_topk(queries, items, args.k)

        ours_s = median_seconds(ours, args.repeats)
        numpy_s = median_seconds(baseline, args.repeats)
        # Float32 sums in a different order may swap near-ties; report, do not assert.
        same = np.mean(ours()[1] == baseline()[1])
        print(
            f"{batch:>6} {ours_s * 1e3:>12.3f} {numpy_s * 1e3:>10.3f} "
            f"{ours_s / numpy_s:>15.2f}  {same:.1%}"
        )


if __name__ == "__main__":
    main()
