// CPU feature detection and the choice of SIMD level (see recserve/simd.h).
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "recserve/assert.h"
#include "recserve/simd.h"

namespace recserve {

namespace {

std::string supported_list() {
    std::ostringstream out;
    const char* sep = "";
    for (SimdLevel level : supported_simd_levels()) {
        out << sep << simd_level_name(level);
        sep = ", ";
    }
    return out.str();
}

SimdLevel checked(SimdLevel level, const char* source) {
    RECSERVE_THROW_IF_NOT(simd_level_supported(level),
                          source << " asks for SIMD level '" << simd_level_name(level)
                                 << "', which this CPU does not support; supported: "
                                 << supported_list());
    return level;
}

SimdLevel best_supported() {
    const std::vector<SimdLevel> levels = supported_simd_levels();
    return levels.back();
}

SimdLevel level_from_environment() {
    const char* env = std::getenv("RECSERVE_SIMD_LEVEL");
    if (env == nullptr || *env == '\0') {
        return best_supported();
    }
    SimdLevel level;
    try {
        level = parse_simd_level(env);
    } catch (const std::invalid_argument& e) {
        RECSERVE_THROW_MSG("environment variable RECSERVE_SIMD_LEVEL: " << e.what()
                                                                        << "; unset it to use "
                                                                           "the best level");
    }
    return checked(level, "environment variable RECSERVE_SIMD_LEVEL");
}

}  // namespace

const char* simd_level_name(SimdLevel level) {
    switch (level) {
        case SimdLevel::kScalar:
            return "scalar";
        case SimdLevel::kAvx2:
            return "avx2";
        case SimdLevel::kAvx512:
            return "avx512";
    }
    return "unknown";
}

SimdLevel parse_simd_level(const std::string& name) {
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
        if (name == simd_level_name(level)) {
            return level;
        }
    }
    RECSERVE_THROW_MSG("unknown SIMD level '" << name
                                              << "'; expected one of scalar, avx2, avx512");
}

bool simd_level_supported(SimdLevel level) {
    switch (level) {
        case SimdLevel::kScalar:
            return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        case SimdLevel::kAvx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case SimdLevel::kAvx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("fma");
#else
        default:
            return false;
#endif
    }
    return false;
}

std::vector<SimdLevel> supported_simd_levels() {
    std::vector<SimdLevel> levels;
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
        if (simd_level_supported(level)) {
            levels.push_back(level);
        }
    }
    return levels;
}

SimdLevel default_simd_level() {
    // A function-local constant, initialised once (thread-safe); never changed after.
    static const SimdLevel level = level_from_environment();
    return level;
}

SimdLevel resolve_simd_level(const std::string& name) {
    if (name.empty()) {
        return default_simd_level();
    }
    return checked(parse_simd_level(name), "simd_level");
}

}  // namespace recserve
