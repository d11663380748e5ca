"""C++ kernels (recserve) against their floors and the libraries a user would pick instead.

Everything is measured in one run and printed as one table:

* floors: single-core (and, with ``--threads 2``, 2-core) read bandwidth, measured as
  ``np.add.reduce`` over a 512 MB float32 array (one pass, nothing written; median of
  repeats), and the 1-thread sgemm rate, measured as ``torch.mm`` of two 2048 x 2048
  float32 matrices (torch.set_num_threads(1)).
* top-k inner product, N in {100k, 1M}, D = 64, k in {10, 100}, B in {1, 64}, with and
  without 200 excluded ids: recserve float32 and bfloat16 (``ItemMatrix``), FAISS
  ``IndexFlatIP`` (1 OpenMP thread), ``torch.topk(q @ items.T)`` and numpy
  (``argpartition``). Each as ms (median) and as a multiple of its floor: bytes read /
  bandwidth for B = 1, FLOPs (2 B N D) / sgemm rate for B = 64. "same ids" is the
  fraction of ids equal to recserve float32's (float32 sums in another order may swap
  near-ties).

* fused feature crossing (bench/crossing.py, same run): a DeepFM's crossing stage and
  whole ranking of 1k and 10k candidates, recserve vs the TorchScript forward of the
  same trained model, one thread.

    python bench/kernels.py                  # about 5 minutes on 2 cores
    python bench/kernels.py --threads 2      # 2-thread rows for recserve (and FAISS)
    python bench/kernels.py --skip-crossing  # top-k only

Structure: ``run_topk(args) -> rows`` and ``crossing.run_crossing(args) -> rows``;
``main()`` prints both.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import crossing  # bench/crossing.py, beside this script
import numpy as np
import torch

from recserve.core import kernels

try:
    import faiss
except ImportError:  # pip install -e ".[bench]"
    faiss = None

Row = dict[str, object]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(threads: int, repeats: int) -> float:
    """Bytes/s reading a 512 MB float32 array with `threads` numpy reductions at once."""
    import threading

    parts = [np.ones(128 * 1024 * 1024 // threads, np.float32) for _ in range(threads)]

    def once() -> None:
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return sum(p.nbytes for p in parts) / median_seconds(once, repeats)


def sgemm_rate(repeats: int) -> float:
    torch.set_num_threads(1)
    a = torch.rand(2048, 2048)
    b = torch.rand(2048, 2048)
    return 2 * 2048**3 / median_seconds(lambda: torch.mm(a, b), repeats)


def numpy_topk(q: np.ndarray, items: np.ndarray, k: int, exclude: list | None):
    scores = q @ items.T
    if exclude is not None:
        for b, ids in enumerate(exclude):
            scores[b, ids] = -np.inf
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def torch_topk(q: torch.Tensor, items: torch.Tensor, k: int, exclude: list | None):
    scores = q @ items.T
    if exclude is not None:
        for b, ids in enumerate(exclude):
            scores[b, ids] = -torch.inf
    return torch.topk(scores, k, dim=1).indices.numpy()


def faiss_topk(index, q: np.ndarray, k: int, exclude: list | None):
    if exclude is None:
        return index.search(q, k)[1]
    # FAISS filters per search, not per query: one search per query with its own selector.
    out = []
    for b, ids in enumerate(exclude):
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))
        params = faiss.SearchParameters(sel=sel)
        out.append(index.search(q[b : b + 1], k, params=params)[1][0])
    return np.stack(out)


def run_topk(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    bw = read_bandwidth(args.threads, args.repeats)
    gemm = sgemm_rate(args.repeats) * args.threads
    rows: list[Row] = [
        {"case": f"floor: read bandwidth, {args.threads} thread(s)", "ms": "",
         "note": f"{bw / 1e9:.1f} GB/s (np.add.reduce over 512 MB)"},
        {"case": "floor: sgemm, 1 thread", "ms": "",
         "note": f"{gemm / args.threads / 1e9:.1f} GFLOP/s (torch.mm 2048^3)"},
    ]  # fmt: skip
    D = 64
    for N in args.items:
        items = rng.standard_normal((N, D)).astype(np.float32)
        matrix = kernels.ItemMatrix(items)
        items_t = torch.from_numpy(items)
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(D)
            index.add(items)
        for B in (1, 64):
            q = rng.standard_normal((B, D)).astype(np.float32)
            for k in (10, 100):
                for n_ex in (0, 200):
                    exclude = None
                    if n_ex:
                        exclude = [rng.choice(N, n_ex, replace=False) for _ in range(B)]
                    case = f"N={N // 1000}k B={B} k={k} excl={n_ex}"
                    run = functools.partial
                    f32 = run(
                        kernels.topk_inner_product,
                        q,
                        items,
                        k,
                        exclude,
                        num_threads=args.threads,
                        backend="cpu",
                    )
                    bf16 = run(
                        kernels.topk_inner_product,
                        q,
                        matrix,
                        k,
                        exclude,
                        num_threads=args.threads,
                        backend="cpu",
                    )
                    ours_ids = f32()[1]
                    contenders = [
                        ("recserve f32", f32, N * D * 4),
                        ("recserve bf16", bf16, N * D * 2),
                    ]
                    if index is not None:
                        contenders.append(
                            ("faiss", run(faiss_topk, index, q, k, exclude), N * D * 4)
                        )
                    contenders.append(
                        (
                            "torch",
                            run(torch_topk, torch.from_numpy(q), items_t, k, exclude),
                            N * D * 4,
                        )
                    )
                    contenders.append(("numpy", run(numpy_topk, q, items, k, exclude),
                                       N * D * 4))  # fmt: skip
                    times = {}
                    for name, fn, nbytes in contenders:
                        seconds = median_seconds(fn, args.repeats)
                        times[name] = seconds
                        floor = nbytes / bw if B == 1 else 2 * B * N * D / gemm
                        result = fn()
                        ids = result[1] if isinstance(result, tuple) else result
                        same = float(np.mean(np.asarray(ids) == ours_ids))
                        rows.append({"case": case, "impl": name, "ms": seconds * 1e3,
                                     "x_floor": seconds / floor, "same": same})  # fmt: skip
                    base = times["recserve f32"]
                    for row in rows[-len(contenders) :]:
                        row["vs_ours"] = times[row["impl"]] / base
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'case':<34} {'impl':<14} {'ms':>9} {'x floor':>8} {'x recserve f32':>14} "
          f"{'same ids':>8}")  # fmt: skip
    for r in rows:
        if "impl" not in r:
            print(f"{r['case']:<34} {r['note']}")
            continue
        print(f"{r['case']:<34} {r['impl']:<14} {r['ms']:>9.2f} {r['x_floor']:>8.2f} "
              f"{r['vs_ours']:>14.2f} {r['same']:>8.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="recserve and FAISS threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--skip-crossing", action="store_true", help="top-k rows only")
    args = parser.parse_args()
    print(f"recserve SIMD_LEVEL={kernels.SIMD_LEVEL}, threads={args.threads}, "
          f"faiss={'yes' if faiss else 'not installed'}, median of {args.repeats}")  # fmt: skip
    print_table(run_topk(args))
    if not args.skip_crossing:
        crossing_args = crossing.build_parser().parse_args([])
        print()
        crossing.print_crossing(crossing.run_crossing(crossing_args), crossing_args.repeats)


if __name__ == "__main__":
    main()
