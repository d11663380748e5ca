// Top-k kernels, written once so that per-ISA translation units can include them
// (today only csrc/cpu/topk.cpp, compiled with baseline flags: SIMD level "generic").
//
// Everything here works on caller-owned, already-checked buffers: argument checking
// lives in topk.cpp. Nothing here allocates or throws.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "recserve/assert.h"

namespace recserve {
namespace detail {

// True when (av, ai) ranks below (bv, bi): a smaller score, or an equal score with a
// larger index (ties go to the smaller index).
inline bool ranks_below(float av, int64_t ai, float bv, int64_t bi) {
    return av < bv || (av == bv && ai > bi);
}

// The k best (score, index) pairs seen so far, kept in a caller-owned row of
// values/indices (capacity k) as a binary heap whose root (slot 0) is the worst pair kept.
// In the style of faiss/utils/Heap.h, with the comparator fixed to ranks_below.
//
// Callers offer candidates in increasing index order, so a candidate whose score ties
// the root's always ranks below it: `score > top()` is then the exact admission test.
class TopkHeap {
   public:
    TopkHeap() = default;
    TopkHeap(float* values, int64_t* indices, int64_t k)
            : values_(values), indices_(indices), k_(k) {}

    bool full() const { return size_ == k_; }
    float top() const { return values_[0]; }

    // Adds (v, id); if the heap is full, (v, id) replaces the root, which the caller
    // has checked ranks below (v, id). v must not be NaN.
    void add(float v, int64_t id) {
        if (size_ < k_) {
            int64_t i = size_++;
            while (i > 0) {  // sift up: the new pair moves above better parents
                const int64_t parent = (i - 1) / 2;
                if (!ranks_below(v, id, values_[parent], indices_[parent])) {
                    break;
                }
                values_[i] = values_[parent];
                indices_[i] = indices_[parent];
                i = parent;
            }
            values_[i] = v;
            indices_[i] = id;
        } else {
            RECSERVE_ASSERT(k_ > 0 && ranks_below(values_[0], indices_[0], v, id));
            sift_down(0, size_, v, id);
        }
    }

    // Sorts the kept pairs best first and pads slots [size, k) with (-inf, -1).
    void finalize() {
        for (int64_t n = size_; n > 1; --n) {
            // Move the worst of the n remaining pairs to slot n-1.
            const float v = values_[n - 1];
            const int64_t id = indices_[n - 1];
            values_[n - 1] = values_[0];
            indices_[n - 1] = indices_[0];
            sift_down(0, n - 1, v, id);
        }
        for (int64_t i = size_; i < k_; ++i) {
            values_[i] = -std::numeric_limits<float>::infinity();
            indices_[i] = -1;
        }
    }

   private:
    // Places (v, id) at slot i of a heap of n slots, moving worse children up.
    void sift_down(int64_t i, int64_t n, float v, int64_t id) {
        for (;;) {
            int64_t child = 2 * i + 1;
            if (child >= n) {
                break;
            }
            if (child + 1 < n && ranks_below(values_[child + 1], indices_[child + 1],
                                             values_[child], indices_[child])) {
                ++child;  // the worse of the two children
            }
            if (!ranks_below(values_[child], indices_[child], v, id)) {
                break;
            }
            values_[i] = values_[child];
            indices_[i] = indices_[child];
            i = child;
        }
        values_[i] = v;
        indices_[i] = id;
    }

    float* values_ = nullptr;
    int64_t* indices_ = nullptr;
    int64_t k_ = 0;
    int64_t size_ = 0;
};

// One row's exclusion list, sorted ascending, read with a cursor that only moves
// forward: candidates are offered in increasing index order, so the whole row costs
// O(number of excluded ids) however many candidates are tested.
class SortedExclusion {
   public:
    SortedExclusion() = default;
    SortedExclusion(const int64_t* begin, const int64_t* end) : cur_(begin), end_(end) {}

    bool contains(int64_t id) {
        while (cur_ != end_ && *cur_ < id) {
            ++cur_;
        }
        return cur_ != end_ && *cur_ == id;
    }

   private:
    const int64_t* cur_ = nullptr;
    const int64_t* end_ = nullptr;
};

// Offers scores[0..n) for items first_id, first_id + 1, ... to the heap.
inline void offer_block(const float* scores, int64_t n, int64_t first_id, TopkHeap& heap,
                        SortedExclusion& exclusion) {
    for (int64_t j = 0; j < n; ++j) {
        const float v = scores[j];
        if (heap.full()) {
            if (!(v > heap.top())) {  // also rejects NaN
                continue;
            }
        } else if (v != v) {  // NaN is never selected
            continue;
        }
        if (exclusion.contains(first_id + j)) {
            continue;
        }
        heap.add(v, first_id + j);
    }
}

// Inner product of two float vectors of length d. Eight independent partial sums, so
// the compiler can vectorise without reassociating (no -ffast-math needed); the order
// of additions is fixed, so results do not depend on the thread count.
inline float dot(const float* x, const float* y, int64_t d) {
    constexpr int kLanes = 8;
    float acc[kLanes] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + kLanes <= d; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
            acc[l] += x[i + l] * y[i + l];
        }
    }
    for (int l = 0; i < d; ++i, ++l) {
        acc[l] += x[i] * y[i];
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Scores out[j] = query . items[j] for j in [0, n).
inline void score_block(const float* query, const float* items, int64_t n, int64_t d,
                        float* out) {
    for (int64_t j = 0; j < n; ++j) {
        out[j] = dot(query, items + j * d, d);
    }
}

}  // namespace detail
}  // namespace recserve
