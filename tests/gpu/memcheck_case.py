"""A small call of each CUDA kernel and path, for compute-sanitizer (tests/gpu/run.sh):
one-block and split catalogs, the batched path, exclusion, float32 and bfloat16 items,
k = 1 and k = 1024, precomputed scores, and both crossing kernels. Run it with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so each torch buffer is its own allocation."""

from __future__ import annotations

import numpy as np
import torch

from recserve.core.kernels import DeviceItemMatrix, topk_inner_product, topk_scores
from recserve.engine.crossing import (
    DeviceItemTables,
    ItemTables,
    crossing_dcn_first_cuda,
    crossing_deepfm_cuda,
)

rng = np.random.default_rng(0)
f32 = np.float32
for N, D, B, k in [(33, 3, 1, 1), (5000, 97, 7, 100), (20_003, 64, 2, 1024), (3000, 64, 9, 32)]:
    items = rng.standard_normal((N, D)).astype(f32)
    queries = rng.standard_normal((B, D)).astype(f32)
    exclude = [rng.integers(0, N, 5) for _ in range(B)]
    for dtype in ("float32", "bfloat16"):
        topk_inner_product(queries, DeviceItemMatrix(items, dtype=dtype), k, exclude)
    topk_scores(queries @ items.T, k, exclude, backend="cuda")
I = 1000
tables = ItemTables(*(rng.standard_normal(s).astype(f32) for s in (I, (I, 16), (I, 64), (I, 0))))
crossing_deepfm_cuda(
    0.5, np.ones(16), np.ones(64), DeviceItemTables.upload(tables), rng.integers(0, I, 77)
)
dcn = ItemTables(*(rng.standard_normal(s).astype(f32) for s in (I, (I, 0), (I, 40), (I, 24))))
crossing_dcn_first_cuda(
    np.ones(16), np.ones(40), DeviceItemTables.upload(dcn), rng.integers(0, I, 77)
)
torch.cuda.synchronize()
print("memcheck case: every kernel ran")
