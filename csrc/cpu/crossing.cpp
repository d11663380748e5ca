// Fused feature crossing on the CPU: portable C++ the compiler vectorises with the
// baseline instruction set (no per-ISA builds: the kernel is bound by the bytes of the
// item rows it gathers, (D + 1 + H1) floats per candidate).
#include "recserve/crossing.h"

#include <cstddef>

#include "recserve/assert.h"

namespace recserve {
namespace {

// Lanes of the partial sums of the dot product: float addition is not associative, so
// the compiler only vectorises a reduction written with independent accumulators.
constexpr int64_t kLanes = 8;

inline float dot(const float* __restrict a, const float* __restrict b, int64_t D) {
    float part[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= D; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
            part[l] += a[j + l] * b[j + l];
        }
    }
    float tail = 0.0f;
    for (; j < D; ++j) {
        tail += a[j] * b[j];
    }
    float sum = tail;
    for (int64_t l = 0; l < kLanes; ++l) {
        sum += part[l];
    }
    return sum;
}

// out = relu(a + b); `x < 0 ? 0 : x` keeps NaN, as torch.relu does.
inline void add_relu(const float* __restrict a, const float* __restrict b, float* __restrict out,
                     int64_t H1) {
    for (int64_t j = 0; j < H1; ++j) {
        const float x = a[j] + b[j];
        out[j] = x < 0.0f ? 0.0f : x;
    }
}

inline void prefetch_row(const float* p, int64_t floats) {
#if defined(__GNUC__) || defined(__clang__)
    constexpr int64_t kLine = 64 / sizeof(float);
    for (int64_t j = 0; j < floats; j += kLine) {
        __builtin_prefetch(p + j, 0, 3);
    }
#else
    (void)p;
    (void)floats;
#endif
}

// Sizes >= 0, and rows in [0, I) (or N == I without rows); throws before any work.
void check_call(const char* fn, const int64_t* rows, int64_t N, int64_t I, int64_t A,
                int64_t B) {
    RECSERVE_THROW_IF_NOT(I >= 0 && A >= 0 && B >= 0 && N >= 0,
                          fn << ": sizes must be >= 0, got I=" << I << " N=" << N << " and "
                             << A << ", " << B);
    if (rows == nullptr) {
        RECSERVE_THROW_IF_NOT(N == I, fn << ": without rows, N must equal the number of items I="
                                         << I << ", got N=" << N);
    } else {
        check_item_rows(rows, N, I);
    }
}

}  // namespace

void check_item_rows(const int64_t* rows, int64_t N, int64_t num_items) {
    for (int64_t n = 0; n < N; ++n) {
        RECSERVE_THROW_OUT_OF_RANGE_IF_NOT(
                rows[n] >= 0 && rows[n] < num_items,
                "crossing: rows[" << n << "] = " << rows[n]
                                         << " is not an item row: the catalog has " << num_items
                                         << " items, rows must be in [0, " << num_items << ")");
    }
}

void crossing_deepfm(float user_scalar, const float* user_sum, const float* user_hidden,
                     const float* item_scalar, const float* item_sum, const float* item_hidden,
                     int64_t I, int64_t D, int64_t H1, const int64_t* rows, int64_t N,
                     float* linear, float* hidden) {
    check_call("crossing_deepfm", rows, N, I, D, H1);
    // Prefetch a few candidates ahead: rows are random, so the hardware prefetcher only
    // helps within a row.
    constexpr int64_t kAhead = 4;
    for (int64_t n = 0; n < N; ++n) {
        if (rows != nullptr && n + kAhead < N) {
            const int64_t next = rows[n + kAhead];
            prefetch_row(item_hidden + next * H1, H1);
            prefetch_row(item_sum + next * D, D);
        }
        const int64_t r = rows != nullptr ? rows[n] : n;
        linear[n] = user_scalar + item_scalar[r] + dot(user_sum, item_sum + r * D, D);
        add_relu(user_hidden, item_hidden + r * H1, hidden + n * H1, H1);
    }
}

void crossing_dcn_first(const float* user_x0, const float* user_hidden, const float* item_x0,
                        const float* item_hidden, int64_t I, int64_t DU, int64_t DI,
                        const int64_t* rows, int64_t N, float* x0, float* x1) {
    check_call("crossing_dcn_first", rows, N, I, DU, DI);
    const int64_t D = DU + DI;
    constexpr int64_t kAhead = 4;
    for (int64_t n = 0; n < N; ++n) {
        if (rows != nullptr && n + kAhead < N) {
            const int64_t next = rows[n + kAhead];
            prefetch_row(item_hidden + next * D, D);
            prefetch_row(item_x0 + next * DI, DI);
        }
        const int64_t r = rows != nullptr ? rows[n] : n;
        float* __restrict out0 = x0 + n * D;
        float* __restrict out1 = x1 + n * D;
        const float* __restrict ih = item_hidden + r * D;
        const float* __restrict ix = item_x0 + r * DI;
        for (int64_t j = 0; j < DU; ++j) {
            out0[j] = user_x0[j];
        }
        for (int64_t j = 0; j < DI; ++j) {
            out0[DU + j] = ix[j];
        }
        for (int64_t j = 0; j < D; ++j) {
            const float t = user_hidden[j] + ih[j];
            out1[j] = out0[j] * t + out0[j];
        }
    }
}

}  // namespace recserve
