// Block-level top-k selection on the GPU, in the style of faiss/gpu/utils/BlockSelectKernel.cuh:
// per-thread register queues in front of a per-query block queue in shared memory.
//
// A block of kThreads threads handles QT queries (rows) and one contiguous range of
// candidates, a tile of kThreads candidates at a time (one per thread). For each tile a
// Source gives each thread (value, id) per query: a precomputed score (ScoreSource), an
// inner product computed from shared-memory tiles of the item matrix (DotSource, float32
// or bfloat16 items), or an entry of an earlier pass's partial top-k list (PairSource).
//
// Selection, per query j of the block:
//  - the block queue is the best K2 pairs seen so far, sorted, in shared memory (K2 is
//    the power of two >= k, >= 32; one compiled instantiation per K2, each in its own
//    topk_k<K2>.cu);
//  - each thread keeps the block's k-th best pair (the threshold, the analogue of FAISS's
//    warpKTop) in registers and pushes a candidate into its TQ-entry register queue only
//    when it ranks above the threshold, is not NaN and is not excluded (a binary search of
//    the query's sorted exclusion list, only for candidates that pass the threshold);
//  - when any thread's queue for j is full, the block appends every thread's queue to
//    the block queue in shared memory, bitonic-sorts those K2 + (appended) entries and
//    keeps the best K2: a sort of a few hundred to a few thousand pairs, never of N.
// The order is (value desc, id asc), a total order on non-NaN values, so results are
// deterministic and equal the CPU kernels' (recserve/topk.h) on the same scores.
//
// A large catalog is split across blocks (blockIdx.y); each split writes its top-k to a
// workspace and a second pass (PairSource, one block per row) merges them.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace recserve {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;       // threads per block = candidates per tile
constexpr int kChunk = 32;          // item columns per shared-memory chunk
constexpr int kPitch = kChunk + 4;  // row pitch of the item tile: float4-aligned, no bank conflicts

__host__ __device__ constexpr int pow2_at_least(int x) {
    int p = 1;
    while (p < x) {
        p *= 2;
    }
    return p;
}

// Queries per block on the batched path: the block queues of all QT queries must fit in
// shared memory beside the item tile (QT * K2 <= 1024 pairs).
__host__ __device__ constexpr int batch_queries(int K2) { return K2 <= 128 ? 8 : 1024 / K2; }

// Entries of each thread queue.
__host__ __device__ constexpr int thread_queue(int QT, int K2) { return QT == 1 && K2 <= 256 ? 4 : 2; }

// True when (av, ai) ranks above (bv, bi): larger value, or equal value and smaller id.
// id -1 means "no pair" and ranks below every pair (also below a real (-inf, id)).
__device__ __forceinline__ bool ranks_above(float av, int32_t ai, float bv, int32_t bi) {
    if (ai < 0) {
        return false;
    }
    if (bi < 0) {
        return true;
    }
    return av > bv || (av == bv && ai < bi);
}

template <int QT, int K2, int TQ>
struct Smem {
    static constexpr int kBuf = pow2_at_least(K2 + kThreads * TQ);
    struct Buffer {
        float v[kBuf];
        int32_t i[kBuf];
    };
    // The item tile and the merge buffer are never live at the same time.
    union alignas(16) {
        float x[kThreads * kPitch];
        Buffer buf;
    } u;
    alignas(16) float q[QT][kChunk];
    float top_v[QT][K2];
    int32_t top_i[QT][K2];
    int64_t ex_begin[QT];
    int64_t ex_end[QT];
    int count;
};

// Everything a pass needs besides its source. Final output (splits == 1) is
// values/indices [B, k]; otherwise partial lists part_v/part_i [B, splits, k].
struct PassArgs {
    int64_t B;
    int64_t N;       // candidates per row
    int64_t k;
    int64_t range;   // candidates per split
    int64_t splits;  // == gridDim.y
    const int64_t* ex_indptr;  // nullptr: no exclusion
    const int64_t* ex_ids;
    int64_t nnz;
    float* values;
    int64_t* indices;
    float* part_v;
    int32_t* part_i;
};

// Precomputed scores [B, N] (QT == 1).
struct ScoreSource {
    const float* scores;
    template <int QT, class S>
    __device__ __forceinline__ void tile(S& /*s*/, const PassArgs& a, int64_t q0, int64_t t0,
                                         int64_t end, float (&v)[QT], int32_t (&id)[QT]) const {
        static_assert(QT == 1, "ScoreSource takes one row per block");
        const int64_t n = t0 + threadIdx.x;
        id[0] = -1;
        v[0] = 0.f;
        if (n < end && q0 < a.B) {
            v[0] = scores[q0 * a.N + n];
            id[0] = static_cast<int32_t>(n);
        }
    }
};

// Partial top-k lists [B, M] of (value, id) pairs from an earlier pass (QT == 1).
struct PairSource {
    const float* part_v;
    const int32_t* part_i;
    template <int QT, class S>
    __device__ __forceinline__ void tile(S& /*s*/, const PassArgs& a, int64_t q0, int64_t t0,
                                         int64_t end, float (&v)[QT], int32_t (&id)[QT]) const {
        static_assert(QT == 1, "PairSource takes one row per block");
        const int64_t m = t0 + threadIdx.x;
        id[0] = -1;
        v[0] = 0.f;
        if (m < end && q0 < a.B) {
            v[0] = part_v[q0 * a.N + m];
            id[0] = part_i[q0 * a.N + m];  // -1 for padding: never selected
        }
    }
};

__device__ __forceinline__ float bf16_to_float(uint16_t bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// queries [B, D] (float32) . items [N, D] (float32, or bfloat16 bits when Item is
// uint16_t). Scores accumulate in float32: s = fma(q[d], x[d], s), d ascending.
// `vectorized`: rows are 16-byte aligned and D is a multiple of 16 / sizeof(Item), so a
// tile chunk loads with 16-byte loads.
template <typename Item>
struct DotSource {
    const float* queries;
    const Item* items;
    int64_t D;
    bool vectorized;

    template <int QT, class S>
    __device__ __forceinline__ void load_chunk(S& s, const PassArgs& a, int64_t q0, int64_t t0,
                                               int64_t end, int64_t d0) const {
        const int tid = threadIdx.x;
        for (int e = tid; e < QT * kChunk; e += kThreads) {
            const int j = e / kChunk;
            const int c = e % kChunk;
            const int64_t b = q0 + j;
            const int64_t d = d0 + c;
            s.q[j][c] = (b < a.B && d < D) ? queries[b * D + d] : 0.f;
        }
        if (vectorized) {
            constexpr int kPer = 16 / sizeof(Item);  // values per 16-byte load
            constexpr int kLoads = kChunk / kPer;   // loads per row of the chunk
            for (int e = tid; e < kThreads * kLoads; e += kThreads) {
                const int r = e / kLoads;
                const int c = (e % kLoads) * kPer;
                const int64_t n = t0 + r;
                const int64_t d = d0 + c;
                float* dst = s.u.x + r * kPitch + c;
                if (n < end && d < D) {  // D % kPer == 0: the whole load is in the row
                    const uint4 raw = *reinterpret_cast<const uint4*>(items + n * D + d);
                    if constexpr (sizeof(Item) == 4) {
                        *reinterpret_cast<float4*>(dst) =
                                make_float4(__uint_as_float(raw.x), __uint_as_float(raw.y),
                                            __uint_as_float(raw.z), __uint_as_float(raw.w));
                    } else {
                        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            *reinterpret_cast<float4*>(dst + 4 * h) = make_float4(
                                    __uint_as_float(w[2 * h] << 16),
                                    __uint_as_float(w[2 * h] & 0xffff0000u),
                                    __uint_as_float(w[2 * h + 1] << 16),
                                    __uint_as_float(w[2 * h + 1] & 0xffff0000u));
                        }
                    }
                } else {
#pragma unroll
                    for (int h = 0; h < kPer; h += 4) {
                        *reinterpret_cast<float4*>(dst + h) = make_float4(0.f, 0.f, 0.f, 0.f);
                    }
                }
            }
        } else {
            for (int e = tid; e < kThreads * kChunk; e += kThreads) {
                const int r = e / kChunk;
                const int c = e % kChunk;
                const int64_t n = t0 + r;
                const int64_t d = d0 + c;
                float x = 0.f;
                if (n < end && d < D) {
                    if constexpr (sizeof(Item) == 4) {
                        x = items[n * D + d];
                    } else {
                        x = bf16_to_float(items[n * D + d]);
                    }
                }
                s.u.x[r * kPitch + c] = x;
            }
        }
    }

    template <int QT, class S>
    __device__ __forceinline__ void tile(S& s, const PassArgs& a, int64_t q0, int64_t t0,
                                         int64_t end, float (&v)[QT], int32_t (&id)[QT]) const {
#pragma unroll
        for (int j = 0; j < QT; ++j) {
            v[j] = 0.f;
        }
        for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
            load_chunk<QT>(s, a, q0, t0, end, d0);
            __syncthreads();
            const float* xr = s.u.x + threadIdx.x * kPitch;
#pragma unroll
            for (int c = 0; c < kChunk; c += 4) {
                const float4 x = *reinterpret_cast<const float4*>(xr + c);
#pragma unroll
                for (int j = 0; j < QT; ++j) {
                    const float4 q = *reinterpret_cast<const float4*>(&s.q[j][c]);
                    v[j] = fmaf(q.x, x.x, v[j]);
                    v[j] = fmaf(q.y, x.y, v[j]);
                    v[j] = fmaf(q.z, x.z, v[j]);
                    v[j] = fmaf(q.w, x.w, v[j]);
                }
            }
            __syncthreads();  // the tile is read before the next chunk (or a merge) reuses it
        }
        const int64_t n = t0 + threadIdx.x;
#pragma unroll
        for (int j = 0; j < QT; ++j) {
            id[j] = (n < end && q0 + j < a.B) ? static_cast<int32_t>(n) : -1;
        }
    }
};

// True when id is in the sorted list ids[begin, end). Reads stay inside [begin, end).
__device__ __forceinline__ bool in_sorted(const int64_t* ids, int64_t begin, int64_t end,
                                          int64_t id) {
    while (begin < end) {
        const int64_t mid = begin + (end - begin) / 2;
        const int64_t x = ids[mid];
        if (x == id) {
            return true;
        }
        if (x < id) {
            begin = mid + 1;
        } else {
            end = mid;
        }
    }
    return false;
}

// Descending bitonic sort of buf[0, P), P a power of two, by the whole block.
template <class Buffer>
__device__ void bitonic_sort_desc(Buffer& buf, int P) {
    for (int size = 2; size <= P; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < P / 2; t += kThreads) {
                const int lo = 2 * t - (t & (stride - 1));
                const int hi = lo + stride;
                const bool desc = (lo & size) == 0;
                const float av = buf.v[lo];
                const float bv = buf.v[hi];
                const int32_t ai = buf.i[lo];
                const int32_t bi = buf.i[hi];
                if (desc ? ranks_above(bv, bi, av, ai) : ranks_above(av, ai, bv, bi)) {
                    buf.v[lo] = bv;
                    buf.i[lo] = bi;
                    buf.v[hi] = av;
                    buf.i[hi] = ai;
                }
            }
            __syncthreads();
        }
    }
}

// Merges every thread's queue for query j into the block queue of j and refreshes the
// thread's threshold. Called by the whole block.
template <int QT, int K2, int TQ>
__device__ __forceinline__ void merge_queue(Smem<QT, K2, TQ>& s, int j, int64_t k, float (&qv)[TQ],
                            int32_t (&qi)[TQ], int& count, float& thr_v, int32_t& thr_i) {
    auto& buf = s.u.buf;
    for (int e = threadIdx.x; e < K2; e += kThreads) {
        buf.v[e] = s.top_v[j][e];
        buf.i[e] = s.top_i[j][e];
    }
    if (threadIdx.x == 0) {
        s.count = 0;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TQ; ++t) {
        if (t < count) {
            const int p = atomicAdd(&s.count, 1);
            buf.v[K2 + p] = qv[t];
            buf.i[K2 + p] = qi[t];
        }
    }
    count = 0;
    __syncthreads();
    const int total = K2 + s.count;
    int P = K2;
    while (P < total) {
        P *= 2;
    }
    for (int e = total + threadIdx.x; e < P; e += kThreads) {
        buf.v[e] = -INFINITY;
        buf.i[e] = -1;
    }
    __syncthreads();
    bitonic_sort_desc(buf, P);
    for (int e = threadIdx.x; e < K2; e += kThreads) {
        s.top_v[j][e] = buf.v[e];
        s.top_i[j][e] = buf.i[e];
    }
    thr_v = buf.v[k - 1];
    thr_i = buf.i[k - 1];
    __syncthreads();  // everyone has its threshold before the buffer is reused
}

template <class Source, int QT, int K2>
__global__ void __launch_bounds__(kThreads)
        select_kernel(const Source src, const PassArgs a) {
    constexpr int TQ = thread_queue(QT, K2);
    __shared__ Smem<QT, K2, TQ> s;
    const int tid = threadIdx.x;
    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * QT;
    const int64_t split = blockIdx.y;
    const int64_t begin = split * a.range;
    const int64_t end = begin + a.range < a.N ? begin + a.range : a.N;

    for (int e = tid; e < QT * K2; e += kThreads) {
        s.top_v[e / K2][e % K2] = -INFINITY;
        s.top_i[e / K2][e % K2] = -1;
    }
    if (tid < QT) {
        const int64_t b = q0 + tid;
        int64_t lo = 0;
        int64_t hi = 0;
        if (a.ex_indptr != nullptr && b < a.B) {  // offsets clamped to [0, nnz]
            lo = min(max(a.ex_indptr[b], int64_t(0)), a.nnz);
            hi = min(max(a.ex_indptr[b + 1], lo), a.nnz);
        }
        s.ex_begin[tid] = lo;
        s.ex_end[tid] = hi;
    }
    __syncthreads();

    float thr_v[QT];
    int32_t thr_i[QT];
    int count[QT];
    float qv[QT][TQ];
    int32_t qi[QT][TQ];
#pragma unroll
    for (int j = 0; j < QT; ++j) {
        thr_v[j] = -INFINITY;
        thr_i[j] = -1;
        count[j] = 0;
    }

    for (int64_t t0 = begin; t0 < end; t0 += kThreads) {
        float v[QT];
        int32_t id[QT];
        src.template tile<QT>(s, a, q0, t0, end, v, id);
        bool full = false;
#pragma unroll
        for (int j = 0; j < QT; ++j) {
            if (id[j] >= 0 && !isnan(v[j]) && ranks_above(v[j], id[j], thr_v[j], thr_i[j]) &&
                !in_sorted(a.ex_ids, s.ex_begin[j], s.ex_end[j], id[j])) {
#pragma unroll
                for (int t = 0; t < TQ; ++t) {
                    if (t == count[j]) {
                        qv[j][t] = v[j];
                        qi[j][t] = id[j];
                    }
                }
                ++count[j];
            }
            full |= count[j] == TQ;
        }
        if (__syncthreads_or(full)) {
#pragma unroll
            for (int j = 0; j < QT; ++j) {
                if (__syncthreads_or(count[j] == TQ)) {
                    merge_queue<QT, K2, TQ>(s, j, a.k, qv[j], qi[j], count[j], thr_v[j],
                                            thr_i[j]);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < QT; ++j) {  // what is left in the thread queues
        merge_queue<QT, K2, TQ>(s, j, a.k, qv[j], qi[j], count[j], thr_v[j], thr_i[j]);
    }

    for (int e = tid; e < QT * a.k; e += kThreads) {
        const int j = static_cast<int>(e / a.k);
        const int64_t p = e % a.k;
        const int64_t b = q0 + j;
        if (b >= a.B) {
            continue;
        }
        const int32_t id = s.top_i[j][p];
        const float v = id >= 0 ? s.top_v[j][p] : -INFINITY;
        if (a.splits == 1) {
            a.values[b * a.k + p] = v;
            a.indices[b * a.k + p] = id;
        } else {
            const int64_t at = (b * a.splits + split) * a.k + p;
            a.part_v[at] = v;
            a.part_i[at] = id;
        }
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace recserve
