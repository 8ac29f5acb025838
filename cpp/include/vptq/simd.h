// Runtime SIMD level selection. One binary runs everywhere: kernels for each
// level live in their own translation units and are chosen at run time.
#pragma once

#include <string>

namespace vptq {

enum class SimdLevel : int { Scalar = 0, AVX2 = 1, AVX512 = 2, NEON = 3 };

/// Best level this CPU (and OS) supports.
SimdLevel detect_simd_level();
/// True if `level` can run on this CPU (Scalar always can).
bool simd_level_supported(SimdLevel level);
/// Level in use: the env var VPTQ_SIMD (scalar|avx2|avx512|neon) read at first
/// use, else detect_simd_level(); changed by set_simd_level().
SimdLevel get_simd_level();
/// Forces a level; throws std::invalid_argument if the CPU lacks it.
void set_simd_level(SimdLevel level);
const char* simd_level_name(SimdLevel level);
/// Parses "scalar"/"avx2"/"avx512"/"neon" (case-insensitive); throws on others.
SimdLevel parse_simd_level(const std::string& name);

/// CPU feature flags as seen by the dispatcher.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool neon = false;
};
CpuFeatures cpu_features();

}  // namespace vptq
