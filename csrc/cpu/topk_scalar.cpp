// Top-k kernels, SIMD level "scalar": portable C++ on baseline flags (W = 1 lane), the
// fallback for CPUs without AVX2 and the reference the SIMD levels are tested against.
// Compiled with -ffp-contract=off so that `a * b + c` stays two roundings everywhere.
#include <cstdint>
#include <cstring>

#define RECSERVE_ISA_NS scalar

namespace recserve {
namespace scalar {

struct V {
    using T = float;
    static constexpr int W = 1;
    static constexpr int kQB = 4;
    static constexpr int kG = 4;
    static constexpr int kG1 = 8;
    // Rows path below these batch sizes (float32 / bfloat16 scan): without SIMD the
    // packed micro-kernel only pays off for large batches.
    static constexpr int kSmallB = 64;
    static constexpr int kSmallBBf16 = 64;
    static constexpr int kRowsQ = 2;  // queries sharing each row load (rows path)

    static T zero() { return 0.f; }
    static T set1(float x) { return x; }
    static T load(const float* p) { return *p; }
    static T load_n(const float* p, int n) { return n > 0 ? *p : 0.f; }
    static T load_n(const uint16_t* p, int n) {
        if (n <= 0) {
            return 0.f;
        }
        const uint32_t bits = uint32_t(*p) << 16;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return f;
    }
    static void store(float* p, T v) { *p = v; }
    static T fmadd(T a, T b, T c) { return a * b + c; }
    static T add(T a, T b) { return a + b; }
    static uint32_t ge_mask(T a, T b) { return a >= b ? 1u : 0u; }
    static void transpose(T* /*r*/) {}
    static float fma1(float a, float b, float c) { return a * b + c; }
    static float hsum(T h) { return h; }
    static T tree_reduce(const T* h) { return h[0]; }
};

}  // namespace scalar
}  // namespace recserve

#include "topk-inl.h"

namespace recserve {
namespace scalar {

const detail::IsaKernels kKernels = make_kernels("scalar");

}  // namespace scalar
}  // namespace recserve
