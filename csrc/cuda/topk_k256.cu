// The block-select top-k for queue size K2 = 256 (k in (K2 / 2, K2], or k <= 32 for K2 = 32).
#include "cuda/topk_launch.cuh"

namespace recserve {
namespace cuda {
namespace detail {
template void run_topk<256>(const TopkProblem&, cudaStream_t);
}  // namespace detail
}  // namespace cuda
}  // namespace recserve
