// Fused feature crossing for the DNN rankers: the per-candidate part of a DeepFM or
// Wide&Deep (crossing_deepfm) and of a DCN-v2's first cross layer (crossing_dcn_first).
//
// A DeepFM logit splits into a user part (once per request), an item part (once per
// catalog item, precomputed when the model loads) and a per-candidate remainder:
//
//   logit = user_scalar + item_scalar[r] + <user_sum, item_sum[r]>
//           + head(relu(user_hidden + item_hidden[r]))
//
// (user_scalar = b + w_U + fm_UU, item_scalar = w_I + fm_II, *_sum = Σ of the side's
// field vectors, *_hidden = that side's columns of the first MLP layer, b1 on the user
// side; see python/recserve/engine/crossing.py). crossing_deepfm computes, in one pass
// over the candidates, exactly what the rest of the model consumes:
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
// A Wide&Deep has no FM term: it calls crossing_deepfm with D = 0 (no sums).
//
// DCN-v2 (stacked): x0 = [x0_U, x0_I] is the concatenation of the field vectors, user
// fields first, and the first cross layer is x1 = x0 ⊙ (W0 x0 + b0) + x0, with
// W0 x0 + b0 = user_hidden + item_hidden[r] (user_hidden = W0[:, U] x0_U + b0 once per
// request, item_hidden = W0[:, I] x0_I per item). crossing_dcn_first writes
//
//   x0[n, :] = [user_x0, item_x0[r, :]]                                         [N, D]
//   x1[n, j] = x0[n, j] * (user_hidden[j] + item_hidden[r, j]) + x0[n, j]       [N, D]
//
// with D = DU + DI; user_x0 [DU], user_hidden [D], item_x0 [I, DI], item_hidden [I, D].
// Same contract for rows, errors and threads as crossing_deepfm.
#pragma once

#include <cstdint>

namespace recserve {

// Throws std::out_of_range for the first rows[n] outside [0, num_items).
void check_item_rows(const int64_t* rows, int64_t N, int64_t num_items);

void crossing_deepfm(float user_scalar, const float* user_sum, const float* user_hidden,
                     const float* item_scalar, const float* item_sum, const float* item_hidden,
                     int64_t I, int64_t D, int64_t H1, const int64_t* rows, int64_t N,
                     float* linear, float* hidden);

void crossing_dcn_first(const float* user_x0, const float* user_hidden, const float* item_x0,
                        const float* item_hidden, int64_t I, int64_t DU, int64_t DI,
                        const int64_t* rows, int64_t N, float* x0, float* x1);

}  // namespace recserve
