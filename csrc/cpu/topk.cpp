// CPU top-k: argument checks, dispatch to one SIMD level, work split across threads,
// merging. The kernels (heap, packing, micro-kernel, vector rejection) are in
// topk-inl.h, compiled once per level (topk_scalar.cpp, topk_avx2.cpp, topk_avx512.cpp).
#include "recserve/topk.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "recserve/assert.h"

#define RECSERVE_ISA_NS baseline
#define RECSERVE_TOPK_HELPERS_ONLY
#include "topk-inl.h"

namespace recserve {

namespace {

using baseline::heap_finalize;
using baseline::heap_offer;
using baseline::ranks_below;
using detail::Bf16Row;
using detail::ExclusionCursor;
using detail::HeapRow;
using detail::IpPath;
using detail::IsaKernels;

// The kernel table of a level; the only place that turns a level into code.
const IsaKernels& kernels_for(SimdLevel level) {
    RECSERVE_THROW_IF_NOT(simd_level_supported(level),
                          "SIMD level '" << simd_level_name(level)
                                         << "' is not supported by this CPU");
    switch (level) {
        case SimdLevel::kAvx512:
            return avx512::kKernels;
        case SimdLevel::kAvx2:
            return avx2::kKernels;
        case SimdLevel::kScalar:
            break;
    }
    return scalar::kKernels;
}

// Items per packed block: about 16 KB of float32 rows, a multiple of 64.
int64_t block_items(int64_t D) {
    const int64_t fit = (4096 / std::max<int64_t>(1, D)) / 64 * 64;
    return std::clamp<int64_t>(fit, 64, 1024);
}

void check_common(int64_t B, int64_t N, int64_t k, const ExcludeList& exclude,
                  const float* values, const int64_t* indices, int num_threads) {
    RECSERVE_THROW_IF_NOT(B >= 0 && N >= 0, "shape must be non-negative, got B=" << B
                                                                                 << ", N=" << N);
    RECSERVE_THROW_IF_NOT(k >= 0, "k must be >= 0, got k=" << k);
    RECSERVE_THROW_IF_NOT(num_threads >= 1, "num_threads must be >= 1, got " << num_threads);
    RECSERVE_THROW_IF_NOT(B == 0 || k == 0 || (values != nullptr && indices != nullptr),
                          "values and indices must not be null");
    RECSERVE_THROW_IF_NOT(exclude.empty() || (exclude.rows() == B && exclude.num_items() == N),
                          "the exclusion list was built for " << exclude.rows() << " rows and "
                                  << exclude.num_items() << " items, not B=" << B << ", N="
                                  << N);
}

// Row b's exclusion ids from `first_id` on, for a forward-only cursor.
ExclusionCursor row_cursor(const ExcludeList& exclude, int64_t b, int64_t first_id = 0) {
    if (exclude.empty()) {
        return {};
    }
    return {std::lower_bound(exclude.row_begin(b), exclude.row_end(b), first_id),
            exclude.row_end(b)};
}

// Runs body(t) for t in [0, T); the calling thread runs t = 0. body must not throw.
template <typename Body>
void run_threads(int64_t T, const Body& body) {
    if (T <= 1) {
        body(int64_t(0));
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(T - 1));
    try {
        for (int64_t t = 1; t < T; ++t) {
            workers.emplace_back([&body, t] { body(t); });
        }
    } catch (...) {  // could not start a thread: finish what started, then report
        for (auto& w : workers) {
            w.join();
        }
        throw;
    }
    body(int64_t(0));
    for (auto& w : workers) {
        w.join();
    }
}

// How the threads share a call: T contiguous ranges of `chunk` queries (by_items false)
// or items (by_items true).
struct Split {
    bool by_items = false;
    int64_t T = 1;
    int64_t chunk = 0;
};

Split plan_split(int64_t B, int64_t N, int num_threads, int64_t block) {
    Split split;
    const int64_t want = std::max<int64_t>(1, num_threads);
    if (want > 1 && B < 4 * want) {
        split.by_items = true;
        const int64_t per = (N + want - 1) / want;
        split.chunk = std::max<int64_t>(block, (per + block - 1) / block * block);
        split.T = std::max<int64_t>(1, (N + split.chunk - 1) / split.chunk);
        return split;
    }
    const int64_t per = (B + want - 1) / want;
    split.chunk = std::max<int64_t>(8, (per + 7) / 8 * 8);
    split.T = std::max<int64_t>(1, (B + split.chunk - 1) / split.chunk);
    return split;
}

// Merges the per-thread heaps of one query into `out` (any order of offers is fine:
// the full ranking rule is applied).
void merge_into(HeapRow& out, const HeapRow& part) {
    for (int64_t i = 0; i < part.size; ++i) {
        const float v = part.values[i];
        const int64_t id = part.indices[i];
        if (out.size < out.k) {
            baseline::heap_add(out, v, id);
        } else if (ranks_below(out.values[0], out.indices[0], v, id)) {
            baseline::heap_add(out, v, id);
        }
    }
}

// Float32 scan of queries [0, B) into heaps[0, B) (caller-initialised rows) on path P,
// split across threads per plan_split. Used by topk_inner_product and as the fallback
// of the bfloat16 kernel (with the path of the whole call).
// Query q of the scan has exclusion row b0 + q.
void scan_f32(const IpPath& P, const float* queries, const float* items, int64_t B,
              int64_t N, int64_t D, int64_t k, const ExcludeList& exclude, int64_t b0,
              HeapRow* heaps, int num_threads) {
    const int64_t block = block_items(D);
    const Split split = plan_split(B, N, num_threads, block);
    const int64_t work_size = detail::workspace_floats(D, block);
    std::vector<float> work(static_cast<size_t>(split.T * work_size));
    if (!split.by_items) {
        std::vector<ExclusionCursor> cursors(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) {
            cursors[b] = row_cursor(exclude, b0 + b);
        }
        run_threads(split.T, [&](int64_t t) {
            const int64_t q0 = std::min(B, t * split.chunk);
            const int64_t q1 = std::min(B, q0 + split.chunk);
            if (q1 > q0) {
                P.ip_scan(queries + q0 * D, q1 - q0, D, items, 0, N, heaps + q0,
                          cursors.data() + q0, work.data() + t * work_size, block);
            }
        });
        return;
    }
    // By items: thread t scans [t * chunk, (t + 1) * chunk) into its own heaps.
    const int64_t T = split.T;
    std::vector<float> part_values(static_cast<size_t>(T * B * k));
    std::vector<int64_t> part_indices(static_cast<size_t>(T * B * k));
    std::vector<HeapRow> parts(static_cast<size_t>(T * B));
    std::vector<ExclusionCursor> cursors(static_cast<size_t>(T * B));
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = 0; b < B; ++b) {
            const int64_t slot = t * B + b;
            parts[slot] = HeapRow{part_values.data() + slot * k, part_indices.data() + slot * k,
                                  k, 0};
            cursors[slot] = row_cursor(exclude, b0 + b, t * split.chunk);
        }
    }
    run_threads(T, [&](int64_t t) {
        const int64_t j0 = std::min(N, t * split.chunk);
        const int64_t j1 = std::min(N, j0 + split.chunk);
        if (j1 > j0) {
            P.ip_scan(queries, B, D, items, j0, j1, parts.data() + t * B,
                      cursors.data() + t * B, work.data() + t * work_size, block);
        }
    });
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
            merge_into(heaps[b], parts[t * B + b]);
        }
    }
}

float round_up_to_float(double x) {
    float f = static_cast<float>(x);
    if (static_cast<double>(f) < x) {
        f = std::nextafter(f, std::numeric_limits<float>::infinity());
    }
    return f;
}

}  // namespace

ExcludeList::ExcludeList(const int64_t* indptr, int64_t B, const int64_t* ids, int64_t nnz,
                         int64_t N) {
    RECSERVE_THROW_IF_NOT(B >= 0 && N >= 0, "shape must be non-negative, got B=" << B
                                                                                 << ", N=" << N);
    if (indptr == nullptr) {
        RECSERVE_THROW_IF_NOT(nnz == 0, "exclude_ids given without exclude_indptr");
        return;  // no exclusion
    }
    RECSERVE_THROW_IF_NOT(nnz >= 0, "len(exclude_ids) must be >= 0, got " << nnz);
    RECSERVE_THROW_IF_NOT(nnz == 0 || ids != nullptr, "exclude_ids must not be null");
    // Copy first, then check and use only the copy.
    indptr_.assign(indptr, indptr + B + 1);
    ids_.assign(ids, ids + nnz);
    check_exclude_csr(indptr_.data(), B, ids_.data(), nnz, N);
    for (int64_t b = 0; b < B; ++b) {
        std::sort(ids_.begin() + indptr_[b], ids_.begin() + indptr_[b + 1]);
    }
    rows_ = B;
    num_items_ = N;
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

int64_t topk_small_batch(SimdLevel level) {
    return kernels_for(level).small_b;
}

void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, int num_threads, SimdLevel level) {
    const ExcludeList exclude(exclude_indptr, B, exclude_ids, nnz, N);
    topk_scores(scores, B, N, k, exclude, values, indices, num_threads, level);
}

void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const ExcludeList& exclude, float* values, int64_t* indices, int num_threads,
                 SimdLevel level) {
    check_common(B, N, k, exclude, values, indices, num_threads);
    RECSERVE_THROW_IF_NOT(B == 0 || N == 0 || scores != nullptr, "scores must not be null");
    const IsaKernels& K = kernels_for(level);
    if (B == 0 || k == 0) {
        return;
    }
    const int64_t T = std::max<int64_t>(1, std::min<int64_t>(num_threads, B));
    const int64_t chunk = (B + T - 1) / T;
    run_threads(T, [&](int64_t t) {
        const int64_t begin = std::min(B, t * chunk);
        const int64_t end = std::min(B, begin + chunk);
        for (int64_t b = begin; b < end; ++b) {
            HeapRow heap{values + b * k, indices + b * k, k, 0};
            ExclusionCursor cursor = row_cursor(exclude, b);
            K.scores_scan(scores + b * N, N, &heap, &cursor);
            heap_finalize(heap);
        }
    });
}

void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, int num_threads, SimdLevel level) {
    const ExcludeList exclude(exclude_indptr, B, exclude_ids, nnz, N);
    topk_inner_product(queries, items, B, N, D, k, exclude, values, indices, num_threads,
                       level);
}

void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const ExcludeList& exclude, float* values,
                        int64_t* indices, int num_threads, SimdLevel level) {
    check_common(B, N, k, exclude, values, indices, num_threads);
    RECSERVE_THROW_IF_NOT(D >= 0, "D must be >= 0, got " << D);
    RECSERVE_THROW_IF_NOT(B == 0 || D == 0 || queries != nullptr, "queries must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || D == 0 || items != nullptr, "items must not be null");
    const IsaKernels& K = kernels_for(level);
    if (B == 0 || k == 0) {
        return;
    }
    std::vector<HeapRow> heaps(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
        heaps[b] = HeapRow{values + b * k, indices + b * k, k, 0};
    }
    scan_f32(K.path(B), queries, items, B, N, D, k, exclude, 0, heaps.data(), num_threads);
    for (auto& heap : heaps) {
        heap_finalize(heap);
    }
}

void to_bfloat16(const float* x, int64_t n, uint16_t* out) {
    RECSERVE_THROW_IF_NOT(n >= 0, "n must be >= 0, got " << n);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
            out[i] = static_cast<uint16_t>((bits >> 16) | 0x0040u);
            continue;
        }
        bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
        out[i] = static_cast<uint16_t>(bits >> 16);
    }
}

void row_norms(const float* items, int64_t N, int64_t D, float* norms) {
    RECSERVE_THROW_IF_NOT(N >= 0 && D >= 0, "shape must be non-negative");
    for (int64_t i = 0; i < N; ++i) {
        double sum = 0.0;
        for (int64_t d = 0; d < D; ++d) {
            const double x = items[i * D + d];
            sum += x * x;
        }
        const double norm = std::sqrt(sum);
        norms[i] = std::isfinite(norm) ? round_up_to_float(norm * (1.0 + 1e-12))
                                       : std::numeric_limits<float>::infinity();
    }
}

void topk_inner_product_bf16(const float* queries, const float* items,
                             const uint16_t* items_bf16, const float* norms, int64_t B,
                             int64_t N, int64_t D, int64_t k, const int64_t* exclude_indptr,
                             const int64_t* exclude_ids, int64_t nnz, float* values,
                             int64_t* indices, int num_threads, SimdLevel level) {
    const ExcludeList exclude(exclude_indptr, B, exclude_ids, nnz, N);
    topk_inner_product_bf16(queries, items, items_bf16, norms, B, N, D, k, exclude, values,
                            indices, num_threads, level);
}

void topk_inner_product_bf16(const float* queries, const float* items,
                             const uint16_t* items_bf16, const float* norms, int64_t B,
                             int64_t N, int64_t D, int64_t k, const ExcludeList& exclude,
                             float* values, int64_t* indices, int num_threads,
                             SimdLevel level) {
    check_common(B, N, k, exclude, values, indices, num_threads);
    RECSERVE_THROW_IF_NOT(D >= 0, "D must be >= 0, got " << D);
    RECSERVE_THROW_IF_NOT(B == 0 || D == 0 || queries != nullptr, "queries must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || D == 0 || (items != nullptr && items_bf16 != nullptr),
                          "items must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || norms != nullptr, "norms must not be null");
    const IsaKernels& K = kernels_for(level);
    if (B == 0 || k == 0) {
        return;
    }
    const IpPath& P = K.path(B);  // the float32 path of this shape: re-scoring, fallback
    const detail::IpScanBf16 scan = K.bf16_scan(B);
    const int64_t block = block_items(D);
    const Split split = plan_split(B, N, num_threads, block);
    const int64_t T = split.T;
    // Per (thread, query) state when the threads split the items; per query otherwise.
    const int64_t copies = split.by_items ? T : 1;
    const int64_t cap = 2 * k + 1024;
    std::vector<float> lower(static_cast<size_t>(copies * B * k));
    std::vector<int64_t> cand_ids(static_cast<size_t>(copies * B * cap));
    std::vector<float> cand_upper(static_cast<size_t>(copies * B * cap));
    std::vector<Bf16Row> rows(static_cast<size_t>(copies * B));
    std::vector<ExclusionCursor> cursors(static_cast<size_t>(copies * B));

    constexpr double u = 1.0 / (1 << 24);
    const double g = double(D) * u / (1.0 - double(D) * u);
    const double eps = (1.0 / 256 + g * (2.0 + 1.0 / 256)) * (1.0 + 1.0 / 1024);
    const double limit = std::ldexp(1.0, 100);
    for (int64_t b = 0; b < B; ++b) {
        double sum = 0.0;
        bool finite = true;
        for (int64_t d = 0; d < D; ++d) {
            const double x = queries[b * D + d];
            finite = finite && std::isfinite(x);
            sum += x * x;
        }
        const double qnorm = std::sqrt(sum) * (1.0 + 1e-12);
        for (int64_t c = 0; c < copies; ++c) {
            const int64_t slot = c * B + b;
            Bf16Row& r = rows[slot];
            r.lower = lower.data() + slot * k;
            r.k = k;
            r.cand_ids = cand_ids.data() + slot * cap;
            r.cand_upper = cand_upper.data() + slot * cap;
            r.cand_cap = cap;
            r.overflow = !finite || !std::isfinite(qnorm);
            r.slope = round_up_to_float(eps * qnorm);
            r.offset = round_up_to_float(double(D + 2) * std::ldexp(1.0, -120) * (1.0 + qnorm));
            r.norm_limit = static_cast<float>(limit / std::max(1.0, qnorm));
            cursors[slot] = row_cursor(exclude, b, split.by_items ? c * split.chunk : 0);
        }
    }
    const int64_t work_size = detail::workspace_floats(D, block);
    std::vector<float> work(static_cast<size_t>(T * work_size));
    run_threads(T, [&](int64_t t) {
        const int64_t lo = std::min(split.by_items ? N : B, t * split.chunk);
        const int64_t hi = std::min(split.by_items ? N : B, lo + split.chunk);
        if (hi <= lo) {
            return;
        }
        float* w = work.data() + t * work_size;
        if (split.by_items) {
            scan(queries, B, D, items_bf16, norms, lo, hi, rows.data() + t * B,
                           cursors.data() + t * B, w, block);
        } else {
            scan(queries + lo * D, hi - lo, D, items_bf16, norms, 0, N,
                           rows.data() + lo, cursors.data() + lo, w, block);
        }
    });

    // Per query: the final k-th lower bound, then the exact float32 re-scoring of the
    // candidates that can still reach it, in increasing id order.
    std::vector<float> all_lower;
    std::vector<int64_t> fallback;
    for (int64_t b = 0; b < B; ++b) {
        HeapRow heap{values + b * k, indices + b * k, k, 0};
        bool overflow = false;
        all_lower.clear();
        for (int64_t c = 0; c < copies; ++c) {
            const Bf16Row& r = rows[c * B + b];
            overflow = overflow || r.overflow;
            all_lower.insert(all_lower.end(), r.lower, r.lower + r.lower_size);
        }
        if (overflow) {
            fallback.push_back(b);
            continue;
        }
        float tau = -std::numeric_limits<float>::infinity();
        if (static_cast<int64_t>(all_lower.size()) >= k) {
            std::nth_element(all_lower.begin(), all_lower.begin() + (k - 1), all_lower.end(),
                             [](float x, float y) { return x > y; });
            tau = all_lower[k - 1];
        }
        ExclusionCursor none{};  // exclusion was applied during the scan
        for (int64_t c = 0; c < copies; ++c) {
            const Bf16Row& r = rows[c * B + b];
            for (int64_t i = 0; i < r.cand_size; ++i) {
                if (r.cand_upper[i] >= tau) {
                    const int64_t id = r.cand_ids[i];
                    heap_offer(heap, none, P.dot(queries + b * D, items + id * D, D), id);
                }
            }
        }
        heap_finalize(heap);
    }
    for (int64_t b : fallback) {  // rare: answer these queries with the float32 scan
        HeapRow heap{values + b * k, indices + b * k, k, 0};
        scan_f32(P, queries + b * D, items, 1, N, D, k, exclude, b, &heap, num_threads);
        heap_finalize(heap);
    }
}

}  // namespace recserve
