// Top-k kernels, written once and compiled once per SIMD level.
//
// Part 1 (namespace recserve::detail) is the interface between topk.cpp, which checks
// arguments, splits work across threads and merges, and the per-ISA translation units
// (topk_scalar.cpp, topk_avx2.cpp, topk_avx512.cpp): plain structs and a table of
// function pointers, one constant table per level. It holds no code.
//
// Part 2 is the code. Each translation unit defines RECSERVE_ISA_NS (its own namespace)
// and, for the SIMD ones, a vector-traits struct `V`, then includes this file, so that
// every inline function here is compiled separately with that unit's flags and lives
// in that unit's namespace: an AVX-512 copy of a helper can never be linked into the
// baseline code (the ODR trap of compiling one inline function with several flag sets).
//
// Everything here works on caller-owned, already-checked buffers: nothing allocates or
// throws.
#ifndef RECSERVE_CPU_TOPK_INL_INTERFACE
#define RECSERVE_CPU_TOPK_INL_INTERFACE

#include <cstdint>
#include <cstring>
#include <limits>

namespace recserve {
namespace detail {

// The k best (score, index) pairs seen so far for one query: a binary heap in the
// caller-owned row values/indices (capacity k) whose root is the worst pair kept.
struct HeapRow {
    float* values = nullptr;
    int64_t* indices = nullptr;
    int64_t k = 0;
    int64_t size = 0;
};

// One query's exclusion ids, sorted ascending, read with a forward-only cursor.
struct ExclusionCursor {
    const int64_t* cur = nullptr;
    const int64_t* end = nullptr;
};

// State of one query of the bfloat16 scan (see topk_inner_product_bf16 in topk.h).
//   lower[0, lower_size): min-heap of the k largest lower bounds seen (capacity k).
//   cand_ids/cand_upper[0, cand_size): candidates (increasing id) and their upper bounds,
//   capacity cand_cap; `overflow` is set if they did not fit (the caller then falls
//   back to the float32 scan for this query).
//   slope, offset: the error bound of an item is slope * norm + offset.
struct Bf16Row {
    float* lower = nullptr;
    int64_t lower_size = 0;
    int64_t k = 0;
    int64_t* cand_ids = nullptr;
    float* cand_upper = nullptr;
    int64_t cand_size = 0;
    int64_t cand_cap = 0;
    bool overflow = false;
    float slope = 0.f;
    float offset = 0.f;
    // Items with norm >= norm_limit (or a non-finite norm, stored as +inf) have no
    // usable bound: they are always candidates, with upper bound +inf.
    float norm_limit = 0.f;
};

using IpScan = void (*)(const float* queries, int64_t nq, int64_t D, const float* items,
                       int64_t j_begin, int64_t j_end, HeapRow* heaps, ExclusionCursor* excl,
                       float* work, int64_t block);
using IpScanBf16 = void (*)(const float* queries, int64_t nq, int64_t D,
                            const uint16_t* items, const float* norms, int64_t j_begin,
                            int64_t j_end, Bf16Row* rows, ExclusionCursor* excl, float* work,
                            int64_t block);
using Dot = float (*)(const float* q, const float* x, int64_t D);

// The float32 inner product of one path of one level, and its scans. ip_* scan items
// [j_begin, j_end) for nq queries (rows of `queries`, stride D); `work` has
// workspace_floats(D, block) floats, and `block` (items per block) is a multiple of 64.
struct IpPath {
    // The path's float32 inner product: every float32 score of the path equals it bit
    // for bit (scan, any thread count, bf16 re-scoring).
    Dot dot;
    IpScan ip_scan;
    IpScanBf16 ip_scan_bf16;
};

// The kernels of one SIMD level. A float32 call with B < small_b queries takes the
// `rows` path (each item row streamed once, dot product along d), any other B the
// `packed` path (items packed dimension-major, register-blocked micro-kernel). The
// choice depends on B and the level only, never on the thread count. The bfloat16 scan
// (any summation order is fine there) picks its path by small_b_bf16; its exact
// re-scoring and its fallback use path(B), as a float32 call of the same shape does.
struct IsaKernels {
    const char* name;
    int64_t small_b;
    int64_t small_b_bf16;
    IpPath packed;
    IpPath rows;
    void (*scores_scan)(const float* scores, int64_t n, HeapRow* heap, ExclusionCursor* excl);

    const IpPath& path(int64_t B) const { return B < small_b ? rows : packed; }
    IpScanBf16 bf16_scan(int64_t B) const {
        return B < small_b_bf16 ? rows.ip_scan_bf16 : packed.ip_scan_bf16;
    }
};

inline int64_t workspace_floats(int64_t D, int64_t block) {
    return block * (D > 0 ? D : 1) + 64;
}

}  // namespace detail

namespace scalar {
extern const detail::IsaKernels kKernels;
}
namespace avx2 {
extern const detail::IsaKernels kKernels;
}
namespace avx512 {
extern const detail::IsaKernels kKernels;
}

}  // namespace recserve

#endif  // RECSERVE_CPU_TOPK_INL_INTERFACE

// ---------------------------------------------------------------------------------------
#ifdef RECSERVE_ISA_NS
#ifndef RECSERVE_CPU_TOPK_INL_CODE
#define RECSERVE_CPU_TOPK_INL_CODE

namespace recserve {
namespace RECSERVE_ISA_NS {

using detail::Bf16Row;
using detail::ExclusionCursor;
using detail::HeapRow;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// True when (av, ai) ranks below (bv, bi): a smaller score, or an equal score with a
// larger index (ties go to the smaller index).
inline bool ranks_below(float av, int64_t ai, float bv, int64_t bi) {
    return av < bv || (av == bv && ai > bi);
}

// Places (v, id) at slot i of a heap of n slots, moving worse children up.
inline void heap_sift_down(HeapRow& h, int64_t i, int64_t n, float v, int64_t id) {
    for (;;) {
        int64_t child = 2 * i + 1;
        if (child >= n) {
            break;
        }
        if (child + 1 < n && ranks_below(h.values[child + 1], h.indices[child + 1],
                                         h.values[child], h.indices[child])) {
            ++child;  // the worse of the two children
        }
        if (!ranks_below(h.values[child], h.indices[child], v, id)) {
            break;
        }
        h.values[i] = h.values[child];
        h.indices[i] = h.indices[child];
        i = child;
    }
    h.values[i] = v;
    h.indices[i] = id;
}

// Adds (v, id); if the heap is full, the root must rank below (v, id).
inline void heap_add(HeapRow& h, float v, int64_t id) {
    if (h.size < h.k) {
        int64_t i = h.size++;
        while (i > 0) {  // sift up: the new pair moves above better parents
            const int64_t parent = (i - 1) / 2;
            if (!ranks_below(v, id, h.values[parent], h.indices[parent])) {
                break;
            }
            h.values[i] = h.values[parent];
            h.indices[i] = h.indices[parent];
            i = parent;
        }
        h.values[i] = v;
        h.indices[i] = id;
    } else {
        heap_sift_down(h, 0, h.size, v, id);
    }
}

// Sorts the kept pairs best first and pads slots [size, k) with (-inf, -1).
inline void heap_finalize(HeapRow& h) {
    for (int64_t n = h.size; n > 1; --n) {
        const float v = h.values[n - 1];
        const int64_t id = h.indices[n - 1];
        h.values[n - 1] = h.values[0];
        h.indices[n - 1] = h.indices[0];
        heap_sift_down(h, 0, n - 1, v, id);
    }
    for (int64_t i = h.size; i < h.k; ++i) {
        h.values[i] = kNegInf;
        h.indices[i] = -1;
    }
}

// Scores below this cannot enter the heap: -inf while it is not full (so every
// non-NaN score passes a `score >= threshold` test), else the root's score. The
// vector pre-test uses >=; heap_offer then applies the exact rule.
inline float heap_threshold(const HeapRow& h) {
    return h.size < h.k ? kNegInf : h.values[0];
}

inline bool excluded(ExclusionCursor& e, int64_t id) {
    while (e.cur != e.end && *e.cur < id) {
        ++e.cur;
    }
    return e.cur != e.end && *e.cur == id;
}

// Offers (v, id) to the heap. Callers offer each query's candidates in increasing id
// order, so a candidate whose score ties the root's ranks below it: `v > root` is the
// exact admission test for a full heap.
inline void heap_offer(HeapRow& h, ExclusionCursor& e, float v, int64_t id) {
    if (h.size == h.k) {
        if (!(v > h.values[0])) {  // also rejects NaN
            return;
        }
    } else if (v != v) {  // NaN is never selected
        return;
    }
    if (excluded(e, id)) {
        return;
    }
    heap_add(h, v, id);
}

// --- bfloat16 scan: lower-bound heap and candidate list --------------------------------

inline float lower_threshold(const Bf16Row& r) {
    return r.lower_size < r.k ? kNegInf : r.lower[0];
}

// Pushes a lower bound into the min-heap of the k largest.
inline void lower_push(Bf16Row& r, float v) {
    float* h = r.lower;
    if (r.lower_size < r.k) {
        int64_t i = r.lower_size++;
        while (i > 0) {
            const int64_t parent = (i - 1) / 2;
            if (!(v < h[parent])) {
                break;
            }
            h[i] = h[parent];
            i = parent;
        }
        h[i] = v;
        return;
    }
    if (!(v > h[0])) {
        return;
    }
    const int64_t n = r.lower_size;
    int64_t i = 0;
    for (;;) {
        int64_t child = 2 * i + 1;
        if (child >= n) {
            break;
        }
        if (child + 1 < n && h[child + 1] < h[child]) {
            ++child;
        }
        if (!(h[child] < v)) {
            break;
        }
        h[i] = h[child];
        i = child;
    }
    h[i] = v;
}

// Drops candidates whose upper bound is below the current k-th lower bound.
inline void compact_candidates(Bf16Row& r) {
    const float tau = lower_threshold(r);
    int64_t kept = 0;
    for (int64_t c = 0; c < r.cand_size; ++c) {
        if (r.cand_upper[c] >= tau) {
            r.cand_ids[kept] = r.cand_ids[c];
            r.cand_upper[kept] = r.cand_upper[c];
            ++kept;
        }
    }
    r.cand_size = kept;
}

// An item whose approximate score is `approx` and error bound `err`: it is a candidate
// while its upper bound reaches the k-th largest lower bound. An `unbounded` item is
// always a candidate and adds no lower bound.
inline void bf16_offer(Bf16Row& r, ExclusionCursor& e, float approx, float err, int64_t id,
                       bool unbounded) {
    const float upper = unbounded ? std::numeric_limits<float>::infinity() : approx + err;
    if (!(upper >= lower_threshold(r)) || r.overflow || excluded(e, id)) {
        return;
    }
    if (!unbounded) {
        lower_push(r, approx - err);
    }
    if (r.cand_size == r.cand_cap) {
        compact_candidates(r);
        if (r.cand_size > r.cand_cap / 2) {  // near-ties everywhere: give up on bf16
            r.overflow = true;
            return;
        }
    }
    r.cand_ids[r.cand_size] = id;
    r.cand_upper[r.cand_size] = upper;
    ++r.cand_size;
}



#ifndef RECSERVE_TOPK_HELPERS_ONLY
// --- the kernels, over the unit's vector traits V -----------------------------------------
//
// V (defined by the including unit) has: W lanes of float in V::T; kQB x kG, the
// register block of the batched micro-kernel (queries x groups of W items) and kG1, the
// groups per step for a single query; kSmallB and kSmallBBf16, the batch sizes from
// which the packed path is used for float32 and for the bfloat16 scan (below them, the
// rows path); kRowsQ, the queries that share each item row load on the rows path;
// zero, set1, load (W floats), load_n (the first n of W floats or bfloat16 values, the
// rest 0), store, fmadd, add, ge_mask (bit l set when a[l] >= b[l], false for NaN),
// transpose (W x W, in registers), fma1 (scalar fused multiply-add, or multiply then
// add for the scalar level), hsum (the lanes of one vector summed by halving) and
// tree_reduce (lane i = hsum(h[i]), for W vectors).
//
// Packed-path score: s = 0; for d in [0, D): s = fma1(q[d], x[d], s). The batched
// kernel keeps one accumulator per (query, item) and runs the same chain, vectorised
// across items, so every packed score of one level is bit-identical to dot_packed.
// Rows-path score: see row_partials below; bit-identical to dot_rows.

inline int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
}

inline uint32_t first_bits(int64_t n) {
    return n >= 32 ? 0xffffffffu : (uint32_t(1) << n) - 1u;
}

inline float dot_packed(const float* q, const float* x, int64_t D) {
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) {
        s = V::fma1(q[d], x[d], s);
    }
    return s;
}

// Packs items [j0, j0 + n) (rows of `items`, stride D; float or bfloat16) into xt as
// groups of W items, each group D vectors of W floats (dimension-major); items past n
// in the last group are 0.
template <class Src>
inline void pack_block(const Src* items, int64_t D, int64_t j0, int64_t n, float* xt) {
    using T = typename V::T;
    constexpr int W = V::W;
    const int64_t groups = (n + W - 1) / W;
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t rows = imin(W, n - g * W);
        const Src* base = items + (j0 + g * W) * D;
        float* out = xt + g * D * W;
        for (int64_t d0 = 0; d0 < D; d0 += W) {
            const int dn = int(imin(W, D - d0));
            T r[W];
            for (int i = 0; i < W; ++i) {
                r[i] = i < rows ? V::load_n(base + i * D + d0, dn) : V::zero();
            }
            V::transpose(r);
            for (int dd = 0; dd < dn; ++dd) {
                V::store(out + (d0 + dd) * W, r[dd]);
            }
        }
    }
}

// Scores QB queries (rows q, stride D) against G packed groups starting at group g0 of
// the block (whose first item is j0 and which holds n items) and hands each (query,
// group) vector of W scores to the sink.
template <int QB, int G, class Sink>
inline void micro_tile(const float* q, int64_t D, const float* xt, int64_t q0, int64_t g0,
                       int64_t j0, int64_t n, Sink& sink) {
    using T = typename V::T;
    constexpr int W = V::W;
    T acc[QB][G];
    for (int i = 0; i < QB; ++i) {
        for (int g = 0; g < G; ++g) {
            acc[i][g] = V::zero();
        }
    }
    const float* x = xt + g0 * D * W;
    for (int64_t d = 0; d < D; ++d) {
        T xv[G];
        for (int g = 0; g < G; ++g) {
            xv[g] = V::load(x + (g * D + d) * W);
        }
        for (int i = 0; i < QB; ++i) {
            const T qv = V::set1(q[i * D + d]);
            for (int g = 0; g < G; ++g) {
                acc[i][g] = V::fmadd(qv, xv[g], acc[i][g]);
            }
        }
    }
    for (int g = 0; g < G; ++g) {
        const int64_t first = (g0 + g) * W;
        const int count = int(imin(W, n - first));
        for (int i = 0; i < QB; ++i) {
            sink.offer(q0 + i, j0 + first, count, acc[i][g]);
        }
    }
}

template <int QB, int G, class Sink>
inline void queries_over_block(const float* queries, int64_t D, const float* xt, int64_t q0,
                               int64_t j0, int64_t n, Sink& sink) {
    const int64_t groups = (n + V::W - 1) / V::W;
    int64_t g0 = 0;
    for (; g0 + G <= groups; g0 += G) {
        micro_tile<QB, G>(queries + q0 * D, D, xt, q0, g0, j0, n, sink);
    }
    for (; g0 < groups; ++g0) {
        micro_tile<QB, 1>(queries + q0 * D, D, xt, q0, g0, j0, n, sink);
    }
}

// Streams items [j_begin, j_end) a packed block at a time; every query group is scored
// against a block while it is in cache. Each query sees its items in increasing order.
template <class Src, class Sink>
inline void scan_items(const float* queries, int64_t nq, int64_t D, const Src* items,
                       int64_t j_begin, int64_t j_end, float* xt, int64_t block, Sink& sink) {
    for (int64_t j0 = j_begin; j0 < j_end; j0 += block) {
        const int64_t n = imin(block, j_end - j0);
        pack_block(items, D, j0, n, xt);
        if (nq == 1) {
            queries_over_block<1, V::kG1>(queries, D, xt, 0, j0, n, sink);
            continue;
        }
        int64_t q = 0;
        for (; q + V::kQB <= nq; q += V::kQB) {
            queries_over_block<V::kQB, V::kG>(queries, D, xt, q, j0, n, sink);
        }
        if (V::kQB > 4 && nq - q >= 4) {
            queries_over_block<4, V::kG>(queries, D, xt, q, j0, n, sink);
            q += 4;
        }
        if (V::kQB > 2 && nq - q >= 2) {
            queries_over_block<2, V::kG>(queries, D, xt, q, j0, n, sink);
            q += 2;
        }
        if (nq - q >= 1) {
            queries_over_block<1, V::kG>(queries, D, xt, q, j0, n, sink);
        }
    }
}

// Float32 scores -> heaps: one vector compare against the heap threshold rejects W
// items at once; only survivors touch the exclusion list and the heap.
struct HeapSink {
    HeapRow* heaps;
    ExclusionCursor* excl;

    void offer(int64_t qi, int64_t first, int count, typename V::T s) {
        HeapRow& h = heaps[qi];
        uint32_t m = V::ge_mask(s, V::set1(heap_threshold(h))) & first_bits(count);
        if (m == 0) {
            return;
        }
        alignas(64) float tmp[V::W];
        V::store(tmp, s);
        while (m != 0) {
            const int b = __builtin_ctz(m);
            m &= m - 1;
            heap_offer(h, excl[qi], tmp[b], first + b);
        }
    }
};

// Approximate (bfloat16) scores -> candidates: upper = s + err, err = slope * norm +
// offset, compared with the k-th largest lower bound W items at a time.
struct Bf16Sink {
    Bf16Row* rows;
    ExclusionCursor* excl;
    const float* norms;

    void offer(int64_t qi, int64_t first, int count, typename V::T s) {
        using T = typename V::T;
        Bf16Row& r = rows[qi];
        const T norm = V::load_n(norms + first, count);
        const T err = V::fmadd(norm, V::set1(r.slope), V::set1(r.offset));
        const T upper = V::add(s, err);
        const uint32_t unbounded = V::ge_mask(norm, V::set1(r.norm_limit));
        uint32_t m = (V::ge_mask(upper, V::set1(lower_threshold(r))) | unbounded) &
                     first_bits(count);
        if (m == 0) {
            return;
        }
        alignas(64) float ts[V::W];
        alignas(64) float te[V::W];
        V::store(ts, s);
        V::store(te, err);
        while (m != 0) {
            const int b = __builtin_ctz(m);
            m &= m - 1;
            bf16_offer(r, excl[qi], ts[b], te[b], first + b, ((unbounded >> b) & 1u) != 0);
        }
    }
};

inline void ip_scan(const float* queries, int64_t nq, int64_t D, const float* items,
                    int64_t j_begin, int64_t j_end, HeapRow* heaps, ExclusionCursor* excl,
                    float* work, int64_t block) {
    HeapSink sink{heaps, excl};
    scan_items(queries, nq, D, items, j_begin, j_end, work, block, sink);
}

inline void ip_scan_bf16(const float* queries, int64_t nq, int64_t D, const uint16_t* items,
                         const float* norms, int64_t j_begin, int64_t j_end, Bf16Row* rows,
                         ExclusionCursor* excl, float* work, int64_t block) {
    Bf16Sink sink{rows, excl, norms};
    scan_items(queries, nq, D, items, j_begin, j_end, work, block, sink);
}

// --- the rows path (small B): each item row is read once, its dot product is summed
// along d and W rows' sums are reduced into one vector of W scores.
//
// Row order (row_partials, then hsum): four accumulator vectors; chunk c of W dimensions (the last one zero-padded)
// goes to accumulator c % 4 (s = fmadd(q, x, s)); h = (a0 + a1) + (a2 + a3); then the W
// lanes of h are summed by halving: lane l += lane l + W/2, then l + W/4, ..., l + 1.
// V::tree_reduce does that last step for W rows at once (shuffles, no transpose) and
// V::hsum for one row, with the same additions, so dot_rows equals the scan bit for bit.

// The pre-reduction vectors h of QN queries (rows q, stride D) against one item row x:
// each chunk of x is loaded (and converted) once for all QN queries; per query the
// operations are exactly those of QN = 1.
template <int QN, class Src>
inline void row_partials(const float* q, int64_t D, const Src* x, typename V::T* out) {
    using T = typename V::T;
    constexpr int W = V::W;
    T a[QN][4];
    for (int i = 0; i < QN; ++i) {
        for (int c = 0; c < 4; ++c) {
            a[i][c] = V::zero();
        }
    }
    int64_t d = 0;
    for (; d + 4 * W <= D; d += 4 * W) {
        for (int c = 0; c < 4; ++c) {
            const T xv = V::load_n(x + d + c * W, W);
            for (int i = 0; i < QN; ++i) {
                a[i][c] = V::fmadd(V::load(q + i * D + d + c * W), xv, a[i][c]);
            }
        }
    }
    // At most four chunks left, the last one possibly partial. Unrolled by hand: a
    // loop here would index the accumulators at run time and keep them in memory.
    const auto tail = [&](int c) {
        const int n = int(imin(W, D - d));
        const T xv = V::load_n(x + d, n);
        for (int i = 0; i < QN; ++i) {
            a[i][c] = V::fmadd(V::load_n(q + i * D + d, n), xv, a[i][c]);
        }
        d += W;
    };
    if (d < D) {
        tail(0);
        if (d < D) {
            tail(1);
            if (d < D) {
                tail(2);
                if (d < D) {
                    tail(3);
                }
            }
        }
    }
    for (int i = 0; i < QN; ++i) {
        out[i] = V::add(V::add(a[i][0], a[i][1]), V::add(a[i][2], a[i][3]));
    }
}

inline float dot_rows(const float* q, const float* x, int64_t D) {
    typename V::T h;
    row_partials<1>(q, D, x, &h);
    return V::hsum(h);
}

// QN queries (from q0) against `count` (<= W) rows from item j: one vector of W scores
// per query to the sink.
template <int QN, class Src, class Sink>
inline void rows_group(const float* queries, int64_t q0, int64_t D, const Src* items,
                       int64_t j, int count, Sink& sink) {
    using T = typename V::T;
    constexpr int W = V::W;
    T h[QN][W];
    T part[QN];
    const float* q = queries + q0 * D;
    const Src* x = items + j * D;
    if (count == W) {
        for (int r = 0; r < W; ++r) {
            row_partials<QN>(q, D, x + r * D, part);
            for (int i = 0; i < QN; ++i) {
                h[i][r] = part[i];
            }
        }
    } else {
        for (int r = 0; r < W; ++r) {
            if (r < count) {
                row_partials<QN>(q, D, x + r * D, part);
            }
            for (int i = 0; i < QN; ++i) {
                h[i][r] = r < count ? part[i] : V::zero();
            }
        }
    }
    for (int i = 0; i < QN; ++i) {
        sink.offer(q0 + i, j, count, V::tree_reduce(h[i]));
    }
}

// Rows [j_begin, j_end), W at a time: each row is read from memory once and shared by
// up to V::kRowsQ queries (further query groups find it in L1).
template <class Src, class Sink>
inline void scan_rows(const float* queries, int64_t nq, int64_t D, const Src* items,
                      int64_t j_begin, int64_t j_end, Sink& sink) {
    constexpr int W = V::W;
    constexpr int QN = V::kRowsQ;
    for (int64_t j = j_begin; j < j_end; j += W) {
        const int count = int(imin(W, j_end - j));
        int64_t q0 = 0;
        for (; q0 + QN <= nq; q0 += QN) {
            rows_group<QN>(queries, q0, D, items, j, count, sink);
        }
        if (QN > 2 && nq - q0 >= 2) {
            rows_group<2>(queries, q0, D, items, j, count, sink);
            q0 += 2;
        }
        if (nq - q0 >= 1) {
            rows_group<1>(queries, q0, D, items, j, count, sink);
        }
    }
}

inline void ip_scan_rows(const float* queries, int64_t nq, int64_t D, const float* items,
                         int64_t j_begin, int64_t j_end, HeapRow* heaps, ExclusionCursor* excl,
                         float* /*work*/, int64_t /*block*/) {
    HeapSink sink{heaps, excl};
    scan_rows(queries, nq, D, items, j_begin, j_end, sink);
}

inline void ip_scan_rows_bf16(const float* queries, int64_t nq, int64_t D,
                              const uint16_t* items, const float* norms, int64_t j_begin,
                              int64_t j_end, Bf16Row* rows, ExclusionCursor* excl,
                              float* /*work*/, int64_t /*block*/) {
    Bf16Sink sink{rows, excl, norms};
    scan_rows(queries, nq, D, items, j_begin, j_end, sink);
}

inline void scores_scan(const float* scores, int64_t n, HeapRow* heap, ExclusionCursor* excl) {
    using T = typename V::T;
    constexpr int W = V::W;
    HeapRow& h = *heap;
    int64_t j = 0;
    for (; j + 4 * W <= n; j += 4 * W) {
        const T thr = V::set1(heap_threshold(h));
        const uint32_t m0 = V::ge_mask(V::load(scores + j), thr);
        const uint32_t m1 = V::ge_mask(V::load(scores + j + W), thr);
        const uint32_t m2 = V::ge_mask(V::load(scores + j + 2 * W), thr);
        const uint32_t m3 = V::ge_mask(V::load(scores + j + 3 * W), thr);
        if ((m0 | m1 | m2 | m3) == 0) {
            continue;
        }
        for (int64_t i = j; i < j + 4 * W; ++i) {
            heap_offer(h, *excl, scores[i], i);
        }
    }
    for (; j < n; ++j) {
        heap_offer(h, *excl, scores[j], j);
    }
}

inline detail::IsaKernels make_kernels(const char* name) {
    return {name,
            V::kSmallB,
            V::kSmallBBf16,
            {&dot_packed, &ip_scan, &ip_scan_bf16},
            {&dot_rows, &ip_scan_rows, &ip_scan_rows_bf16},
            &scores_scan};
}
#endif  // RECSERVE_TOPK_HELPERS_ONLY

}  // namespace RECSERVE_ISA_NS
}  // namespace recserve

#endif  // RECSERVE_CPU_TOPK_INL_CODE
#endif  // RECSERVE_ISA_NS
