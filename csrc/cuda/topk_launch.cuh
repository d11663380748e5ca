// Host side of the block-select top-k (select.cuh): how a problem is split into blocks
// and passes. run_topk<K2> is instantiated once per queue size K2 in topk_k<K2>.cu;
// topk_cuda.cu checks the arguments and picks K2.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/select.cuh"
#include "cuda/topk_cuda.cuh"

namespace recserve {
namespace cuda {
namespace detail {

// One checked top-k problem on device pointers.
struct TopkProblem {
    enum class Kind { kScores, kDotF32, kDotBf16 };
    Kind kind;
    const float* scores;     // kScores: [B, N]
    const float* queries;    // kDot*: [B, D]
    const void* items;       // kDotF32: float [N, D]; kDotBf16: uint16 [N, D]
    int64_t B, N, D, k;
    const int64_t* ex_indptr;  // nullptr: no exclusion
    const int64_t* ex_ids;
    int64_t nnz;
    float* values;
    int64_t* indices;
    int num_sms;
};

// Stream-ordered device buffer, freed on scope exit (also when an exception unwinds).
class StreamBuffer {
   public:
    StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
        if (bytes > 0) {
            CHECK_CUDA(cudaMallocAsync(&ptr_, bytes, stream));
        }
    }
    ~StreamBuffer() {
        if (ptr_ != nullptr) {
            cudaFreeAsync(ptr_, stream_);  // no throw from a destructor
        }
    }
    StreamBuffer(const StreamBuffer&) = delete;
    StreamBuffer& operator=(const StreamBuffer&) = delete;
    template <typename T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }

   private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

template <class Source, int QT, int K2>
void launch(const Source& src, const PassArgs& a, int64_t groups, cudaStream_t stream) {
    static_assert(sizeof(Smem<QT, K2, thread_queue(QT, K2)>) <= 48 * 1024,
                  "the block's shared memory must fit the static 48 KiB");
    const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(a.splits));
    select_kernel<Source, QT, K2><<<grid, kThreads, 0, stream>>>(src, a);
    CHECK_CUDA(cudaGetLastError());
}

// Pass 1 over the candidates with QT rows per block, split across blocks when the grid
// would otherwise be too small to fill the GPU; pass 2 merges the splits.
template <int QT, int K2, class Source>
void run_passes(const Source& src, const TopkProblem& p, cudaStream_t stream) {
    const int64_t groups = (p.B + QT - 1) / QT;
    // Each split scans at least this many candidates, so its merges stay cheap.
    const int64_t min_range = std::max<int64_t>(8 * K2, 2048);
    const int64_t want = (4 * int64_t(std::max(p.num_sms, 1)) + groups - 1) / groups;
    const int64_t most = std::max<int64_t>(1, (p.N + min_range - 1) / min_range);
    int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, most, 65535}));
    int64_t range = (p.N + splits - 1) / splits;
    range = (range + kThreads - 1) / kThreads * kThreads;
    splits = range > 0 ? std::max<int64_t>(1, (p.N + range - 1) / range) : 1;

    PassArgs a{};
    a.B = p.B;
    a.N = p.N;
    a.k = p.k;
    a.range = range;
    a.splits = splits;
    a.ex_indptr = p.ex_indptr;
    a.ex_ids = p.ex_ids;
    a.nnz = p.nnz;
    a.values = p.values;
    a.indices = p.indices;
    if (splits == 1) {
        launch<Source, QT, K2>(src, a, groups, stream);
        return;
    }
    const int64_t M = splits * p.k;  // partial candidates per row
    StreamBuffer part_v(static_cast<size_t>(p.B * M) * sizeof(float), stream);
    StreamBuffer part_i(static_cast<size_t>(p.B * M) * sizeof(int32_t), stream);
    a.part_v = part_v.as<float>();
    a.part_i = part_i.as<int32_t>();
    launch<Source, QT, K2>(src, a, groups, stream);

    PassArgs m{};
    m.B = p.B;
    m.N = M;
    m.k = p.k;
    m.range = M;
    m.splits = 1;
    m.values = p.values;
    m.indices = p.indices;
    launch<PairSource, 1, K2>(PairSource{a.part_v, a.part_i}, m, p.B, stream);
}

template <int K2>
void run_topk(const TopkProblem& p, cudaStream_t stream) {
    constexpr int kBatch = batch_queries(K2);
    // Rows of 16-byte aligned items whose D is a multiple of one 16-byte load.
    const auto aligned = [&](int per) {
        return reinterpret_cast<uintptr_t>(p.items) % 16 == 0 && p.D % per == 0;
    };
    switch (p.kind) {
        case TopkProblem::Kind::kScores:
            run_passes<1, K2>(ScoreSource{p.scores}, p, stream);
            return;
        case TopkProblem::Kind::kDotF32: {
            const DotSource<float> src{p.queries, static_cast<const float*>(p.items), p.D,
                                       aligned(4)};
            if (kBatch > 1 && p.B >= 4) {
                run_passes<kBatch, K2>(src, p, stream);
            } else {
                run_passes<1, K2>(src, p, stream);
            }
            return;
        }
        case TopkProblem::Kind::kDotBf16: {
            const DotSource<uint16_t> src{p.queries, static_cast<const uint16_t*>(p.items),
                                          p.D, aligned(8)};
            if (kBatch > 1 && p.B >= 4) {
                run_passes<kBatch, K2>(src, p, stream);
            } else {
                run_passes<1, K2>(src, p, stream);
            }
            return;
        }
    }
}

// Defined in topk_k<K2>.cu, one per queue size.
extern template void run_topk<32>(const TopkProblem&, cudaStream_t);
extern template void run_topk<64>(const TopkProblem&, cudaStream_t);
extern template void run_topk<128>(const TopkProblem&, cudaStream_t);
extern template void run_topk<256>(const TopkProblem&, cudaStream_t);
extern template void run_topk<512>(const TopkProblem&, cudaStream_t);
extern template void run_topk<1024>(const TopkProblem&, cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace recserve
