// Fused feature crossing on the GPU: the same contract as recserve/crossing.h
// (crossing_deepfm, crossing_dcn_first) with every table and output on the device,
// enqueued on an explicit stream. Included by the host-compiled binding, so it only
// declares (recserve::cuda::Stream is cudaStream_t, see topk_cuda.cuh).
//
// The item tables stay resident on the device (uploaded once when a model loads); the
// user part (a few hundred floats per request) is on the device too. `rows_host` is a
// HOST array (the candidates' item rows, from the request) or nullptr for every item in
// order (then N must equal I): it is copied, checked on the host (std::out_of_range
// naming the first row outside [0, I), before anything is launched), and uploaded on
// `stream`. The kernels still skip a row outside [0, I) (writing NaN), so no value can
// make them read out of bounds. Sizes are checked (std::invalid_argument); CUDA failures
// throw std::runtime_error. Outputs: linear [N], hidden [N, H1] (DeepFM / Wide&Deep with
// D = 0) or x0 [N, DU + DI], x1 [N, DU + DI] (DCN-v2), row-major, dense, ready for the
// TorchScript head on the same device.
#pragma once

#include <cstdint>

#include "cuda/topk_cuda.cuh"

namespace recserve {
namespace cuda {

void crossing_deepfm(float user_scalar, const float* user_sum, const float* user_hidden,
                     const float* item_scalar, const float* item_sum, const float* item_hidden,
                     int64_t I, int64_t D, int64_t H1, const int64_t* rows_host, int64_t N,
                     float* linear, float* hidden, Stream stream);

void crossing_dcn_first(const float* user_x0, const float* user_hidden, const float* item_x0,
                        const float* item_hidden, int64_t I, int64_t DU, int64_t DI,
                        const int64_t* rows_host, int64_t N, float* x0, float* x1,
                        Stream stream);

}  // namespace cuda
}  // namespace recserve
