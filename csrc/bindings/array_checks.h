// Argument checks shared by every binding file: one set of helpers, so every entry point
// refuses a wrong array with the same words (which argument, what was expected, how to
// convert it). Call them while holding the GIL; each throws std::invalid_argument
// (ValueError in Python) through RECSERVE_THROW_IF_NOT.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "recserve/assert.h"

namespace recserve::bindings {

// The numpy name of each element type the bindings accept.
template <typename T>
constexpr const char* dtype_name();
template <>
constexpr const char* dtype_name<float>() {
    return "float32";
}
template <>
constexpr const char* dtype_name<int64_t>() {
    return "int64";
}
template <>
constexpr const char* dtype_name<uint16_t>() {
    return "uint16";
}

// "(3,)", "(2,4)": numpy's spelling of a shape.
inline std::string shape_string(const pybind11::array& a) {
    std::ostringstream out;
    out << "(";
    for (pybind11::ssize_t i = 0; i < a.ndim(); ++i) {
        out << a.shape(i) << (a.ndim() == 1 || i + 1 < a.ndim() ? "," : "");
    }
    out << ")";
    return out.str();
}

// Checks that `a` is an ndim-D, C-contiguous, aligned array of exactly T and returns its
// data. `fn`, `name` and `layout` (e.g. "topk_scores", "queries", "[B, D]") are for the
// messages.
template <typename T>
const T* checked_array(const pybind11::array& a, const char* fn, const char* name,
                       pybind11::ssize_t ndim, const char* layout) {
    RECSERVE_THROW_IF_NOT(a.ndim() == ndim, fn << ": " << name << " must be a " << ndim
                                               << "-D array " << layout << ", got a "
                                               << a.ndim() << "-D array of shape "
                                               << shape_string(a));
    RECSERVE_THROW_IF_NOT(pybind11::isinstance<pybind11::array_t<T>>(a),
                          fn << ": " << name << " must have dtype " << dtype_name<T>()
                             << ", got " << std::string(pybind11::str(a.dtype()))
                             << "; convert it with np.asarray(" << name << ", dtype=np."
                             << dtype_name<T>() << ")");
    RECSERVE_THROW_IF_NOT(a.flags() & pybind11::array::c_style,
                          fn << ": " << name << " must be C-contiguous (row-major); pass "
                             << "np.ascontiguousarray(" << name << ")");
    RECSERVE_THROW_IF_NOT(reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) == 0,
                          fn << ": " << name << " is not aligned to " << alignof(T)
                             << " bytes; pass a copy, np.array(" << name << ")");
    return static_cast<const T*>(a.data());
}

// Refuses `a` unless `ok`: `what` names the dimension and what it must agree with.
inline void check_dim(bool ok, const char* fn, const char* what, const pybind11::array& a,
                      int64_t expected) {
    RECSERVE_THROW_IF_NOT(ok, fn << ": " << what << " must be " << expected << ", got shape "
                                 << shape_string(a));
}

}  // namespace recserve::bindings
