#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>

#include "vptq/common.h"
#include "vptq/simd.h"

namespace vptq {

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's __builtin_cpu_supports checks XGETBV (OS support for the wider
  // register state) as well as the CPUID bits since GCC 11.
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.bmi2 = __builtin_cpu_supports("bmi2");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
#elif defined(__aarch64__)
  f.neon = true;
#endif
  return f;
}

bool simd_level_supported(SimdLevel level) {
  const CpuFeatures f = cpu_features();
  switch (level) {
    case SimdLevel::Scalar:
      return true;
    case SimdLevel::AVX2:
      return f.avx2 && f.fma && f.f16c && f.bmi2;
    case SimdLevel::AVX512:
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c && f.bmi2;
    case SimdLevel::NEON:
#if defined(VPTQ_HAVE_NEON_KERNELS)
      return f.neon;
#else
      return false;
#endif
  }
  return false;
}

SimdLevel detect_simd_level() {
  if (simd_level_supported(SimdLevel::AVX512)) return SimdLevel::AVX512;
  if (simd_level_supported(SimdLevel::AVX2)) return SimdLevel::AVX2;
  if (simd_level_supported(SimdLevel::NEON)) return SimdLevel::NEON;
  return SimdLevel::Scalar;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar:
      return "scalar";
    case SimdLevel::AVX2:
      return "avx2";
    case SimdLevel::AVX512:
      return "avx512";
    case SimdLevel::NEON:
      return "neon";
  }
  return "unknown";
}

SimdLevel parse_simd_level(const std::string& name) {
  std::string s;
  for (char c : name) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (s == "scalar") return SimdLevel::Scalar;
  if (s == "avx2") return SimdLevel::AVX2;
  if (s == "avx512") return SimdLevel::AVX512;
  if (s == "neon") return SimdLevel::NEON;
  throw std::invalid_argument("unknown SIMD level '" + name +
                              "', expected one of: scalar, avx2, avx512, neon");
}

namespace {
std::atomic<int> g_level{-1};
std::once_flag g_init;

void init_level() {
  SimdLevel level = detect_simd_level();
  if (const char* env = std::getenv("VPTQ_SIMD")) {
    if (*env) {
      const SimdLevel want = parse_simd_level(env);
      VPTQ_CHECK(simd_level_supported(want), "VPTQ_SIMD=", env,
                 " requested but this CPU does not support it (best: ",
                 simd_level_name(detect_simd_level()), ")");
      level = want;
    }
  }
  g_level.store(static_cast<int>(level));
}
}  // namespace

SimdLevel get_simd_level() {
  std::call_once(g_init, init_level);
  return static_cast<SimdLevel>(g_level.load());
}

void set_simd_level(SimdLevel level) {
  std::call_once(g_init, init_level);
  VPTQ_CHECK(simd_level_supported(level), "SIMD level ", simd_level_name(level),
             " is not supported on this CPU (best: ", simd_level_name(detect_simd_level()), ")");
  g_level.store(static_cast<int>(level));
}

}  // namespace vptq
