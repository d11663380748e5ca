// Top-k selection on the CPU: over a score matrix, and fused with inner-product scoring.
//
// Result contract (shared with the CUDA kernels in csrc/cuda/topk_cuda.cuh):
//  - values[b, :] are row b's k largest scores in descending order; indices[b, :] are
//    their item indices (column of `scores`, row of `items`).
//  - Ties are broken by the smaller index first, so results are deterministic.
//  - NaN scores are never selected. -inf scores are ordinary scores.
//  - Row b never selects an id in exclude_ids[exclude_indptr[b] : exclude_indptr[b+1]]
//    (a CSR list of item indices; duplicates are allowed).
//  - When fewer than k entries are selectable, the tail is padded with index -1 and
//    value -inf.
//
// All buffers are caller-owned, row-major and dense: scores [B, N], queries [B, D],
// items [N, D], values/indices [B, k]. exclude_indptr may be nullptr (no exclusion);
// otherwise it has B + 1 entries and exclude_ids has exclude_indptr[B] entries.
//
// Every entry point checks its arguments before doing any work and throws
// std::invalid_argument (bad shape, k < 0, malformed CSR, num_threads < 1) or
// std::out_of_range (an exclude id outside [0, N)). No argument can make it read or
// write outside the buffers described above.
#pragma once

#include <cstdint>

namespace recserve {

// The SIMD level the CPU kernels were compiled for ("generic": portable C++ written
// so that the compiler can vectorise it with the baseline instruction set).
const char* topk_simd_level();

// Checks a CSR exclusion list for B rows over N items: indptr[0] == 0, non-decreasing,
// indptr[B] == nnz, every id in [0, N). indptr == nullptr means "no exclusion" and
// requires nnz == 0.
void check_exclude_csr(const int64_t* indptr, int64_t B, const int64_t* ids, int64_t nnz,
                       int64_t N);

// Top-k of each row of scores [B, N]. Uses min(num_threads, B) threads, each taking a
// contiguous range of rows.
void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, int num_threads = 1);

// Top-k of each row of queries [B, D] @ items [N, D]^T, without materialising the
// [B, N] score matrix: items are scored a cache-sized block at a time and pushed into
// one bounded heap per query. Same threading as topk_scores.
void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, int num_threads = 1);

}  // namespace recserve
