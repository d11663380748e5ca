// recserve._core: the pybind11 binding of the C++ core.
//
// Every entry point follows one shape (hnswlib's knnQuery_return_numpy):
//   1. holding the GIL: check each numpy argument (exact ndim, dtype, C-contiguous,
//      aligned, shapes agree), copy the exclusion CSR into a C++-owned ExcludeList and
//      validate the copy (so another Python thread mutating the caller's arrays cannot
//      change what the kernel reads), and allocate the outputs;
//   2. without the GIL: run the C++ kernel on raw pointers;
//   3. holding the GIL again: return the outputs.
// Bad input raises ValueError (std::invalid_argument) or IndexError (std::out_of_range)
// with a message that says how to fix it. The public, friendlier API is Python:
// recserve.core.kernels, which converts inputs before calling this module.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "array_checks.h"
#include "bindings.h"
#include "recserve/assert.h"
#include "recserve/simd.h"
#include "recserve/topk.h"

#ifndef RECSERVE_VERSION
#error "RECSERVE_VERSION must be defined by the build (CMakeLists.txt)"
#endif

namespace py = pybind11;

namespace {

using recserve::bindings::checked_array;
using recserve::bindings::shape_string;
using OptionalArray = std::optional<py::array>;
using TopkResult = std::pair<py::array_t<float>, py::array_t<int64_t>>;

// The CSR exclusion list (per query row b, item indices ids[indptr[b]:indptr[b+1]]),
// copied into C++-owned memory and validated there, once. Call while holding the GIL.
recserve::ExcludeList checked_exclude(const OptionalArray& indptr, const OptionalArray& ids,
                                      const char* fn, int64_t B, int64_t N) {
    RECSERVE_THROW_IF_NOT(indptr.has_value() == ids.has_value(),
                          fn << ": pass both exclude_indptr and exclude_ids, or neither");
    if (!indptr.has_value()) {
        return {};
    }
    const int64_t* p = checked_array<int64_t>(*indptr, fn, "exclude_indptr", 1, "[B + 1]");
    const int64_t* e = checked_array<int64_t>(*ids, fn, "exclude_ids", 1, "[nnz]");
    RECSERVE_THROW_IF_NOT(indptr->shape(0) == B + 1,
                          fn << ": exclude_indptr must have B + 1 = " << B + 1
                             << " entries (one more than the number of queries), got "
                             << indptr->shape(0));
    return recserve::ExcludeList(p, B, e, static_cast<int64_t>(ids->shape(0)), N);
}

// Allocates the [B, k] outputs, runs `kernel(values, indices)` without the GIL, and
// returns them: the last two steps of every top-k entry point.
template <typename Kernel>
TopkResult run_topk(int64_t B, int64_t k, Kernel&& kernel) {
    py::array_t<float> values({B, k});
    py::array_t<int64_t> indices({B, k});
    float* v = values.mutable_data();
    int64_t* i = indices.mutable_data();
    {
        py::gil_scoped_release release;
        kernel(v, i);
    }
    return {std::move(values), std::move(indices)};
}

void check_k_and_threads(const char* fn, int64_t k, int num_threads) {
    RECSERVE_THROW_IF_NOT(k >= 0, fn << ": k must be >= 0, got " << k);
    RECSERVE_THROW_IF_NOT(num_threads >= 1, fn << ": num_threads must be >= 1, got "
                                                << num_threads);
}

TopkResult topk_scores(const py::array& scores, int64_t k, const OptionalArray& exclude_indptr,
                       const OptionalArray& exclude_ids, int num_threads,
                       const std::string& simd_level) {
    const char* fn = "topk_scores";
    check_k_and_threads(fn, k, num_threads);
    const recserve::SimdLevel level = recserve::resolve_simd_level(simd_level);
    const float* s = checked_array<float>(scores, fn, "scores", 2, "[B, N]");
    const int64_t B = scores.shape(0);
    const int64_t N = scores.shape(1);
    const recserve::ExcludeList ex = checked_exclude(exclude_indptr, exclude_ids, fn, B, N);
    return run_topk(B, k, [&](float* v, int64_t* i) {
        recserve::topk_scores(s, B, N, k, ex, v, i, num_threads, level);
    });
}

// Checked queries [B, D] and items [N, D] (float32 or, for the bfloat16 copy, uint16).
template <typename Item>
const Item* checked_items(const py::array& items, const py::array& queries, const char* fn,
                          const char* name) {
    const Item* x = checked_array<Item>(items, fn, name, 2, "[N, D]");
    RECSERVE_THROW_IF_NOT(items.shape(1) == queries.shape(1),
                          fn << ": queries and " << name << " must have the same dimension D, "
                             << "got queries " << shape_string(queries) << " and " << name << " "
                             << shape_string(items));
    return x;
}

TopkResult topk_inner_product(const py::array& queries, const py::array& items, int64_t k,
                              const OptionalArray& exclude_indptr,
                              const OptionalArray& exclude_ids, int num_threads,
                              const std::string& simd_level) {
    const char* fn = "topk_inner_product";
    check_k_and_threads(fn, k, num_threads);
    const recserve::SimdLevel level = recserve::resolve_simd_level(simd_level);
    const float* q = checked_array<float>(queries, fn, "queries", 2, "[B, D]");
    const float* x = checked_items<float>(items, queries, fn, "items");
    const int64_t B = queries.shape(0);
    const int64_t D = queries.shape(1);
    const int64_t N = items.shape(0);
    const recserve::ExcludeList ex = checked_exclude(exclude_indptr, exclude_ids, fn, B, N);
    return run_topk(B, k, [&](float* v, int64_t* i) {
        recserve::topk_inner_product(q, x, B, N, D, k, ex, v, i, num_threads, level);
    });
}

TopkResult topk_inner_product_bf16(const py::array& queries, const py::array& items,
                                   const py::array& items_bf16, const py::array& norms,
                                   int64_t k, const OptionalArray& exclude_indptr,
                                   const OptionalArray& exclude_ids, int num_threads,
                                   const std::string& simd_level) {
    const char* fn = "topk_inner_product_bf16";
    check_k_and_threads(fn, k, num_threads);
    const recserve::SimdLevel level = recserve::resolve_simd_level(simd_level);
    const float* q = checked_array<float>(queries, fn, "queries", 2, "[B, D]");
    const float* x = checked_items<float>(items, queries, fn, "items");
    const uint16_t* xb = checked_items<uint16_t>(items_bf16, queries, fn, "items_bf16");
    const float* n = checked_array<float>(norms, fn, "norms", 1, "[N]");
    const int64_t B = queries.shape(0);
    const int64_t D = queries.shape(1);
    const int64_t N = items.shape(0);
    RECSERVE_THROW_IF_NOT(items_bf16.shape(0) == N && norms.shape(0) == N,
                          fn << ": items, items_bf16 and norms must have the same number of "
                                "rows N, got "
                             << shape_string(items) << ", " << shape_string(items_bf16)
                             << " and " << shape_string(norms)
                             << "; build them with recserve.core.kernels.ItemMatrix");
    const recserve::ExcludeList ex = checked_exclude(exclude_indptr, exclude_ids, fn, B, N);
    return run_topk(B, k, [&](float* v, int64_t* i) {
        recserve::topk_inner_product_bf16(q, x, xb, n, B, N, D, k, ex, v, i, num_threads,
                                          level);
    });
}

py::array_t<uint16_t> to_bfloat16(const py::array& x) {
    const char* fn = "to_bfloat16";
    const float* data = checked_array<float>(x, fn, "x", x.ndim(), "(any shape)");
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    py::array_t<uint16_t> out(shape);
    uint16_t* o = out.mutable_data();
    const int64_t n = static_cast<int64_t>(x.size());
    {
        py::gil_scoped_release release;
        recserve::to_bfloat16(data, n, o);
    }
    return out;
}

py::array_t<float> row_norms(const py::array& items) {
    const float* x = checked_array<float>(items, "row_norms", "items", 2, "[N, D]");
    const int64_t N = items.shape(0);
    const int64_t D = items.shape(1);
    py::array_t<float> out(N);
    float* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        recserve::row_norms(x, N, D, o);
    }
    return out;
}

void check_exclude(const py::array& exclude_indptr, const py::array& exclude_ids,
                   int64_t num_rows, int64_t num_items) {
    const char* fn = "check_exclude_csr";
    RECSERVE_THROW_IF_NOT(num_rows >= 0 && num_items >= 0,
                          fn << ": num_rows and num_items must be >= 0");
    checked_exclude(exclude_indptr, exclude_ids, fn, num_rows, num_items);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "recserve C++ core: top-k selection (CPU, and CUDA when built with it). "
              "Use recserve.core.kernels, which converts inputs; this module only checks them.";

    m.def("topk_scores", &topk_scores, py::arg("scores"), py::arg("k"),
          py::arg("exclude_indptr") = py::none(), py::arg("exclude_ids") = py::none(),
          py::arg("num_threads") = 1, py::arg("simd_level") = "",
          "Top-k of each row of a C-contiguous float32 [B, N] score matrix.\n\n"
          "Returns (values float32 [B, k], indices int64 [B, k]): descending scores, ties "
          "to the smaller index, NaN never selected, row b never selects "
          "exclude_ids[exclude_indptr[b]:exclude_indptr[b+1]]; padded with (-inf, -1).");
    m.def("topk_inner_product", &topk_inner_product, py::arg("queries"), py::arg("items"),
          py::arg("k"), py::arg("exclude_indptr") = py::none(),
          py::arg("exclude_ids") = py::none(), py::arg("num_threads") = 1,
          py::arg("simd_level") = "",
          "Top-k of queries [B, D] @ items [N, D].T (float32, C-contiguous), fused: the "
          "[B, N] score matrix is never materialised. Same result contract as topk_scores. "
          "simd_level (private, for tests): '' for the default level, else a supported one.");
    m.def("topk_inner_product_bf16", &topk_inner_product_bf16, py::arg("queries"),
          py::arg("items"), py::arg("items_bf16"), py::arg("norms"), py::arg("k"),
          py::arg("exclude_indptr") = py::none(), py::arg("exclude_ids") = py::none(),
          py::arg("num_threads") = 1, py::arg("simd_level") = "",
          "topk_inner_product that scans a bfloat16 copy of the items (uint16 [N, D], "
          "to_bfloat16(items)) and re-scores a provably sufficient short list exactly in "
          "float32 from items: the same ids and values as topk_inner_product. norms must be "
          "row_norms(items).");
    m.def("to_bfloat16", &to_bfloat16, py::arg("x"),
          "float32 array -> uint16 array of the same shape: bfloat16 bits, round to nearest "
          "even.");
    m.def("row_norms", &row_norms, py::arg("items"),
          "L2 norm of each row of float32 [N, D], rounded up to float32; +inf for rows with "
          "NaN or inf.");
    m.def(
            "topk_small_batch",
            [](const std::string& simd_level) {
                return recserve::topk_small_batch(recserve::resolve_simd_level(simd_level));
            },
            py::arg("simd_level") = "",
            "The batch size from which topk_inner_product uses the packed path at this SIMD "
            "level (smaller batches use the rows path; see topk.h). The batch plan keeps "
            "query chunks below it, through recserve.core.kernels.topk_small_batch().");
    m.def("check_exclude_csr", &check_exclude, py::arg("exclude_indptr"),
          py::arg("exclude_ids"), py::arg("num_rows"), py::arg("num_items"),
          "Raise ValueError/IndexError unless (exclude_indptr, exclude_ids) is a valid int64 "
          "CSR exclusion list for num_rows queries over num_items items.");

    recserve::bindings::bind_crossing(m);

    m.attr("SIMD_LEVEL") = recserve::simd_level_name(recserve::default_simd_level());
    py::list supported;
    for (recserve::SimdLevel level : recserve::supported_simd_levels()) {
        supported.append(recserve::simd_level_name(level));
    }
    m.attr("SUPPORTED_SIMD_LEVELS") = py::tuple(supported);
    m.attr("__version__") = RECSERVE_VERSION;
#ifdef RECSERVE_WITH_CUDA
    m.attr("HAS_CUDA") = true;
    recserve::bindings::bind_cuda(m);
#else
    m.attr("HAS_CUDA") = false;
#endif
}
