// Bindings of the fused feature-crossing kernels (csrc/include/recserve/crossing.h).
//
// Same shape as module.cpp: check every numpy argument and allocate the outputs while
// holding the GIL, run the kernel without it, return the outputs. The friendlier API
// is Python: recserve.core.crossing, used by
// recserve.engine.crossing (FieldCrossing, DCNCrossing).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "array_checks.h"
#include "bindings.h"
#include "recserve/assert.h"
#include "recserve/crossing.h"

namespace py = pybind11;

namespace recserve::bindings {
namespace {

std::pair<py::array_t<float>, py::array_t<float>> crossing_deepfm(
        double user_scalar, const py::array& user_sum, const py::array& user_hidden,
        const py::array& item_scalar, const py::array& item_sum, const py::array& item_hidden,
        const std::optional<py::array>& rows) {
    constexpr const char* fn = "crossing_deepfm";
    const float* us = checked_array<float>(user_sum, fn, "user_sum", 1, "[D]");
    const float* uh = checked_array<float>(user_hidden, fn, "user_hidden", 1, "[H1]");
    const float* is = checked_array<float>(item_scalar, fn, "item_scalar", 1, "[I]");
    const float* isum = checked_array<float>(item_sum, fn, "item_sum", 2, "[I, D]");
    const float* ih = checked_array<float>(item_hidden, fn, "item_hidden", 2, "[I, H1]");
    const int64_t D = user_sum.shape(0);
    const int64_t H1 = user_hidden.shape(0);
    const int64_t I = item_scalar.shape(0);
    check_dim(item_sum.shape(0) == I, fn, "item_sum's rows (the number of items I)", item_sum, I);
    check_dim(item_sum.shape(1) == D, fn, "item_sum's columns (the size D of user_sum)",
              item_sum, D);
    check_dim(item_hidden.shape(0) == I, fn, "item_hidden's rows (the number of items I)",
              item_hidden, I);
    check_dim(item_hidden.shape(1) == H1, fn, "item_hidden's columns (the size H1 of user_hidden)",
              item_hidden, H1);
    const int64_t* r = nullptr;
    int64_t N = I;
    if (rows.has_value()) {
        r = checked_array<int64_t>(*rows, fn, "rows", 1, "[N]");
        N = rows->shape(0);
    }
    py::array_t<float> linear(N);
    py::array_t<float> hidden({N, H1});
    float* lin = linear.mutable_data();
    float* hid = hidden.mutable_data();
    const float scalar = static_cast<float>(user_scalar);
    {
        py::gil_scoped_release release;
        recserve::crossing_deepfm(scalar, us, uh, is, isum, ih, I, D, H1, r, N, lin, hid);
    }
    return {std::move(linear), std::move(hidden)};
}

std::pair<py::array_t<float>, py::array_t<float>> crossing_dcn_first(
        const py::array& user_x0, const py::array& user_hidden, const py::array& item_x0,
        const py::array& item_hidden, const std::optional<py::array>& rows) {
    constexpr const char* fn = "crossing_dcn_first";
    const float* ux = checked_array<float>(user_x0, fn, "user_x0", 1, "[DU]");
    const float* uh = checked_array<float>(user_hidden, fn, "user_hidden", 1, "[D]");
    const float* ix = checked_array<float>(item_x0, fn, "item_x0", 2, "[I, DI]");
    const float* ih = checked_array<float>(item_hidden, fn, "item_hidden", 2, "[I, D]");
    const int64_t DU = user_x0.shape(0);
    const int64_t DI = item_x0.shape(1);
    const int64_t D = user_hidden.shape(0);
    const int64_t I = item_x0.shape(0);
    check_dim(D == DU + DI, fn, "user_hidden's size D (user_x0's size DU + item_x0's columns DI)",
              user_hidden, DU + DI);
    check_dim(item_hidden.shape(0) == I, fn, "item_hidden's rows (the number of items I)",
              item_hidden, I);
    check_dim(item_hidden.shape(1) == D, fn, "item_hidden's columns (the size D of user_hidden)",
              item_hidden, D);
    const int64_t* r = nullptr;
    int64_t N = I;
    if (rows.has_value()) {
        r = checked_array<int64_t>(*rows, fn, "rows", 1, "[N]");
        N = rows->shape(0);
    }
    py::array_t<float> x0({N, D});
    py::array_t<float> x1({N, D});
    float* out0 = x0.mutable_data();
    float* out1 = x1.mutable_data();
    {
        py::gil_scoped_release release;
        recserve::crossing_dcn_first(ux, uh, ix, ih, I, DU, DI, r, N, out0, out1);
    }
    return {std::move(x0), std::move(x1)};
}

}  // namespace

void bind_crossing(py::module_& m) {
    m.def("crossing_deepfm", &crossing_deepfm, py::arg("user_scalar"), py::arg("user_sum"),
          py::arg("user_hidden"), py::arg("item_scalar"), py::arg("item_sum"),
          py::arg("item_hidden"), py::arg("rows") = py::none(),
          R"doc(Per-candidate part of a DeepFM over precomputed item tables.

Returns (linear float32 [N], hidden float32 [N, H1]):
  linear[n] = user_scalar + item_scalar[r] + <user_sum, item_sum[r]>
  hidden[n] = relu(user_hidden + item_hidden[r])
with r = rows[n], or every item in order when rows is None. Arrays must be exactly
float32 (rows int64), C-contiguous, with matching shapes (ValueError otherwise); a row
outside [0, I) raises IndexError. Runs without the GIL. A Wide&Deep (no FM term) passes
D = 0: user_sum [0], item_sum [I, 0].)doc");
    m.def("crossing_dcn_first", &crossing_dcn_first, py::arg("user_x0"), py::arg("user_hidden"),
          py::arg("item_x0"), py::arg("item_hidden"), py::arg("rows") = py::none(),
          R"doc(First cross layer of a DCN-v2 over precomputed item tables.

Returns (x0 float32 [N, D], x1 float32 [N, D]), D = DU + DI:
  x0[n] = [user_x0, item_x0[r]]
  x1[n] = x0[n] * (user_hidden + item_hidden[r]) + x0[n]
with r = rows[n], or every item in order when rows is None. Arrays must be exactly
float32 (rows int64), C-contiguous, with matching shapes (ValueError otherwise); a row
outside [0, I) raises IndexError. Runs without the GIL.)doc");
}

}  // namespace recserve::bindings
