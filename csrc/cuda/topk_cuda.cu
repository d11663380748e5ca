// GPU top-k entry points: check every argument on the host, then hand the problem to the
// block-select instantiation for the queue size K2 = the power of two >= max(k, 32)
// (csrc/cuda/select.cuh, topk_launch.cuh, topk_k<K2>.cu).
#include "cuda/topk_cuda.cuh"

#include <type_traits>

#include "cuda/topk_launch.cuh"
#include "recserve/assert.h"

static_assert(std::is_same<cudaStream_t, recserve::cuda::Stream>::value,
              "recserve::cuda::Stream must be cudaStream_t");

namespace recserve {
namespace cuda {

namespace {

using detail::TopkProblem;

void check_args(int64_t B, int64_t N, int64_t k, const int64_t* exclude_indptr,
                const int64_t* exclude_ids, int64_t nnz, const float* values,
                const int64_t* indices) {
    RECSERVE_THROW_IF_NOT(B >= 0 && N >= 0, "shape must be non-negative, got B=" << B
                                                                                 << ", N=" << N);
    RECSERVE_THROW_IF_NOT(k >= 0, "k must be >= 0, got k=" << k);
    RECSERVE_THROW_IF_NOT(k <= kMaxK, "the CUDA top-k supports k <= " << kMaxK << ", got k="
                                                                      << k
                                                                      << "; use the CPU backend");
    RECSERVE_THROW_IF_NOT(N <= kMaxN, "the CUDA top-k supports N <= 2^31 - 1 items, got N="
                                              << N << "; use the CPU backend");
    RECSERVE_THROW_IF_NOT(B <= int64_t(0x7fffffff), "the CUDA top-k supports B <= 2^31 - 1");
    RECSERVE_THROW_IF_NOT(nnz >= 0, "nnz must be >= 0, got " << nnz);
    RECSERVE_THROW_IF_NOT(exclude_indptr != nullptr || nnz == 0,
                          "exclude_ids given without exclude_indptr");
    RECSERVE_THROW_IF_NOT(nnz == 0 || exclude_ids != nullptr, "exclude_ids must not be null");
    RECSERVE_THROW_IF_NOT(B == 0 || k == 0 || (values != nullptr && indices != nullptr),
                          "values and indices must not be null");
}

int multiprocessors() {
    int device = 0;
    int sms = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
}

void run(TopkProblem p, cudaStream_t stream) {
    if (p.B == 0 || p.k == 0) {
        return;
    }
    if (p.nnz == 0) {
        p.ex_indptr = nullptr;
        p.ex_ids = nullptr;
    }
    p.num_sms = multiprocessors();
    if (p.k <= 32) {
        detail::run_topk<32>(p, stream);
    } else if (p.k <= 64) {
        detail::run_topk<64>(p, stream);
    } else if (p.k <= 128) {
        detail::run_topk<128>(p, stream);
    } else if (p.k <= 256) {
        detail::run_topk<256>(p, stream);
    } else if (p.k <= 512) {
        detail::run_topk<512>(p, stream);
    } else {
        detail::run_topk<1024>(p, stream);
    }
}

TopkProblem problem(TopkProblem::Kind kind, int64_t B, int64_t N, int64_t D, int64_t k,
                    const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                    float* values, int64_t* indices) {
    TopkProblem p{};
    p.kind = kind;
    p.B = B;
    p.N = N;
    p.D = D;
    p.k = k;
    p.ex_indptr = exclude_indptr;
    p.ex_ids = exclude_ids;
    p.nnz = nnz;
    p.values = values;
    p.indices = indices;
    return p;
}

void check_inner_product(int64_t B, int64_t N, int64_t D, const float* queries,
                         const void* items) {
    RECSERVE_THROW_IF_NOT(D >= 0, "D must be >= 0, got " << D);
    RECSERVE_THROW_IF_NOT(B == 0 || D == 0 || queries != nullptr, "queries must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || D == 0 || items != nullptr, "items must not be null");
}

}  // namespace

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the error: no driver or no device means 0
        return 0;
    }
    return n;
}

void topk_scores(const float* scores, int64_t B, int64_t N, int64_t k,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 float* values, int64_t* indices, Stream stream) {
    check_args(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices);
    RECSERVE_THROW_IF_NOT(B == 0 || N == 0 || scores != nullptr, "scores must not be null");
    TopkProblem p = problem(TopkProblem::Kind::kScores, B, N, 0, k, exclude_indptr,
                            exclude_ids, nnz, values, indices);
    p.scores = scores;
    run(p, stream);
}

void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, Stream stream) {
    check_args(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices);
    check_inner_product(B, N, D, queries, items);
    TopkProblem p = problem(TopkProblem::Kind::kDotF32, B, N, D, k, exclude_indptr,
                            exclude_ids, nnz, values, indices);
    p.queries = queries;
    p.items = items;
    run(p, stream);
}

void topk_inner_product_bf16(const float* queries, const uint16_t* items_bf16, int64_t B,
                             int64_t N, int64_t D, int64_t k, const int64_t* exclude_indptr,
                             const int64_t* exclude_ids, int64_t nnz, float* values,
                             int64_t* indices, Stream stream) {
    check_args(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices);
    check_inner_product(B, N, D, queries, items_bf16);
    TopkProblem p = problem(TopkProblem::Kind::kDotBf16, B, N, D, k, exclude_indptr,
                            exclude_ids, nnz, values, indices);
    p.queries = queries;
    p.items = items_bf16;
    run(p, stream);
}

}  // namespace cuda
}  // namespace recserve
