// Non-x86 builds: empty AVX2 and AVX-512 kernel tables. They are never selected
// (simd_level_supported() is false for them off x86), but topk.cpp names them.
#include "topk-inl.h"

namespace recserve {
namespace avx2 {
const detail::IsaKernels kKernels = {"avx2", 0, 0, {}, {}, nullptr};
}
namespace avx512 {
const detail::IsaKernels kKernels = {"avx512", 0, 0, {}, {}, nullptr};
}
}  // namespace recserve
