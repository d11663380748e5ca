// Top-k kernels, SIMD level "avx2": 8 float lanes, AVX2 + FMA. Compiled with
// -mavx2 -mfma (CMakeLists.txt, this file only) and only called after cpuid says so.
#include <immintrin.h>

#include <cstdint>

#define RECSERVE_ISA_NS avx2

namespace recserve {
namespace avx2 {

struct V {
    using T = __m256;
    static constexpr int W = 8;
    static constexpr int kQB = 4;  // 4 queries x 2 groups of 8 items: 8 accumulators
    static constexpr int kG = 2;
    static constexpr int kG1 = 4;
    // Rows path below these batch sizes (float32 / bfloat16 scan); measured crossovers
    // on Zen 4 (docs/performance.md).
    static constexpr int kSmallB = 14;
    static constexpr int kSmallBBf16 = 14;
    static constexpr int kRowsQ = 2;  // queries sharing each row load (rows path)

    static T zero() { return _mm256_setzero_ps(); }
    static T set1(float x) { return _mm256_set1_ps(x); }
    static T load(const float* p) { return _mm256_loadu_ps(p); }
    static T load_n(const float* p, int n) {
        if (n >= W) {
            return _mm256_loadu_ps(p);
        }
        const __m256i mask =
                _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        return _mm256_maskload_ps(p, mask);
    }
    static T load_n(const uint16_t* p, int n) {
        __m128i h;
        if (n >= W) {
            h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        } else {
            alignas(16) uint16_t tmp[W] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int i = 0; i < n; ++i) {
                tmp[i] = p[i];
            }
            h = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
        }
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
    static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
    static T add(T a, T b) { return _mm256_add_ps(a, b); }
    static uint32_t ge_mask(T a, T b) {
        return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)));
    }
    static float fma1(float a, float b, float c) {
        return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
    }
    // Lanes summed by halving: l += l + 4, l += l + 2, l += l + 1.
    static float hsum(T h) {
        alignas(32) float t[8];
        _mm256_store_ps(t, h);
        for (int w = 4; w >= 1; w /= 2) {
            for (int l = 0; l < w; ++l) {
                t[l] = t[l] + t[l + w];
            }
        }
        return t[0];
    }
    // Lane i = hsum(h[i]): the same additions, three shuffle-and-add stages, then one
    // permutation back to item order.
    static T tree_reduce(const T* h) {
        T s1[4];
        for (int p = 0; p < 4; ++p) {  // [a.lo + a.hi | b.lo + b.hi] (128-bit halves)
            s1[p] = _mm256_add_ps(_mm256_permute2f128_ps(h[2 * p], h[2 * p + 1], 0x20),
                                  _mm256_permute2f128_ps(h[2 * p], h[2 * p + 1], 0x31));
        }
        T s2[2];
        for (int p = 0; p < 2; ++p) {  // within 128 bits: l + (l + 2)
            s2[p] = _mm256_add_ps(
                    _mm256_shuffle_ps(s1[2 * p], s1[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm256_shuffle_ps(s1[2 * p], s1[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        }
        const T s3 = _mm256_add_ps(  // l + (l + 1); lane 4j + m now holds item 2m + j
                _mm256_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)),
                _mm256_shuffle_ps(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
        return _mm256_permutevar8x32_ps(s3, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    static void transpose(T* r) {
        T t[8];
        T u[8];
        for (int i = 0; i < 4; ++i) {
            t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 2; ++i) {
            u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
            u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
            u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
            u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        for (int i = 0; i < 4; ++i) {
            r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
            r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
        }
    }
};

}  // namespace avx2
}  // namespace recserve

#include "topk-inl.h"

namespace recserve {
namespace avx2 {

const detail::IsaKernels kKernels = make_kernels("avx2");

}  // namespace avx2
}  // namespace recserve
