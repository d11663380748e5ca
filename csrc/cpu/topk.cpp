// CPU top-k: argument checks, per-thread row ranges, and the two row loops.
// The kernels themselves (heap, exclusion cursor, dot product) are in topk-inl.h.
#include "recserve/topk.h"

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

#include "recserve/assert.h"
#include "topk-inl.h"

namespace recserve {

namespace {

// Item block of the fused kernel: about this many bytes of item rows are scored
// against every query of a group while they are hot in cache.
constexpr int64_t kItemBlockBytes = 64 * 1024;
constexpr int64_t kMaxItemBlock = 1024;
// Queries of one group share each item block.
constexpr int64_t kQueryGroup = 16;

void check_common(int64_t B, int64_t N, int64_t k, const int64_t* exclude_indptr,
                  const int64_t* exclude_ids, int64_t nnz, const float* values,
                  const int64_t* indices, int num_threads) {
    RECSERVE_THROW_IF_NOT(B >= 0 && N >= 0, "shape must be non-negative, got B=" << B
                                                                                 << ", N=" << N);
    RECSERVE_THROW_IF_NOT(k >= 0, "k must be >= 0, got k=" << k);
    RECSERVE_THROW_IF_NOT(num_threads >= 1, "num_threads must be >= 1, got " << num_threads);
    RECSERVE_THROW_IF_NOT(B == 0 || k == 0 || (values != nullptr && indices != nullptr),
                          "values and indices must not be null");
    check_exclude_csr(exclude_indptr, B, exclude_ids, nnz, N);
}

// Copies the exclusion ids and sorts each row's slice, so rows can be read with a
// forward-only cursor. Empty when there is no exclusion.
std::vector<int64_t> sorted_exclusion(const int64_t* indptr, int64_t B, const int64_t* ids,
                                      int64_t nnz) {
    std::vector<int64_t> sorted;
    if (indptr == nullptr || nnz == 0) {
        return sorted;
    }
    sorted.assign(ids, ids + nnz);
    for (int64_t b = 0; b < B; ++b) {
        std::sort(sorted.begin() + indptr[b], sorted.begin() + indptr[b + 1]);
    }
    return sorted;
}

detail::SortedExclusion row_exclusion(const int64_t* indptr, const std::vector<int64_t>& sorted,
                                      int64_t b) {
    if (sorted.empty()) {
        return {};
    }
    return {sorted.data() + indptr[b], sorted.data() + indptr[b + 1]};
}

// Runs body(thread, row_begin, row_end) over [0, B) split into T = min(num_threads, B)
// contiguous ranges, thread in [0, T); the calling thread takes the first range.
// body must not throw.
template <typename Body>
void parallel_rows(int64_t B, int num_threads, const Body& body) {
    const int64_t T = std::max<int64_t>(1, std::min<int64_t>(num_threads, B));
    if (T == 1) {
        body(int64_t(0), int64_t(0), B);
        return;
    }
    const int64_t chunk = (B + T - 1) / T;
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(T - 1));
    try {
        for (int64_t t = 1; t < T; ++t) {
            const int64_t begin = std::min(B, t * chunk);
            const int64_t end = std::min(B, begin + chunk);
            workers.emplace_back([&body, t, begin, end] { body(t, begin, end); });
        }
    } catch (...) {  // could not start a thread: finish what started, then report
        for (auto& w : workers) {
            w.join();
        }
        throw;
    }
    body(int64_t(0), int64_t(0), std::min(B, chunk));
    for (auto& w : workers) {
        w.join();
    }
}

}  // namespace

const char* topk_simd_level() {
    return "generic";
}

void check_exclude_csr(const int64_t* indptr, int64_t B, const int64_t* ids, int64_t nnz,
                       int64_t N) {
    RECSERVE_THROW_IF_NOT(nnz >= 0, "len(exclude_ids) must be >= 0, got " << nnz);
    if (indptr == nullptr) {
        RECSERVE_THROW_IF_NOT(nnz == 0, "exclude_ids given without exclude_indptr");
        return;
    }
    RECSERVE_THROW_IF_NOT(nnz == 0 || ids != nullptr, "exclude_ids must not be null");
    RECSERVE_THROW_IF_NOT(indptr[0] == 0, "exclude_indptr[0] must be 0, got " << indptr[0]);
    for (int64_t b = 0; b < B; ++b) {
        RECSERVE_THROW_IF_NOT(indptr[b + 1] >= indptr[b],
                              "exclude_indptr must be non-decreasing, but exclude_indptr["
                                      << b + 1 << "]=" << indptr[b + 1] << " < exclude_indptr["
                                      << b << "]=" << indptr[b]);
    }
    RECSERVE_THROW_IF_NOT(indptr[B] == nnz, "exclude_indptr[-1] must equal len(exclude_ids)="
                                                    << nnz << ", got " << indptr[B]);
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t e = indptr[b]; e < indptr[b + 1]; ++e) {
            RECSERVE_THROW_OUT_OF_RANGE_IF_NOT(
                    ids[e] >= 0 && ids[e] < N,
                    "exclude id " << ids[e] << " (query row " << b << ") is out of range for N="
                                  << N << " items; exclude ids are item row indices in [0, N)");
        }
    }
}

void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, int num_threads) {
    check_common(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices, num_threads);
    RECSERVE_THROW_IF_NOT(B == 0 || N == 0 || scores != nullptr, "scores must not be null");
    if (B == 0 || k == 0) {
        return;
    }
    const std::vector<int64_t> sorted = sorted_exclusion(exclude_indptr, B, exclude_ids, nnz);

    parallel_rows(B, num_threads, [&](int64_t /*thread*/, int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
            detail::TopkHeap heap(values + b * k, indices + b * k, k);
            detail::SortedExclusion exclusion = row_exclusion(exclude_indptr, sorted, b);
            detail::offer_block(scores + b * N, N, 0, heap, exclusion);
            heap.finalize();
        }
    });
}

void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, int num_threads) {
    check_common(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices, num_threads);
    RECSERVE_THROW_IF_NOT(D >= 0, "D must be >= 0, got " << D);
    RECSERVE_THROW_IF_NOT(B == 0 || D == 0 || queries != nullptr, "queries must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || D == 0 || items != nullptr, "items must not be null");
    if (B == 0 || k == 0) {
        return;
    }
    const std::vector<int64_t> sorted = sorted_exclusion(exclude_indptr, B, exclude_ids, nnz);
    const int64_t item_block = std::clamp<int64_t>(
            kItemBlockBytes / std::max<int64_t>(1, D * int64_t(sizeof(float))), 16, kMaxItemBlock);
    const int64_t T = std::max<int64_t>(1, std::min<int64_t>(num_threads, B));
    // One score buffer per thread, allocated here so that the workers never allocate.
    std::vector<float> block_scores(static_cast<size_t>(T * item_block));

    parallel_rows(B, num_threads, [&](int64_t thread, int64_t begin, int64_t end) {
        RECSERVE_ASSERT(thread < T);
        float* buf = block_scores.data() + thread * item_block;
        for (int64_t q0 = begin; q0 < end; q0 += kQueryGroup) {
            const int64_t nq = std::min(kQueryGroup, end - q0);
            detail::TopkHeap group_heaps[kQueryGroup];
            detail::SortedExclusion exclusions[kQueryGroup];
            for (int64_t q = 0; q < nq; ++q) {
                const int64_t b = q0 + q;
                group_heaps[q] = detail::TopkHeap(values + b * k, indices + b * k, k);
                exclusions[q] = row_exclusion(exclude_indptr, sorted, b);
            }
            for (int64_t j0 = 0; j0 < N; j0 += item_block) {
                const int64_t nb = std::min(item_block, N - j0);
                for (int64_t q = 0; q < nq; ++q) {
                    detail::score_block(queries + (q0 + q) * D, items + j0 * D, nb, D, buf);
                    detail::offer_block(buf, nb, j0, group_heaps[q], exclusions[q]);
                }
            }
            for (int64_t q = 0; q < nq; ++q) {
                group_heaps[q].finalize();
            }
        }
    });
}

}  // namespace recserve
