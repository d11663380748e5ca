"""The C++ kernels' facades, the only Python that calls ``recserve._core``.

``kernels``: top-k over scores and the fused inner-product top-k over a catalog, on the
host or a CUDA device, with run-time SIMD dispatch. ``crossing``: the fused feature
crossing of the DNN rankers' first layer. Both convert and check their inputs, then hand
them to the C++ core (csrc/).
"""
