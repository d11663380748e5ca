// Runtime SIMD dispatch for the CPU kernels.
//
// The library is built with baseline flags; the AVX2 and AVX-512 kernels live in their
// own translation units (csrc/cpu/topk_avx2.cpp, topk_avx512.cpp), compiled with
// per-file flags, and are only called after the CPU has been asked (cpuid) whether it
// has the instructions. A level is a plain value, passed down each call: there is no
// mutable global state (no function pointer that a setter could change under a
// running call).
//
// The default level is the best the CPU supports, or the one named by the environment
// variable RECSERVE_SIMD_LEVEL (scalar | avx2 | avx512), read once, the first time
// default_simd_level() is called (at `import recserve._core`). A name that is not a
// level, or a level this CPU lacks, is an error (std::invalid_argument), not a silent
// fallback: forcing a level is for tests and benchmarks, which must not measure
// something else than they asked for.
#pragma once

#include <string>
#include <vector>

namespace recserve {

enum class SimdLevel : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// "scalar", "avx2" or "avx512".
const char* simd_level_name(SimdLevel level);

// The level called `name`; throws std::invalid_argument for an unknown name.
SimdLevel parse_simd_level(const std::string& name);

// True when this CPU (and OS) can run the kernels of `level`.
bool simd_level_supported(SimdLevel level);

// Levels this CPU supports, from scalar up.
std::vector<SimdLevel> supported_simd_levels();

// RECSERVE_SIMD_LEVEL if set, else the best supported level; computed once. Throws
// std::invalid_argument if the variable names an unknown or unsupported level.
SimdLevel default_simd_level();

// `name` parsed and checked against the CPU (throws std::invalid_argument with the
// supported list otherwise); an empty name means default_simd_level().
SimdLevel resolve_simd_level(const std::string& name);

}  // namespace recserve
