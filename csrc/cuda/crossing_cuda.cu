// Fused feature crossing on the GPU (contract in crossing_cuda.cuh): one warp per
// candidate, lanes across the row, so each gathered item row is read coalesced once.
// Arithmetic follows csrc/cpu/crossing.cpp: linear = (user_scalar + item_scalar[r]) + dot
// (the dot in another order: same bound), hidden = relu(user_hidden + item_hidden[r])
// (one rounding: bit-identical to the CPU), x1 = fma(x0, t, x0).
#include "cuda/crossing_cuda.cuh"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/topk_launch.cuh"  // StreamBuffer, CHECK_CUDA
#include "recserve/assert.h"
#include "recserve/crossing.h"  // check_item_rows (host)

namespace recserve {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ int64_t item_row(const int64_t* rows, int64_t n) {
    return rows != nullptr ? rows[n] : n;
}

__global__ void deepfm_kernel(float user_scalar, const float* __restrict__ user_sum,
                              const float* __restrict__ user_hidden,
                              const float* __restrict__ item_scalar,
                              const float* __restrict__ item_sum,
                              const float* __restrict__ item_hidden, int64_t I, int64_t D,
                              int64_t H1, const int64_t* __restrict__ rows, int64_t N,
                              float* __restrict__ linear, float* __restrict__ hidden) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
    for (int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; n < N;
         n += warps) {
        const int64_t r = item_row(rows, n);
        const bool ok = r >= 0 && r < I;  // checked on the host; never read outside anyway
        float part = 0.f;
        if (ok) {
            for (int64_t d = lane; d < D; d += 32) {
                part = fmaf(user_sum[d], item_sum[r * D + d], part);
            }
        }
        for (int offset = 16; offset > 0; offset /= 2) {
            part += __shfl_xor_sync(0xffffffffu, part, offset);
        }
        if (lane == 0) {
            linear[n] = ok ? (user_scalar + item_scalar[r]) + part : NAN;
        }
        for (int64_t j = lane; j < H1; j += 32) {
            const float x = ok ? user_hidden[j] + item_hidden[r * H1 + j] : NAN;
            hidden[n * H1 + j] = x < 0.f ? 0.f : x;  // keeps NaN, as torch.relu
        }
    }
}

__global__ void dcn_first_kernel(const float* __restrict__ user_x0,
                                 const float* __restrict__ user_hidden,
                                 const float* __restrict__ item_x0,
                                 const float* __restrict__ item_hidden, int64_t I, int64_t DU,
                                 int64_t DI, const int64_t* __restrict__ rows, int64_t N,
                                 float* __restrict__ x0, float* __restrict__ x1) {
    const int lane = threadIdx.x & 31;
    const int64_t D = DU + DI;
    const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
    for (int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; n < N;
         n += warps) {
        const int64_t r = item_row(rows, n);
        const bool ok = r >= 0 && r < I;
        for (int64_t j = lane; j < D; j += 32) {
            float a = NAN;
            float t = NAN;
            if (ok) {
                a = j < DU ? user_x0[j] : item_x0[r * DI + (j - DU)];
                t = user_hidden[j] + item_hidden[r * D + j];
            }
            x0[n * D + j] = a;
            x1[n * D + j] = fmaf(a, t, a);
        }
    }
}

unsigned blocks_for(int64_t N) {
    return static_cast<unsigned>(
            std::max<int64_t>(1, std::min<int64_t>((N + kWarpsPerBlock - 1) / kWarpsPerBlock,
                                                   kMaxBlocks)));
}

// Copies and checks the host rows, then uploads them on `stream`. Returns the device
// rows (nullptr when rows_host is nullptr: every item, N == I).
const int64_t* upload_rows(const char* fn, const int64_t* rows_host, int64_t N, int64_t I,
                           detail::StreamBuffer& buffer, std::vector<int64_t>& host,
                           cudaStream_t stream) {
    if (rows_host == nullptr) {
        RECSERVE_THROW_IF_NOT(N == I, fn << ": without rows, N must equal the number of items I="
                                         << I << ", got N=" << N);
        return nullptr;
    }
    host.assign(rows_host, rows_host + N);  // a private copy: what is checked is what runs
    check_item_rows(host.data(), N, I);
    if (N == 0) {
        return nullptr;
    }
    // Pageable source: returns once staged, so `host` may go away afterwards.
    CHECK_CUDA(cudaMemcpyAsync(buffer.as<int64_t>(), host.data(), N * sizeof(int64_t),
                               cudaMemcpyHostToDevice, stream));
    return buffer.as<int64_t>();
}

}  // namespace

void crossing_deepfm(float user_scalar, const float* user_sum, const float* user_hidden,
                     const float* item_scalar, const float* item_sum, const float* item_hidden,
                     int64_t I, int64_t D, int64_t H1, const int64_t* rows_host, int64_t N,
                     float* linear, float* hidden, Stream stream) {
    const char* fn = "cuda crossing_deepfm";
    RECSERVE_THROW_IF_NOT(I >= 0 && D >= 0 && H1 >= 0 && N >= 0,
                          fn << ": sizes must be >= 0, got I=" << I << " D=" << D
                             << " H1=" << H1 << " N=" << N);
    detail::StreamBuffer rows_d(rows_host != nullptr ? N * sizeof(int64_t) : 0, stream);
    std::vector<int64_t> host;
    const int64_t* rows = upload_rows(fn, rows_host, N, I, rows_d, host, stream);
    if (N == 0) {
        return;
    }
    deepfm_kernel<<<blocks_for(N), kWarpsPerBlock * 32, 0, stream>>>(
            user_scalar, user_sum, user_hidden, item_scalar, item_sum, item_hidden, I, D, H1,
            rows, N, linear, hidden);
    CHECK_CUDA(cudaGetLastError());
}

void crossing_dcn_first(const float* user_x0, const float* user_hidden, const float* item_x0,
                        const float* item_hidden, int64_t I, int64_t DU, int64_t DI,
                        const int64_t* rows_host, int64_t N, float* x0, float* x1,
                        Stream stream) {
    const char* fn = "cuda crossing_dcn_first";
    RECSERVE_THROW_IF_NOT(I >= 0 && DU >= 0 && DI >= 0 && N >= 0,
                          fn << ": sizes must be >= 0, got I=" << I << " DU=" << DU
                             << " DI=" << DI << " N=" << N);
    detail::StreamBuffer rows_d(rows_host != nullptr ? N * sizeof(int64_t) : 0, stream);
    std::vector<int64_t> host;
    const int64_t* rows = upload_rows(fn, rows_host, N, I, rows_d, host, stream);
    if (N == 0 || DU + DI == 0) {
        return;
    }
    dcn_first_kernel<<<blocks_for(N), kWarpsPerBlock * 32, 0, stream>>>(
            user_x0, user_hidden, item_x0, item_hidden, I, DU, DI, rows, N, x0, x1);
    CHECK_CUDA(cudaGetLastError());
}

}  // namespace cuda
}  // namespace recserve
