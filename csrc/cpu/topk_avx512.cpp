// Top-k kernels, SIMD level "avx512": 16 float lanes, AVX-512 F/BW/VL/DQ + FMA.
// Compiled with those flags (CMakeLists.txt, this file only) and only called after
// cpuid says so.
#include <immintrin.h>

#include <cstdint>

#define RECSERVE_ISA_NS avx512

namespace recserve {
namespace avx512 {

struct V {
    using T = __m512;
    static constexpr int W = 16;
    static constexpr int kQB = 8;  // 8 queries x 2 groups of 16 items: 16 accumulators
    static constexpr int kG = 2;
    static constexpr int kG1 = 4;
    // Rows path below these batch sizes (float32 / bfloat16 scan); measured crossovers
    // on Zen 4 (docs/performance.md).
    static constexpr int kSmallB = 20;
    static constexpr int kSmallBBf16 = 12;
    static constexpr int kRowsQ = 4;  // queries sharing each row load (rows path)

    static T zero() { return _mm512_setzero_ps(); }
    static T set1(float x) { return _mm512_set1_ps(x); }
    static T load(const float* p) { return _mm512_loadu_ps(p); }
    static T load_n(const float* p, int n) {
        if (n >= W) {
            return _mm512_loadu_ps(p);
        }
        return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), p);
    }
    static T load_n(const uint16_t* p, int n) {
        const __mmask16 mask = n >= W ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
        const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
    static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static uint32_t ge_mask(T a, T b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
    static float fma1(float a, float b, float c) {
        return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
    }
    // Lanes summed by halving: l += l + 8, l += l + 4, l += l + 2, l += l + 1.
    static float hsum(T h) {
        alignas(64) float t[16];
        _mm512_store_ps(t, h);
        for (int w = 8; w >= 1; w /= 2) {
            for (int l = 0; l < w; ++l) {
                t[l] = t[l] + t[l + w];
            }
        }
        return t[0];
    }
    // Lane i = hsum(h[i]): the same additions, four shuffle-and-add stages that halve
    // the vectors each time, then one permutation back to item order.
    static T tree_reduce(const T* h) {
        T s1[8];
        for (int p = 0; p < 8; ++p) {  // [a.lo + a.hi | b.lo + b.hi] (256-bit halves)
            const T a = h[2 * p];
            const T b = h[2 * p + 1];
            s1[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
                                  _mm512_shuffle_f32x4(a, b, 0xee));
        }
        T s2[4];
        for (int p = 0; p < 4; ++p) {  // 128-bit lane pairs (0, 1) and (2, 3)
            s2[p] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * p], s1[2 * p + 1], 0x88),
                                  _mm512_shuffle_f32x4(s1[2 * p], s1[2 * p + 1], 0xdd));
        }
        T s3[2];
        for (int p = 0; p < 2; ++p) {  // within 128 bits: l + (l + 2)
            s3[p] = _mm512_add_ps(
                    _mm512_shuffle_ps(s2[2 * p], s2[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_shuffle_ps(s2[2 * p], s2[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        }
        const T s4 = _mm512_add_ps(  // l + (l + 1); lane 4j + m now holds item 4m + j
                _mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                _mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512i order =
                _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        return _mm512_permutexvar_ps(order, s4);
    }
    static void transpose(T* r) {
        T t[16];
        for (int i = 0; i < 8; ++i) {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 4; ++i) {
            r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
            r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
            r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
            r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        for (int i = 0; i < 4; ++i) {
            t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
            t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
            t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
            t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
        }
        for (int i = 0; i < 8; ++i) {
            r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
            r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        }
    }
};

}  // namespace avx512
}  // namespace recserve

#include "topk-inl.h"

namespace recserve {
namespace avx512 {

const detail::IsaKernels kKernels = make_kernels("avx512");

}  // namespace avx512
}  // namespace recserve
