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
and a GPU (and a CUDA build of PyTorch, which owns the device memory) is present.
``backend="auto"`` picks CUDA then (for k <= ``CUDA_MAX_K``), else the CPU; ``"cuda"`` where it
is absent raises ``RuntimeError`` saying why (:func:`resolve_backend`). Inputs and outputs:

* numpy (or anything array-like) in, numpy out, on either backend: the CUDA path copies the
  inputs to the current torch device and the results back;
* torch CUDA tensors (or any object with ``__dlpack__`` on a CUDA device) in, torch CUDA
  tensors out, on the input's device and torch's current stream, with no host copy (only the
  exclusion lists, host data from a request, are checked on the host and uploaded);
* a :class:`DeviceItemMatrix` holds a catalog resident on the device (float32 or bfloat16),
  uploaded once when a model loads. On the GPU a bfloat16 table is scanned as is: scores are
  those of the bfloat16 items (float32 arithmetic), not re-scored in float32 as the CPU's
  :class:`ItemMatrix` path does.

The CUDA kernels (``csrc/cuda/``) select in registers and shared memory (a block-select, as
FAISS's BlockSelect) and never sort or materialise the ``[B, N]`` scores of an inner product.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _core

if TYPE_CHECKING:
    import torch

__all__ = [
    "CUDA_MAX_K",
    "HAS_CUDA",
    "SIMD_LEVEL",
    "SUPPORTED_SIMD_LEVELS",
    "Backend",
    "DeviceItemMatrix",
    "ItemMatrix",
    "available_backends",
    "require_cuda",
    "resolve_backend",
    "topk_inner_product",
    "topk_scores",
]

HAS_CUDA: bool = bool(_core.HAS_CUDA)
"""True when the C++ core was compiled with the CUDA kernels (a GPU may still be absent)."""

SIMD_LEVEL: str = str(_core.SIMD_LEVEL)
"""SIMD level the CPU kernels use: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""

SUPPORTED_SIMD_LEVELS: tuple[str, ...] = tuple(_core.SUPPORTED_SIMD_LEVELS)
"""Levels this CPU can run, from ``"scalar"`` up."""

CUDA_MAX_K: int = int(getattr(_core, "CUDA_MAX_K", 0))
"""Largest k the CUDA kernels take (0 without CUDA); ``"auto"`` uses the CPU above it."""

Backend = Literal["auto", "cpu", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "cpu", "cuda")

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


def require_cuda() -> None:
    """Raise ``RuntimeError`` saying why unless the CUDA backend is usable here."""
    if not HAS_CUDA:
        raise RuntimeError(
            "recserve was built without CUDA; rebuild with RECSERVE_WITH_CUDA=ON "
            "(pip install . -Ccmake.define.RECSERVE_WITH_CUDA=ON, or RECSERVE_WITH_CUDA=ON "
            "in the environment) or use the CPU backend"
        )
    if "cuda" not in _available_backends():
        raise RuntimeError(
            "recserve was built with CUDA but there is no CUDA device usable here (it needs a "
            "visible GPU and a CUDA build of PyTorch); use the CPU backend"
        )


def resolve_backend(backend: str) -> str:
    """The backend ``backend`` (``"auto"``, ``"cpu"`` or ``"cuda"``) stands for here:
    ``"cuda"`` or ``"cpu"``. ``"auto"`` is CUDA when recserve was built with it and a device
    is usable, else the CPU; ``"cuda"`` where that is not so raises ``RuntimeError``
    (:func:`require_cuda`); anything else raises ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "cuda":
        require_cuda()
        return "cuda"
    if backend == "auto" and "cuda" in _available_backends():
        return "cuda"
    return "cpu"


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


class DeviceItemMatrix:
    """Item vectors ``[N, D]`` resident on a CUDA device, as float32 or bfloat16.

    Build it once, when a model loads (the upload is the only host-to-device copy of the
    catalog), and pass it as ``items`` to :func:`topk_inner_product`. ``items`` may be
    array-like (copied to the device once) or a CUDA tensor / DLPack object (converted on the
    device). ``dtype="bfloat16"`` rounds to nearest-even bfloat16 and halves the bytes the
    scan reads; scores are then those of the rounded items. Raises ``RuntimeError`` where
    CUDA is not usable (:func:`require_cuda`).
    """

    def __init__(
        self,
        items: object,
        *,
        dtype: Literal["float32", "bfloat16"] = "float32",
        device: object = None,
    ) -> None:
        require_cuda()
        import torch

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        target = torch.float32 if dtype == "float32" else torch.bfloat16
        tensor = _device_tensor(items)
        if device is None:
            device = tensor.device if tensor is not None else torch.cuda.current_device()
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"a DeviceItemMatrix lives on a CUDA device, got {dev}")
        if tensor is None:
            tensor = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)).to(dev)
        if tensor.ndim != 2:
            raise ValueError(f"items must be 2-D [N, D], got shape {tuple(tensor.shape)}")
        self.data: torch.Tensor = tensor.to(device=dev, dtype=target).contiguous()
        self.dtype = dtype

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __repr__(self) -> str:
        return f"DeviceItemMatrix(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def topk_small_batch() -> int:
    """The batch size from which :func:`topk_inner_product` switches to its packed path at
    this machine's SIMD level. Smaller batches use the per-query path, whose arithmetic
    is the same for every query whatever its batch-mates (recserve.engine.batch_plan
    runs queries in chunks below it, so batching never changes an answer)."""
    return int(_core.topk_small_batch())


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
    k = operator.index(k)
    on_device = _device_tensor(scores)
    if on_device is not None:
        _device_backend(backend, "scores")
        rows, one_row = _tensor_rows(on_device, "scores")
        values_d, indices_d = _cuda_select_scores(rows, k, _exclude_csr(exclude, rows.shape[0]))
        return (values_d[0], indices_d[0]) if one_row else (values_d, indices_d)
    matrix, one_row = _as_rows(scores, "scores")
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
            (with a bfloat16 copy, the CPU scan reads it; the result is the same), or a
            :class:`DeviceItemMatrix` / CUDA tensor (float32 or bfloat16) on the device.
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
    k = operator.index(k)
    queries_d = _device_tensor(queries)
    if isinstance(items, DeviceItemMatrix) or queries_d is not None:
        return _device_inner_product(queries, queries_d, items, k, exclude, backend)
    query_rows, one_row = _as_rows(queries, "queries")
    matrix = items if isinstance(items, ItemMatrix) else None
    item_rows = matrix.float32 if matrix is not None else np.ascontiguousarray(items, np.float32)
    if item_rows.ndim != 2:
        raise ValueError(f"items must be 2-D [N, D], got shape {item_rows.shape}")
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
    """For host inputs: whether to run on CUDA (``"auto"``: only for k <= CUDA_MAX_K)."""
    if resolve_backend(backend) != "cuda":
        return False
    return backend == "cuda" or k <= CUDA_MAX_K


def _device_backend(backend: str, name: str) -> None:
    """Device inputs run on CUDA: ``backend`` must allow it."""
    if resolve_backend(backend) == "cuda":
        return
    if backend == "cpu":
        raise ValueError(
            f"{name} is on a CUDA device but backend='cpu'; pass backend='auto' or 'cuda', "
            f"or move {name} to the host (.cpu().numpy())"
        )
    require_cuda()  # "auto" without CUDA: say why


def _device_tensor(x: object) -> torch.Tensor | None:
    """``x`` as a torch tensor when it lives on a CUDA device (a torch tensor, or any object
    with ``__dlpack__``; no copy), else None (host data: numpy, lists, CPU tensors)."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack_device__"):
        return None
    device_type = x.__dlpack_device__()[0]  # type: ignore[attr-defined]
    if device_type not in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
        return None
    require_cuda()
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)


_DLPACK_CUDA = 2  # DLDeviceType kDLCUDA
_DLPACK_CUDA_MANAGED = 13  # kDLCUDAManaged


def _tensor_rows(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """float32 contiguous [B, M] on x's device; 1-D becomes one row (and is flagged)."""
    import torch

    if x.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {tuple(x.shape)}")
    rows = x.to(torch.float32).contiguous()  # on the device: no host copy
    return (rows.unsqueeze(0), True) if x.ndim == 1 else (rows, False)


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got k={k}")


CSR = tuple["NDArray[np.int64]", "NDArray[np.int64]"] | tuple[None, None]


def _cuda_exclude(
    csr: CSR, num_rows: int, num_items: int, device: torch.device
) -> tuple[list[torch.Tensor], int, int, int]:
    """Check the CSR on the host, sort each row (the kernels binary-search it), upload it;
    returns (keep-alive, indptr pointer, ids pointer, nnz)."""
    import torch

    indptr, ids = csr
    if indptr is None or ids is None or ids.size == 0:
        return [], 0, 0, 0
    _core.check_exclude_csr(indptr, ids, num_rows, num_items)
    row_of = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(indptr))
    ids = np.ascontiguousarray(ids[np.lexsort((ids, row_of))])
    indptr_d = torch.from_numpy(indptr).to(device)
    ids_d = torch.from_numpy(ids).to(device)
    return [indptr_d, ids_d], indptr_d.data_ptr(), ids_d.data_ptr(), int(ids.size)


def _outputs(B: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    values = torch.empty((B, k), dtype=torch.float32, device=device)
    indices = torch.empty((B, k), dtype=torch.int64, device=device)
    return values, indices


def _cuda_select_scores(
    scores: torch.Tensor, k: int, csr: CSR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of device scores [B, N] (float32, contiguous) -> device (values, indices)."""
    import torch

    _check_k(k)
    device = scores.device
    B, N = scores.shape
    with torch.cuda.device(device):
        alive, indptr_p, ids_p, nnz = _cuda_exclude(csr, B, N, device)
        values, indices = _outputs(B, k, device)
        _core.cuda_topk_scores(
            scores.data_ptr(), B, N, k, indptr_p, ids_p, nnz,
            values.data_ptr(), indices.data_ptr(), torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    del alive  # freed in stream order: torch's allocator reuses it only after the kernel
    return values, indices


def _cuda_select_inner_product(
    queries: torch.Tensor, items: torch.Tensor, k: int, csr: CSR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of device queries [B, D] (float32) @ items [N, D].T (float32 or bfloat16)."""
    import torch

    _check_k(k)
    if queries.device != items.device:
        raise ValueError(f"queries are on {queries.device} but items on {items.device}")
    if items.dtype not in (torch.float32, torch.bfloat16):
        items = items.to(torch.float32)
    items = items.contiguous()
    if items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            "queries and items must have the same dimension D, got "
            f"queries {tuple(queries.shape)} and items {tuple(items.shape)}"
        )
    device = queries.device
    (B, D), N = queries.shape, items.shape[0]
    with torch.cuda.device(device):
        alive, indptr_p, ids_p, nnz = _cuda_exclude(csr, B, N, device)
        values, indices = _outputs(B, k, device)
        _core.cuda_topk_inner_product(
            queries.data_ptr(), items.data_ptr(), B, N, D, k, indptr_p, ids_p, nnz,
            values.data_ptr(), indices.data_ptr(), torch.cuda.current_stream().cuda_stream,
            items.dtype == torch.bfloat16,
        )  # fmt: skip
    del alive
    return values, indices


def _cuda_topk_scores(
    scores: NDArray[np.float32],
    k: int,
    indptr: NDArray[np.int64] | None,
    ids: NDArray[np.int64] | None,
) -> TopkResult:
    """Host scores on the GPU: upload, select, copy the results back."""
    import torch

    scores_d = torch.from_numpy(scores).to(torch.device("cuda", torch.cuda.current_device()))
    values, indices = _cuda_select_scores(scores_d, k, (indptr, ids))  # type: ignore[arg-type]
    return values.cpu().numpy(), indices.cpu().numpy()  # synchronises the stream


def _cuda_topk_inner_product(
    queries: NDArray[np.float32],
    items: NDArray[np.float32],
    k: int,
    indptr: NDArray[np.int64] | None,
    ids: NDArray[np.int64] | None,
) -> TopkResult:
    """Host queries and items on the GPU: upload both, select, copy the results back."""
    import torch

    if queries.shape[1] != items.shape[1]:
        raise ValueError(
            "queries and items must have the same dimension D, got "
            f"queries {queries.shape} and items {items.shape}"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    queries_d = torch.from_numpy(queries).to(device)
    items_d = torch.from_numpy(items).to(device)
    values, indices = _cuda_select_inner_product(queries_d, items_d, k, (indptr, ids))  # type: ignore[arg-type]
    return values.cpu().numpy(), indices.cpu().numpy()  # synchronises the stream


def _device_inner_product(
    queries: object,
    queries_d: torch.Tensor | None,
    items: object,
    k: int,
    exclude: Sequence[ArrayLike] | None,
    backend: str,
) -> TopkResult | tuple[torch.Tensor, torch.Tensor]:
    """topk_inner_product with device items or device queries: results on the device for
    device queries, numpy for host queries."""
    import torch

    _device_backend(backend, "items" if queries_d is None else "queries")
    if isinstance(items, DeviceItemMatrix):
        items_d = items.data
    else:
        items_d = _device_tensor(items)
        if items_d is None:
            raise ValueError(
                "queries are on a CUDA device, so items must be too: pass a DeviceItemMatrix "
                "(uploaded once) or a CUDA tensor"
            )
    host = queries_d is None
    if host:
        rows_np, one_row = _as_rows(queries, "queries")
        rows = torch.from_numpy(rows_np).to(items_d.device)
    else:
        rows, one_row = _tensor_rows(queries_d, "queries")
    values, indices = _cuda_select_inner_product(
        rows, items_d, k, _exclude_csr(exclude, rows.shape[0])
    )
    if host:
        values, indices = values.cpu().numpy(), indices.cpu().numpy()  # type: ignore[assignment]
    return (values[0], indices[0]) if one_row else (values, indices)  # type: ignore[return-value]
