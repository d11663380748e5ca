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
// Scores: each SIMD level (recserve/simd.h) has two float32 inner products, one per
// path, and a call's path depends only on its batch size B and the level:
//  - B < topk_small_batch(level): the rows path, for small batches. Each item row is
//    read once and summed along d: W-lane chunks of d (W = 16, 8, 1 for avx512, avx2,
//    scalar; the last chunk zero-padded) go round-robin to four accumulators
//    (s = fma(q, x, s), multiply then add at the scalar level), which are added as
//    (a0 + a1) + (a2 + a3), and the W lanes are summed by halving (l + W/2, ..., l + 1).
//  - otherwise the packed path: s = 0; for d in [0, D): s = fma(q[d], x[d], s).
// Within a path every score is that product bit for bit, whatever num_threads, and the
// bfloat16 kernel re-scores with the product of the float32 path for the same B. So
// results never depend on num_threads, bfloat16 results equal float32 results for the
// same call shape, and the same query gives the same result in any batch of the same
// path; across paths (e.g. B = 1 versus B = 64) a score may differ in the last bits,
// which can reorder near-ties.
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
#include <vector>

#include "recserve/simd.h"

namespace recserve {

// Checks a CSR exclusion list for B rows over N items: indptr[0] == 0, non-decreasing,
// indptr[B] == nnz, every id in [0, N). indptr == nullptr means "no exclusion" and
// requires nnz == 0.
void check_exclude_csr(const int64_t* indptr, int64_t B, const int64_t* ids, int64_t nnz,
                       int64_t N);

// A checked CSR exclusion list that owns its data: built once from caller buffers
// (copied, checked as check_exclude_csr does, each row's ids sorted), then immutable,
// so nothing the caller does to its buffers afterwards (another thread, say) can
// change what the kernels read. The bindings build it while holding the GIL and run
// the kernels on it without the GIL; it is the only place the CSR is validated.
class ExcludeList {
public:
    ExcludeList() = default;  // no exclusion
    ExcludeList(const int64_t* indptr, int64_t B, const int64_t* ids, int64_t nnz, int64_t N);

    bool empty() const { return ids_.empty(); }
    int64_t rows() const { return rows_; }
    int64_t num_items() const { return num_items_; }
    // Row b's ids, sorted ascending (b in [0, rows())).
    const int64_t* row_begin(int64_t b) const { return ids_.data() + indptr_[b]; }
    const int64_t* row_end(int64_t b) const { return ids_.data() + indptr_[b + 1]; }

private:
    std::vector<int64_t> indptr_;
    std::vector<int64_t> ids_;
    int64_t rows_ = 0;
    int64_t num_items_ = 0;
};

// Batch size from which topk_inner_product (at `level`) uses the packed path; smaller
// batches use the rows path (see "Scores" above).
int64_t topk_small_batch(SimdLevel level);

// Top-k of each row of scores [B, N]. Uses min(num_threads, B) threads, each taking a
// contiguous range of rows. A vector of scores is compared with the current k-th score
// before any of them touches the heap.
void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, int num_threads = 1,
                 SimdLevel level = default_simd_level());

// Top-k of each row of queries [B, D] @ items [N, D]^T, fused: for a small batch each
// item row is streamed once and W rows' dot products are reduced into one vector of
// scores (rows path); otherwise items are packed a cache-sized block at a time
// (transposed) and scored by a register-blocked micro-kernel against every query
// (packed path). Each vector of scores is compared with its query's k-th score before
// anything touches the heap, and the [B, N] score matrix never exists.
// Threads: with B >= 4 * num_threads they split the queries; otherwise they split the
// items (one heap per thread and query, merged at the end).
void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, int num_threads = 1,
                        SimdLevel level = default_simd_level());

// The same, with the exclusion given as an ExcludeList (empty, or built for B rows and
// N items; anything else throws std::invalid_argument).
void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const ExcludeList& exclude, float* values, int64_t* indices,
                 int num_threads = 1, SimdLevel level = default_simd_level());
void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const ExcludeList& exclude, float* values,
                        int64_t* indices, int num_threads = 1,
                        SimdLevel level = default_simd_level());

// --- bfloat16 item storage ----------------------------------------------------------------

// out[i] = x[i] rounded to bfloat16 (round to nearest, ties to even; NaN stays NaN),
// as the upper 16 bits of a float32.
void to_bfloat16(const float* x, int64_t n, uint16_t* out);

// norms[i] = ||items[i]||_2, computed in double and rounded up to float; +inf when the
// row holds a NaN or an infinity.
void row_norms(const float* items, int64_t N, int64_t D, float* norms);

// The same result as topk_inner_product(queries, items, ...) at the same level, ids and
// values, but the scan reads items_bf16 (to_bfloat16(items)), half the bytes.
//
// Guarantee: for item i let a_i be its score against the bfloat16 item (float32
// arithmetic, any order) and s_i its float32 score (the product of the float32 path
// for this B). Then
//     |a_i - s_i| <= eps * ||q|| * ||x_i|| + delta,
//     eps = (2^-8 + g (2 + 2^-8)) (1 + 2^-10),  g = D u / (1 - D u),  u = 2^-24,
// (2^-8: bfloat16 rounding of the item; g: float32 accumulation, once for a_i and once
// for s_i; 2^-10: slack for the rounding of the bound itself) and delta = (D + 2)
// 2^-120 (1 + ||q||) covers underflow. The scan keeps the k largest lower bounds
// a_i - err_i; an item whose upper bound a_i + err_i is below the final k-th lower bound
// has s_i below k other items' scores and cannot be in the top-k. The survivors are
// re-scored with that float32 product from `items` and selected exactly.
// Items with a huge or non-finite norm (>= 2^100 / max(1, ||q||)) are always
// re-scored; a query with a non-finite entry, or one whose candidates do not fit the
// short list (massive near-ties), is answered by the float32 kernel.
// `norms` must be row_norms(items).
void topk_inner_product_bf16(const float* queries, const float* items,
                             const uint16_t* items_bf16, const float* norms, int64_t B,
                             int64_t N, int64_t D, int64_t k, const int64_t* exclude_indptr,
                             const int64_t* exclude_ids, int64_t nnz, float* values,
                             int64_t* indices, int num_threads = 1,
                             SimdLevel level = default_simd_level());
void topk_inner_product_bf16(const float* queries, const float* items,
                             const uint16_t* items_bf16, const float* norms, int64_t B,
                             int64_t N, int64_t D, int64_t k, const ExcludeList& exclude,
                             float* values, int64_t* indices, int num_threads = 1,
                             SimdLevel level = default_simd_level());

}  // namespace recserve
