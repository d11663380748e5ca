"""Top-k kernels of the C++ core, with numpy in and numpy out.

Result contract, the same for every function and backend:

* ``values[b]`` are row b's k largest scores in descending order and ``indices[b]`` their
  item indices (column of ``scores``, row of ``items``);
* ties go to the smaller index, so results are deterministic;
* NaN scores are never selected (``-inf`` is an ordinary score);
* ``exclude[b]`` (item indices, duplicates allowed) is never selected for row b;
* when fewer than k items are selectable the row is padded with index ``-1`` and value
  ``-inf``.

Inputs are converted like FAISS's wrappers do (``np.ascontiguousarray(x, dtype=np.float32)``),
so lists, float64 and strided arrays are fine; the C++ core then checks every shape and id
and raises ``ValueError`` or ``IndexError`` (an exclude id outside ``[0, N)``).

SIMD: the CPU kernels run at the best level the CPU supports (``"avx512"``, ``"avx2"``
or ``"scalar"``), chosen once at import; set the environment variable
``RECSERVE_SIMD_LEVEL`` before import to force one. A name that is not a level, or a level
this CPU lacks, makes the import fail with a message listing the supported levels (no
silent fallback). Each level has two float32 inner products: small batches (fewer than a
per-level threshold, e.g. one query) stream each item row once and sum along d, larger
ones use a packed GEMM-like kernel that sums in another order. Results never depend on
the thread count, and a query gets the same result in any batch that takes the same
path; between the two paths near-ties may swap (the last bits of a score can differ).

bfloat16: wrap the items in an :class:`ItemMatrix` (float32 plus a bfloat16 copy and row
norms) and pass it as ``items``; the CPU scan then reads half the bytes and the result is
still exactly the float32 one (see :class:`ItemMatrix`).

Backends: ``"cpu"`` always; ``"cuda"`` when recserve was built with ``RECSERVE_WITH_CUDA=ON``
and a GPU (and a CUDA build of PyTorch, which owns the device memory) is present. The CUDA
path copies numpy inputs to the current torch device and the results back.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core

if TYPE_CHECKING:
    import torch

__all__ = [
    "HAS_CUDA",
    "SIMD_LEVEL",
    "SUPPORTED_SIMD_LEVELS",
    "Backend",
    "ItemMatrix",
    "available_backends",
    "topk_inner_product",
    "topk_scores",
]

HAS_CUDA: bool = bool(_core.HAS_CUDA)
"""True when the C++ core was compiled with the CUDA kernels (a GPU may still be absent)."""

SIMD_LEVEL: str = str(_core.SIMD_LEVEL)
"""SIMD level the CPU kernels use: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""

SUPPORTED_SIMD_LEVELS: tuple[str, ...] = tuple(_core.SUPPORTED_SIMD_LEVELS)
"""Levels this CPU can run, from ``"scalar"`` up."""

Backend = Literal["auto", "cpu", "cuda"]

TopkResult = tuple[NDArray[np.float32], NDArray[np.int64]]


def available_backends() -> list[str]:
    """Backends usable in this process: ``["cpu"]``, plus ``"cuda"`` when recserve has
    CUDA kernels, a GPU is visible and PyTorch (which owns the device memory) can use it."""
    return list(_available_backends())


@functools.cache
def _available_backends() -> tuple[str, ...]:
    if HAS_CUDA and _core.cuda_device_count() > 0:
        import torch

        if torch.cuda.is_available():
            return ("cpu", "cuda")
    return ("cpu",)


class ItemMatrix:
    """Item vectors ``[N, D]`` stored as float32 and, optionally, as bfloat16.

    Build it once (when a model loads) and pass it as ``items`` to
    :func:`topk_inner_product`. With ``bfloat16=True`` it also holds ``bfloat16`` (the
    items rounded to nearest-even bfloat16, as uint16 bit patterns) and ``norms`` (each
    row's L2 norm, rounded up). The CPU scan then reads the bfloat16 copy, half the bytes
    of float32, and returns exactly what the float32 kernel returns (same ids, same
    values): the error of each approximate score is bounded by
    ``eps * ||q|| * ||x_i|| + delta`` (``eps`` about ``2**-8 + 2 D 2**-24``, see
    ``csrc/include/recserve/topk.h``), every item whose upper bound can still reach the
    k-th largest lower bound is re-scored with the float32 kernel's own dot product, and
    the top-k is selected from those exact scores. Memory: 6 bytes per value instead of 4.
    """

    def __init__(self, items: ArrayLike, *, bfloat16: bool = True) -> None:
        self.float32: NDArray[np.float32] = np.ascontiguousarray(items, dtype=np.float32)
        if self.float32.ndim != 2:
            raise ValueError(f"items must be 2-D [N, D], got shape {self.float32.shape}")
        self.bfloat16: NDArray[np.uint16] | None = None
        self.norms: NDArray[np.float32] | None = None
        if bfloat16:
            self.bfloat16 = _core.to_bfloat16(self.float32)
            self.norms = _core.row_norms(self.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.float32.shape  # type: ignore[return-value]

    def __repr__(self) -> str:
        storage = "float32+bfloat16" if self.bfloat16 is not None else "float32"
        return f"ItemMatrix(shape={self.shape}, storage={storage})"


def topk_scores(
    scores: ArrayLike,
    k: int,
    exclude: Sequence[ArrayLike] | None = None,
    *,
    num_threads: int = 1,
    backend: Backend = "auto",
) -> TopkResult:
    """Select the k best entries of each row of a score matrix.

    Args:
        scores: ``[B, N]`` scores (or ``[N]`` for one row), converted to float32.
        k: how many to return per row, ``>= 0``; ``k > N`` pads.
        exclude: ``None`` or, per row, item indices in ``[0, N)`` never to return.
        num_threads: CPU threads; rows are split across them.
        backend: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(values, indices)``: float32 and int64 arrays of shape ``[B, k]`` (``[k]`` for
        1-D input), following the module's result contract.
    """
    matrix, one_row = _as_rows(scores, "scores")
    k = operator.index(k)
    indptr, ids = _exclude_csr(exclude, matrix.shape[0])
    if _use_cuda(backend, k):
        values, indices = _cuda_topk_scores(matrix, k, indptr, ids)
    else:
        values, indices = _core.topk_scores(matrix, k, indptr, ids, num_threads)
    return (values[0], indices[0]) if one_row else (values, indices)


def topk_inner_product(
    queries: ArrayLike,
    items: ArrayLike | ItemMatrix,
    k: int,
    exclude: Sequence[ArrayLike] | None = None,
    *,
    num_threads: int = 1,
    backend: Backend = "auto",
) -> TopkResult:
    """Select, per query, the k items with the largest inner product.

    Equivalent to ``topk_scores(queries @ items.T, k, exclude)`` (float32 arithmetic), but
    on the CPU the ``[B, N]`` score matrix is never materialised.

    Args:
        queries: ``[B, D]`` query vectors (or ``[D]`` for one query), converted to float32.
        items: ``[N, D]`` item vectors, converted to float32, or an :class:`ItemMatrix`
            (with a bfloat16 copy, the CPU scan reads it; the result is the same).
        k: how many to return per query, ``>= 0``; ``k > N`` pads.
        exclude: ``None`` or, per query, item indices in ``[0, N)`` never to return
            (e.g. the items a user has already seen).
        num_threads: CPU threads; they split the queries when there are at least
            4 per thread, else the items (one heap per thread, merged).
        backend: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(values, indices)``: float32 and int64 arrays of shape ``[B, k]`` (``[k]`` for
        1-D queries), following the module's result contract.
    """
    query_rows, one_row = _as_rows(queries, "queries")
    matrix = items if isinstance(items, ItemMatrix) else None
    item_rows = matrix.float32 if matrix is not None else np.ascontiguousarray(items, np.float32)
    if item_rows.ndim != 2:
        raise ValueError(f"items must be 2-D [N, D], got shape {item_rows.shape}")
    k = operator.index(k)
    indptr, ids = _exclude_csr(exclude, query_rows.shape[0])
    if _use_cuda(backend, k):
        values, indices = _cuda_topk_inner_product(query_rows, item_rows, k, indptr, ids)
    elif matrix is not None and matrix.bfloat16 is not None and matrix.norms is not None:
        values, indices = _core.topk_inner_product_bf16(
            query_rows, item_rows, matrix.bfloat16, matrix.norms, k, indptr, ids, num_threads
        )
    else:
        values, indices = _core.topk_inner_product(
            query_rows, item_rows, k, indptr, ids, num_threads
        )
    return (values[0], indices[0]) if one_row else (values, indices)


def _as_rows(x: ArrayLike, name: str) -> tuple[NDArray[np.float32], bool]:
    """float32 C-contiguous [B, M]; 1-D input becomes one row (and is flagged)."""
    array = np.ascontiguousarray(x, dtype=np.float32)
    if array.ndim == 1:
        return array[np.newaxis, :], True
    if array.ndim == 2:
        return array, False
    raise ValueError(f"{name} must be 1-D or 2-D, got shape {array.shape}")


def _exclude_csr(
    exclude: Sequence[ArrayLike] | None, num_rows: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]] | tuple[None, None]:
    """Turn per-row id lists into CSR (indptr [B + 1], ids [nnz]), both int64."""
    if exclude is None:
        return None, None
    if len(exclude) != num_rows:
        raise ValueError(
            f"exclude must have one id list per query row ({num_rows}), got {len(exclude)}; "
            "for a single 1-D query pass [ids]"
        )
    rows = []
    for b, row in enumerate(exclude):
        ids = np.asarray(row)
        if ids.size == 0:
            ids = ids.reshape(0)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(
                f"exclude[{b}] must be a 1-D list of integer item indices, "
                f"got dtype {ids.dtype} and shape {ids.shape}"
            )
        rows.append(ids.astype(np.int64, copy=False))
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    flat = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    return indptr, np.ascontiguousarray(flat, dtype=np.int64)


def _use_cuda(backend: str, k: int) -> bool:
    if backend == "cpu":
        return False
    if backend == "cuda":
        if not HAS_CUDA:
            raise RuntimeError(
                "recserve was built without CUDA; rebuild with RECSERVE_WITH_CUDA=ON "
                "or use backend='cpu'"
            )
        if "cuda" not in _available_backends():
            raise RuntimeError(
                "recserve was built with CUDA but no GPU is usable here (needs a device and "
                "a CUDA build of PyTorch); use backend='cpu'"
            )
        return True
    if backend == "auto":
        return k <= _core_cuda_max_k() and "cuda" in _available_backends()
    raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")


def _core_cuda_max_k() -> int:
    return int(getattr(_core, "CUDA_MAX_K", 0))


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got k={k}")


def _cuda_exclude(
    indptr: NDArray[np.int64] | None,
    ids: NDArray[np.int64] | None,
    num_rows: int,
    num_items: int,
    device: torch.device,
) -> tuple[list[torch.Tensor], int, int, int]:
    """Check the CSR on the host, upload it; returns (keep-alive, indptr, ids, nnz)."""
    import torch

    if indptr is None or ids is None or ids.size == 0:
        return [], 0, 0, 0
    _core.check_exclude_csr(indptr, ids, num_rows, num_items)
    indptr_d = torch.from_numpy(indptr).to(device)
    ids_d = torch.from_numpy(ids).to(device)
    return [indptr_d, ids_d], indptr_d.data_ptr(), ids_d.data_ptr(), int(ids.size)


def _cuda_topk_scores(
    scores: NDArray[np.float32],
    k: int,
    indptr: NDArray[np.int64] | None,
    ids: NDArray[np.int64] | None,
) -> TopkResult:
    import torch

    _check_k(k)
    device = torch.device("cuda", torch.cuda.current_device())
    B, N = scores.shape
    scores_d = torch.from_numpy(scores).to(device)
    alive, indptr_p, ids_p, nnz = _cuda_exclude(indptr, ids, B, N, device)
    values = torch.empty((B, k), dtype=torch.float32, device=device)
    indices = torch.empty((B, k), dtype=torch.int64, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    _core.cuda_topk_scores(
        scores_d.data_ptr(), B, N, k, indptr_p, ids_p, nnz,
        values.data_ptr(), indices.data_ptr(), stream,
    )  # fmt: skip
    result = values.cpu().numpy(), indices.cpu().numpy()  # synchronises the stream
    del alive, scores_d
    return result


def _cuda_topk_inner_product(
    queries: NDArray[np.float32],
    items: NDArray[np.float32],
    k: int,
    indptr: NDArray[np.int64] | None,
    ids: NDArray[np.int64] | None,
) -> TopkResult:
    import torch

    _check_k(k)
    if queries.shape[1] != items.shape[1]:
        raise ValueError(
            "queries and items must have the same dimension D, got "
            f"queries {queries.shape} and items {items.shape}"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    (B, D), N = queries.shape, items.shape[0]
    queries_d = torch.from_numpy(queries).to(device)
    items_d = torch.from_numpy(items).to(device)
    alive, indptr_p, ids_p, nnz = _cuda_exclude(indptr, ids, B, N, device)
    values = torch.empty((B, k), dtype=torch.float32, device=device)
    indices = torch.empty((B, k), dtype=torch.int64, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    _core.cuda_topk_inner_product(
        queries_d.data_ptr(), items_d.data_ptr(), B, N, D, k, indptr_p, ids_p, nnz,
        values.data_ptr(), indices.data_ptr(), stream,
    )  # fmt: skip
    result = values.cpu().numpy(), indices.cpu().numpy()  # synchronises the stream
    del alive, queries_d, items_d
    return result
