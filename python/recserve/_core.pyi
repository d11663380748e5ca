"""Typed stub of recserve._core, the pybind11 binding of the C++ core (csrc/).

Use recserve.core.kernels instead: it converts inputs, while these functions only check them
(exact ndim, float32/int64 dtype, C-contiguous) and raise ValueError/IndexError.
"""

import numpy as np
from numpy.typing import NDArray

__version__: str
HAS_CUDA: bool
SIMD_LEVEL: str
SUPPORTED_SIMD_LEVELS: tuple[str, ...]

def topk_scores(
    scores: NDArray[np.float32],
    k: int,
    exclude_indptr: NDArray[np.int64] | None = None,
    exclude_ids: NDArray[np.int64] | None = None,
    num_threads: int = 1,
    simd_level: str = "",
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def topk_inner_product(
    queries: NDArray[np.float32],
    items: NDArray[np.float32],
    k: int,
    exclude_indptr: NDArray[np.int64] | None = None,
    exclude_ids: NDArray[np.int64] | None = None,
    num_threads: int = 1,
    simd_level: str = "",
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def topk_inner_product_bf16(
    queries: NDArray[np.float32],
    items: NDArray[np.float32],
    items_bf16: NDArray[np.uint16],
    norms: NDArray[np.float32],
    k: int,
    exclude_indptr: NDArray[np.int64] | None = None,
    exclude_ids: NDArray[np.int64] | None = None,
    num_threads: int = 1,
    simd_level: str = "",
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def topk_small_batch(simd_level: str = "") -> int: ...
def to_bfloat16(x: NDArray[np.float32]) -> NDArray[np.uint16]: ...
def row_norms(items: NDArray[np.float32]) -> NDArray[np.float32]: ...
def check_exclude_csr(
    exclude_indptr: NDArray[np.int64],
    exclude_ids: NDArray[np.int64],
    num_rows: int,
    num_items: int,
) -> None: ...

# Only present when HAS_CUDA. Private: raw device pointers (ints) and a raw cudaStream_t;
# recserve.core.kernels derives them from checked torch tensors.
CUDA_MAX_K: int

def cuda_device_count() -> int: ...
def cuda_topk_scores(
    scores: int,
    B: int,
    N: int,
    k: int,
    exclude_indptr: int,
    exclude_ids: int,
    nnz: int,
    values: int,
    indices: int,
    stream: int,
) -> None: ...
def cuda_topk_inner_product(
    queries: int,
    items: int,
    B: int,
    N: int,
    D: int,
    k: int,
    exclude_indptr: int,
    exclude_ids: int,
    nnz: int,
    values: int,
    indices: int,
    stream: int,
) -> None: ...
def cuda_crossing_deepfm(
    user_scalar: float,
    user_sum: int,
    user_hidden: int,
    item_scalar: int,
    item_sum: int,
    item_hidden: int,
    I: int,
    D: int,
    H1: int,
    rows: NDArray[np.int64] | None,
    linear: int,
    hidden: int,
    stream: int,
) -> None: ...
def cuda_crossing_dcn_first(
    user_x0: int,
    user_hidden: int,
    item_x0: int,
    item_hidden: int,
    I: int,
    DU: int,
    DI: int,
    rows: NDArray[np.int64] | None,
    x0: int,
    x1: int,
    stream: int,
) -> None: ...

# Fused feature crossing (csrc/include/recserve/crossing.h); use recserve.core.crossing.
def crossing_deepfm(
    user_scalar: float,
    user_sum: NDArray[np.float32],
    user_hidden: NDArray[np.float32],
    item_scalar: NDArray[np.float32],
    item_sum: NDArray[np.float32],
    item_hidden: NDArray[np.float32],
    rows: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...
def crossing_dcn_first(
    user_x0: NDArray[np.float32],
    user_hidden: NDArray[np.float32],
    item_x0: NDArray[np.float32],
    item_hidden: NDArray[np.float32],
    rows: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...
