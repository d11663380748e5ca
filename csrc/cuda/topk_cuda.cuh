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
// What is checked: shapes, 0 <= k <= kMaxK, non-null pointers, all on the host, throwing
// std::invalid_argument. Device-side contents cannot be checked without a copy, so the
// kernels guard every value read from device memory before using it as an address:
// exclusion offsets are clamped to [0, nnz] and an exclude id outside [0, N) is ignored.
// Callers wanting the IndexError contract check the CSR on the host first
// (recserve::check_exclude_csr), as recserve.kernels does.
// CUDA failures throw std::runtime_error. All work is asynchronous on `stream`.
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

// scores [B, N] on the device -> values [B, k], indices [B, k] on the device.
// exclude_indptr (B + 1 entries) may be nullptr for no exclusion; then nnz must be 0.
// With exclusions, selects from a masked copy of the scores in a stream-ordered device
// workspace (a chunk of rows at a time, at most 256 MiB unless one row is larger).
void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, Stream stream);

// queries [B, D] @ items [N, D]^T -> top-k. Scores a chunk of queries at a time into a
// stream-ordered device workspace (at most 256 MiB), then selects from it.
void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
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
