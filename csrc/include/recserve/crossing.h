// Fused feature crossing for the DNN rankers: the per-candidate part of a DeepFM.
//
// A DeepFM logit splits into a user part (once per request), an item part (once per
// catalog item, precomputed when the model loads) and a per-candidate remainder:
//
//   logit = user_scalar + item_scalar[r] + <user_sum, item_sum[r]>
//           + head(relu(user_hidden + item_hidden[r]))
//
// (user_scalar = b + w_U + fm_UU, item_scalar = w_I + fm_II, *_sum = Σ of the side's
// field vectors, *_hidden = that side's columns of the first MLP layer, b1 on the user
// side; see python/recserve/crossing.py). crossing_deepfm computes, in one pass over the
// candidates, exactly what the rest of the model consumes:
//
//   linear[n]    = user_scalar + item_scalar[r] + <user_sum, item_sum[r]>     [N]
//   hidden[n, :] = relu(user_hidden + item_hidden[r, :])                      [N, H1]
//
// with r = rows[n] (or r = n when rows == nullptr: every item, in order). relu keeps
// NaN (like torch.relu). All buffers are caller-owned, row-major and dense:
// user_sum [D], user_hidden [H1], item_scalar [I], item_sum [I, D], item_hidden [I, H1],
// rows [N], linear [N], hidden [N, H1].
//
// Arguments are checked before any work: negative sizes, or rows == nullptr with
// N != I, throw std::invalid_argument; a row outside [0, I) throws std::out_of_range
// naming its position and value. No argument can make it read or write outside the
// buffers described above. Single-threaded: the server runs one thread per request.
#pragma once

#include <cstdint>

namespace recserve {

// Throws std::out_of_range for the first rows[n] outside [0, num_items).
void check_item_rows(const int64_t* rows, int64_t N, int64_t num_items);

void crossing_deepfm(float user_scalar, const float* user_sum, const float* user_hidden,
                     const float* item_scalar, const float* item_sum, const float* item_hidden,
                     int64_t I, int64_t D, int64_t H1, const int64_t* rows, int64_t N,
                     float* linear, float* hidden);

}  // namespace recserve
