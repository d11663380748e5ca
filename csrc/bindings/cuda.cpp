// Bindings of the CUDA kernels (csrc/cuda/), compiled only with RECSERVE_WITH_CUDA.
//
// Private entry points on raw device pointers (Python ints: torch's data_ptr()) and a raw
// cudaStream_t (torch.cuda.current_stream().cuda_stream). Nothing here can check that a
// pointer really addresses a device buffer of the stated shape: recserve.core.kernels
// and recserve.core.crossing derive every argument from checked torch tensors, check the
// exclusion CSR on the host (check_exclude_csr) before uploading it, and pass crossing
// rows as a host numpy array, which the C++ side copies and checks before any launch.
// Each call releases the GIL and only enqueues work on the stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>

#include "array_checks.h"
#include "bindings.h"
#include "cuda/crossing_cuda.cuh"
#include "cuda/topk_cuda.cuh"
#include "recserve/assert.h"

namespace py = pybind11;

namespace recserve::bindings {
namespace {

template <typename T>
T* device_ptr(std::uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

cuda::Stream as_stream(std::uintptr_t stream) { return reinterpret_cast<cuda::Stream>(stream); }

void cuda_topk_scores(std::uintptr_t scores, int64_t B, int64_t N, int64_t k,
                      std::uintptr_t exclude_indptr, std::uintptr_t exclude_ids, int64_t nnz,
                      std::uintptr_t values, std::uintptr_t indices, std::uintptr_t stream) {
    py::gil_scoped_release release;
    cuda::topk_scores(device_ptr<const float>(scores), B, N, k,
                      device_ptr<const int64_t>(exclude_indptr),
                      device_ptr<const int64_t>(exclude_ids), nnz, device_ptr<float>(values),
                      device_ptr<int64_t>(indices), as_stream(stream));
}

void cuda_topk_inner_product(std::uintptr_t queries, std::uintptr_t items, int64_t B,
                             int64_t N, int64_t D, int64_t k, std::uintptr_t exclude_indptr,
                             std::uintptr_t exclude_ids, int64_t nnz, std::uintptr_t values,
                             std::uintptr_t indices, std::uintptr_t stream, bool bfloat16) {
    py::gil_scoped_release release;
    if (bfloat16) {
        cuda::topk_inner_product_bf16(
                device_ptr<const float>(queries), device_ptr<const uint16_t>(items), B, N, D, k,
                device_ptr<const int64_t>(exclude_indptr),
                device_ptr<const int64_t>(exclude_ids), nnz, device_ptr<float>(values),
                device_ptr<int64_t>(indices), as_stream(stream));
    } else {
        cuda::topk_inner_product(device_ptr<const float>(queries), device_ptr<const float>(items),
                                 B, N, D, k, device_ptr<const int64_t>(exclude_indptr),
                                 device_ptr<const int64_t>(exclude_ids), nnz,
                                 device_ptr<float>(values), device_ptr<int64_t>(indices),
                                 as_stream(stream));
    }
}

// A host int64 [N] array of item rows, or nullptr (with N = -1) for None.
const int64_t* host_rows(const std::optional<py::array>& rows, const char* fn, int64_t& N) {
    N = -1;
    if (!rows.has_value()) {
        return nullptr;
    }
    const int64_t* r = checked_array<int64_t>(*rows, fn, "rows", 1, "[N]");
    N = rows->shape(0);
    return r;
}

void cuda_crossing_deepfm(double user_scalar, std::uintptr_t user_sum,
                          std::uintptr_t user_hidden, std::uintptr_t item_scalar,
                          std::uintptr_t item_sum, std::uintptr_t item_hidden, int64_t I,
                          int64_t D, int64_t H1, const std::optional<py::array>& rows,
                          std::uintptr_t linear, std::uintptr_t hidden, std::uintptr_t stream) {
    int64_t N = 0;
    const int64_t* r = host_rows(rows, "cuda_crossing_deepfm", N);
    if (r == nullptr) {
        N = I;
    }
    py::gil_scoped_release release;  // the kernel side copies the rows before checking them
    cuda::crossing_deepfm(static_cast<float>(user_scalar), device_ptr<const float>(user_sum),
                          device_ptr<const float>(user_hidden),
                          device_ptr<const float>(item_scalar), device_ptr<const float>(item_sum),
                          device_ptr<const float>(item_hidden), I, D, H1, r, N,
                          device_ptr<float>(linear), device_ptr<float>(hidden), as_stream(stream));
}

void cuda_crossing_dcn_first(std::uintptr_t user_x0, std::uintptr_t user_hidden,
                             std::uintptr_t item_x0, std::uintptr_t item_hidden, int64_t I,
                             int64_t DU, int64_t DI, const std::optional<py::array>& rows,
                             std::uintptr_t x0, std::uintptr_t x1, std::uintptr_t stream) {
    int64_t N = 0;
    const int64_t* r = host_rows(rows, "cuda_crossing_dcn_first", N);
    if (r == nullptr) {
        N = I;
    }
    py::gil_scoped_release release;
    cuda::crossing_dcn_first(device_ptr<const float>(user_x0), device_ptr<const float>(user_hidden),
                             device_ptr<const float>(item_x0),
                             device_ptr<const float>(item_hidden), I, DU, DI, r, N,
                             device_ptr<float>(x0), device_ptr<float>(x1), as_stream(stream));
}

}  // namespace

void bind_cuda(py::module_& m) {
    m.def("cuda_device_count", &cuda::device_count,
          "Number of CUDA devices visible (0 when there is no driver or device).");
    m.def("cuda_topk_scores", &cuda_topk_scores, py::arg("scores"), py::arg("B"),
          py::arg("N"), py::arg("k"), py::arg("exclude_indptr"), py::arg("exclude_ids"),
          py::arg("nnz"), py::arg("values"), py::arg("indices"), py::arg("stream"),
          "Private: topk_scores on raw device pointers, enqueued on `stream`. The exclusion "
          "CSR must be checked and each row sorted.");
    m.def("cuda_topk_inner_product", &cuda_topk_inner_product, py::arg("queries"),
          py::arg("items"), py::arg("B"), py::arg("N"), py::arg("D"), py::arg("k"),
          py::arg("exclude_indptr"), py::arg("exclude_ids"), py::arg("nnz"),
          py::arg("values"), py::arg("indices"), py::arg("stream"),
          py::arg("bfloat16") = false,
          "Private: topk_inner_product on raw device pointers (items float32, or bfloat16 "
          "bits with bfloat16=True), enqueued on `stream`.");
    m.def("cuda_crossing_deepfm", &cuda_crossing_deepfm, py::arg("user_scalar"),
          py::arg("user_sum"), py::arg("user_hidden"), py::arg("item_scalar"),
          py::arg("item_sum"), py::arg("item_hidden"), py::arg("I"), py::arg("D"),
          py::arg("H1"), py::arg("rows"), py::arg("linear"), py::arg("hidden"),
          py::arg("stream"),
          "Private: crossing_deepfm with device tables and outputs; rows is a host int64 "
          "array (checked: IndexError) or None for every item.");
    m.def("cuda_crossing_dcn_first", &cuda_crossing_dcn_first, py::arg("user_x0"),
          py::arg("user_hidden"), py::arg("item_x0"), py::arg("item_hidden"), py::arg("I"),
          py::arg("DU"), py::arg("DI"), py::arg("rows"), py::arg("x0"), py::arg("x1"),
          py::arg("stream"),
          "Private: crossing_dcn_first with device tables and outputs; rows as for "
          "cuda_crossing_deepfm.");
    m.attr("CUDA_MAX_K") = cuda::kMaxK;
}

}  // namespace recserve::bindings
