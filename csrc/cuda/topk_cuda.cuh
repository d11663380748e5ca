// Top-k on the GPU: the same two kernels and the same result contract as the CPU API in
// recserve/topk.h, on device pointers, enqueued on an explicit stream.
//
// This header is also included by the (host-compiler-built) binding, so it declares the
// stream type itself instead of including the CUDA headers: recserve::cuda::Stream is
// exactly cudaStream_t (`struct CUstream_st*`), checked by a static_assert in the .cu.
//
// Result contract (see recserve/topk.h): per row the k largest scores, descending, ties
// to the smaller index, NaN never selected, row b never selects an id in
// exclude_ids[exclude_indptr[b] : exclude_indptr[b+1]], padded with (-inf, -1).
//
// Exclusion is applied inside the selection: a candidate that passes the threshold is
// looked up (binary search) in its row's exclusion list, which must be sorted ascending
// per row (recserve.core.kernels sorts it on the host; an unsorted row may let an
// excluded id through, but never reads outside the list).
//
// What is checked: shapes, 0 <= k <= kMaxK, N < 2^31, non-null pointers, all on the host,
// throwing std::invalid_argument. Device-side contents cannot be checked without a copy, so
// the kernels guard every value read from device memory before using it as an address:
// exclusion offsets are clamped to [0, nnz], and exclusion ids are only compared, never
// used as addresses. Callers wanting the IndexError contract check the CSR on the host
// first (recserve::check_exclude_csr), as recserve.core.kernels does.
//
// Selection is a block-select (csrc/cuda/select.cuh): per-thread register queues, a
// per-query queue of K2 >= k pairs in shared memory merged by a bitonic sort of a few
// thousand pairs at most, one instantiation per K2 (topk_k<K2>.cu). A catalog too large for
// one block per query is split across blocks and their partial lists merged by a second
// pass; batches of queries share each tile of the item matrix (csrc/cuda/topk_launch.cuh).
// CUDA failures throw std::runtime_error. All work is asynchronous on `stream`, with no
// host synchronisation (workspaces are stream-ordered: cudaMallocAsync).
#pragma once

#include <cstdint>

struct CUstream_st;

namespace recserve {
namespace cuda {

using Stream = CUstream_st*;  // == cudaStream_t

// Largest k the GPU selection accepts; larger k must use the CPU kernels.
constexpr int64_t kMaxK = 1024;

// Number of visible CUDA devices; 0 when there is no driver or no device.
int device_count();

// Largest N (candidates per row) the GPU selection accepts: ids are int32 inside it.
constexpr int64_t kMaxN = int64_t(0x7fffffff);

// scores [B, N] on the device -> values [B, k], indices [B, k] on the device.
// exclude_indptr (B + 1 entries) may be nullptr for no exclusion; then nnz must be 0.
void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, Stream stream);

// queries [B, D] @ items [N, D]^T -> top-k, fused: the [B, N] scores never exist.
// Scores are float32, s = fma(q[d], x[d], s) for d ascending from s = 0 (the CPU packed
// path's product, recserve/topk.h).
void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, Stream stream);

// The same over bfloat16 items (uint16 bit patterns, e.g. torch.bfloat16 storage): each
// item value is widened exactly to float32 and the score is computed as above, so the
// result is exactly topk_inner_product on the widened items. Unlike the CPU's
// topk_inner_product_bf16 there is no float32 re-scoring: scores are those of the
// bfloat16 items.
void topk_inner_product_bf16(const float* queries, const uint16_t* items_bf16, int64_t B,
                             int64_t N, int64_t D, int64_t k, const int64_t* exclude_indptr,
                             const int64_t* exclude_ids, int64_t nnz, float* values,
                             int64_t* indices, Stream stream);

}  // namespace cuda
}  // namespace recserve

#ifdef __CUDACC__
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

// Throws std::runtime_error naming the failed call when a CUDA runtime call fails. Use
// CHECK_CUDA(cudaGetLastError()) right after every kernel launch.
#define CHECK_CUDA(call)                                                                 \
    do {                                                                                 \
        const cudaError_t recserve_err_ = (call);                                        \
        if (recserve_err_ != cudaSuccess) {                                              \
            throw std::runtime_error(std::string("CUDA error: ") +                       \
                                     cudaGetErrorString(recserve_err_) + " in " #call    \
                                     " at " __FILE__ ":" + std::to_string(__LINE__));    \
        }                                                                                \
    } while (false)
#endif  // __CUDACC__
