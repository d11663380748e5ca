// GPU top-k, simple and clearly correct; a warp-select in the style of
// faiss/gpu/utils/BlockSelectKernel.cuh is the fast version still to come.
//
//  - inner_product_kernel: a 16x16 shared-memory tiled product, scores = Q @ X^T,
//    into a device workspace.
//  - mask_excluded_kernel: writes NaN over each row's excluded ids in a workspace copy
//    of the scores (NaN is never selected), checking every id against [0, N).
//  - select_topk_kernel: one block per row, k rounds of block-wide arg-max. Round r
//    finds the best pair that ranks strictly below the pair found in round r-1 (the
//    (score desc, index asc) order is total on non-NaN scores), so no mask of chosen
//    items is needed. O(k * N) reads per row: fine for serving-size k, slow for huge N.
#include "cuda/topk_cuda.cuh"

#include <algorithm>
#include <type_traits>

#include "recserve/assert.h"

static_assert(std::is_same<cudaStream_t, recserve::cuda::Stream>::value,
              "recserve::cuda::Stream must be cudaStream_t");

namespace recserve {
namespace cuda {

namespace {

constexpr int kSelectThreads = 256;  // a power of two, for the tree reduction
constexpr int kTile = 16;
constexpr int64_t kWorkspaceFloats = int64_t(64) << 20;  // 256 MiB of scores per chunk
constexpr int64_t kMaxGridY = 65535;

// True when (av, ai) ranks above (bv, bi): larger score, or equal score and smaller
// index. Index -1 means "no pair" and ranks below every pair.
__device__ __forceinline__ bool ranks_above(float av, int64_t ai, float bv, int64_t bi) {
    if (ai < 0) {
        return false;
    }
    if (bi < 0) {
        return true;
    }
    return av > bv || (av == bv && ai < bi);
}

__global__ void select_topk_kernel(const float* __restrict__ scores, int64_t N, int64_t k,
                                   float* __restrict__ values, int64_t* __restrict__ indices) {
    __shared__ float s_val[kSelectThreads];
    __shared__ int64_t s_idx[kSelectThreads];

    const int64_t row = blockIdx.x;
    const int tid = threadIdx.x;
    const float* scores_row = scores + row * N;
    float* values_row = values + row * k;
    int64_t* indices_row = indices + row * k;

    float prev_val = 0.f;
    int64_t prev_idx = -1;  // no pair selected yet: every pair is eligible
    int64_t count = 0;
    for (; count < k; ++count) {
        // 1. Each thread: the best eligible pair of its strided slice.
        float best_val = 0.f;
        int64_t best_idx = -1;
        for (int64_t j = tid; j < N; j += kSelectThreads) {
            const float v = scores_row[j];
            if (isnan(v)) {
                continue;
            }
            if (prev_idx >= 0 && !ranks_above(prev_val, prev_idx, v, j)) {
                continue;  // already selected: ranks at or above the previous winner
            }
            if (ranks_above(v, j, best_val, best_idx)) {
                best_val = v;
                best_idx = j;
            }
        }
        // 2. Block-wide arg-max.
        s_val[tid] = best_val;
        s_idx[tid] = best_idx;
        __syncthreads();
        for (int stride = kSelectThreads / 2; stride > 0; stride /= 2) {
            if (tid < stride &&
                ranks_above(s_val[tid + stride], s_idx[tid + stride], s_val[tid], s_idx[tid])) {
                s_val[tid] = s_val[tid + stride];
                s_idx[tid] = s_idx[tid + stride];
            }
            __syncthreads();
        }
        prev_val = s_val[0];
        prev_idx = s_idx[0];
        __syncthreads();  // all threads have read the winner before s_* is reused
        if (prev_idx < 0) {
            break;  // nothing selectable is left (uniform across the block)
        }
        if (tid == 0) {
            values_row[count] = prev_val;
            indices_row[count] = prev_idx;
        }
    }
    for (int64_t p = count + tid; p < k; p += kSelectThreads) {
        values_row[p] = -INFINITY;
        indices_row[p] = -1;
    }
}

// One block per row of scores [rows, N]: scores[row, id] = NaN for each excluded id of
// the row. Offsets are clamped to [0, nnz] and ids checked against [0, N), so no value
// in device memory can send a read or write out of bounds.
__global__ void mask_excluded_kernel(float* __restrict__ scores, int64_t N,
                                     const int64_t* __restrict__ exclude_indptr,
                                     const int64_t* __restrict__ exclude_ids, int64_t nnz) {
    const int64_t row = blockIdx.x;
    const int64_t begin = min(max(exclude_indptr[row], int64_t(0)), nnz);
    const int64_t end = min(max(exclude_indptr[row + 1], begin), nnz);
    for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
        const int64_t id = exclude_ids[e];
        if (id >= 0 && id < N) {
            scores[row * N + id] = NAN;
        }
    }
}

// scores[b, n] = sum_d queries[b, d] * items[n, d]; block (kTile, kTile) computes a
// kTile x kTile tile of scores, thread (x, y) the entry (query y, item x).
__global__ void inner_product_kernel(const float* __restrict__ queries,
                                     const float* __restrict__ items, int64_t B, int64_t N,
                                     int64_t D, float* __restrict__ scores) {
    __shared__ float s_q[kTile][kTile + 1];
    __shared__ float s_x[kTile][kTile + 1];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int64_t b = int64_t(blockIdx.y) * kTile + ty;       // output query row
    const int64_t n = int64_t(blockIdx.x) * kTile + tx;       // output item
    const int64_t n_load = int64_t(blockIdx.x) * kTile + ty;  // item row this thread loads
    float acc = 0.f;
    for (int64_t d0 = 0; d0 < D; d0 += kTile) {
        const int64_t d = d0 + tx;
        s_q[ty][tx] = (b < B && d < D) ? queries[b * D + d] : 0.f;
        s_x[ty][tx] = (n_load < N && d < D) ? items[n_load * D + d] : 0.f;
        __syncthreads();
        for (int t = 0; t < kTile; ++t) {
            acc += s_q[ty][t] * s_x[tx][t];
        }
        __syncthreads();
    }
    if (b < B && n < N) {
        scores[b * N + n] = acc;
    }
}

void check_args(int64_t B, int64_t N, int64_t k, const int64_t* exclude_indptr,
                const int64_t* exclude_ids, int64_t nnz, const float* values,
                const int64_t* indices) {
    RECSERVE_THROW_IF_NOT(B >= 0 && N >= 0, "shape must be non-negative, got B=" << B
                                                                                 << ", N=" << N);
    RECSERVE_THROW_IF_NOT(k >= 0, "k must be >= 0, got k=" << k);
    RECSERVE_THROW_IF_NOT(k <= kMaxK, "the CUDA top-k supports k <= " << kMaxK << ", got k="
                                                                      << k
                                                                      << "; use the CPU backend");
    RECSERVE_THROW_IF_NOT(B <= int64_t(0x7fffffff), "the CUDA top-k supports B <= 2^31 - 1");
    RECSERVE_THROW_IF_NOT(nnz >= 0, "nnz must be >= 0, got " << nnz);
    RECSERVE_THROW_IF_NOT(exclude_indptr != nullptr || nnz == 0,
                          "exclude_ids given without exclude_indptr");
    RECSERVE_THROW_IF_NOT(nnz == 0 || exclude_ids != nullptr, "exclude_ids must not be null");
    RECSERVE_THROW_IF_NOT(B == 0 || k == 0 || (values != nullptr && indices != nullptr),
                          "values and indices must not be null");
}

void launch_select(const float* scores, int64_t rows, int64_t N, int64_t k, float* values,
                   int64_t* indices, cudaStream_t stream) {
    select_topk_kernel<<<static_cast<unsigned>(rows), kSelectThreads, 0, stream>>>(
            scores, N, k, values, indices);
    CHECK_CUDA(cudaGetLastError());
}

// Masks the exclusions of `rows` rows starting at row b0 in a workspace holding those rows.
// exclude_indptr holds absolute offsets into exclude_ids, so a chunk of rows only shifts
// where its offsets start.
void launch_mask(float* scores, int64_t rows, int64_t N, int64_t b0,
                 const int64_t* exclude_indptr, const int64_t* exclude_ids, int64_t nnz,
                 cudaStream_t stream) {
    if (exclude_indptr == nullptr || nnz == 0) {
        return;
    }
    mask_excluded_kernel<<<static_cast<unsigned>(rows), kSelectThreads, 0, stream>>>(
            scores, N, exclude_indptr + b0, exclude_ids, nnz);
    CHECK_CUDA(cudaGetLastError());
}

// Rows per chunk so that a chunk's [rows, N] scores fit the workspace (and the grid).
int64_t rows_per_chunk(int64_t B, int64_t N) {
    return std::max<int64_t>(
            1, std::min<int64_t>({B, kWorkspaceFloats / std::max<int64_t>(N, 1),
                                  kMaxGridY * kTile}));
}

// Stream-ordered device buffer, freed on scope exit (also when an exception unwinds).
class StreamBuffer {
   public:
    StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
        CHECK_CUDA(cudaMallocAsync(&ptr_, bytes, stream));
    }
    ~StreamBuffer() {
        if (ptr_ != nullptr) {
            cudaFreeAsync(ptr_, stream_);  // no throw from a destructor
        }
    }
    StreamBuffer(const StreamBuffer&) = delete;
    StreamBuffer& operator=(const StreamBuffer&) = delete;
    float* data() const { return static_cast<float*>(ptr_); }

   private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

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
    if (B == 0 || k == 0) {
        return;
    }
    if (exclude_indptr == nullptr || nnz == 0 || N == 0) {
        launch_select(scores, B, N, k, values, indices, stream);
        return;
    }
    // Exclusion: select from a masked copy, a chunk of rows at a time.
    const int64_t chunk = rows_per_chunk(B, N);
    StreamBuffer workspace(static_cast<size_t>(chunk * N) * sizeof(float), stream);
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        const int64_t rows = std::min(chunk, B - b0);
        CHECK_CUDA(cudaMemcpyAsync(workspace.data(), scores + b0 * N,
                                   static_cast<size_t>(rows * N) * sizeof(float),
                                   cudaMemcpyDeviceToDevice, stream));
        launch_mask(workspace.data(), rows, N, b0, exclude_indptr, exclude_ids, nnz, stream);
        launch_select(workspace.data(), rows, N, k, values + b0 * k, indices + b0 * k, stream);
    }
}

void topk_inner_product(const float* queries, const float* items, int64_t B, int64_t N,
                        int64_t D, int64_t k, const int64_t* exclude_indptr,
                        const int64_t* exclude_ids, int64_t nnz, float* values,
                        int64_t* indices, Stream stream) {
    check_args(B, N, k, exclude_indptr, exclude_ids, nnz, values, indices);
    RECSERVE_THROW_IF_NOT(D >= 0, "D must be >= 0, got " << D);
    RECSERVE_THROW_IF_NOT(B == 0 || D == 0 || queries != nullptr, "queries must not be null");
    RECSERVE_THROW_IF_NOT(N == 0 || D == 0 || items != nullptr, "items must not be null");
    if (B == 0 || k == 0) {
        return;
    }
    if (N == 0) {  // nothing to score: all padding
        launch_select(nullptr, B, 0, k, values, indices, stream);
        return;
    }
    const int64_t chunk = rows_per_chunk(B, N);
    StreamBuffer workspace(static_cast<size_t>(chunk * N) * sizeof(float), stream);
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        const int64_t rows = std::min(chunk, B - b0);
        const dim3 block(kTile, kTile);
        const dim3 grid(static_cast<unsigned>((N + kTile - 1) / kTile),
                        static_cast<unsigned>((rows + kTile - 1) / kTile));
        inner_product_kernel<<<grid, block, 0, stream>>>(queries + b0 * D, items, rows, N, D,
                                                          workspace.data());
        CHECK_CUDA(cudaGetLastError());
        launch_mask(workspace.data(), rows, N, b0, exclude_indptr, exclude_ids, nnz, stream);
        launch_select(workspace.data(), rows, N, k, values + b0 * k, indices + b0 * k, stream);
    }
}

}  // namespace cuda
}  // namespace recserve
