// Registration functions of the binding files; module.cpp calls each once.
#pragma once

#include <pybind11/pybind11.h>

namespace recserve::bindings {

// Fused feature crossing for the DNN rankers (csrc/bindings/crossing.cpp).
void bind_crossing(pybind11::module_& m);

#ifdef RECSERVE_WITH_CUDA
// The CUDA kernels on device pointers (csrc/bindings/cuda.cpp).
void bind_cuda(pybind11::module_& m);
#endif

}  // namespace recserve::bindings
