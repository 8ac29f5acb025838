// C++ micro-benchmark of GemvPlan::forward on random VQ weights.
// usage: bench_gemv_cpp M N v k1 k2 [batch=1] [level=auto] [reps=50] [outlier_pct=0 v0=4 k0=4096] [layers=1]
// With one thread, the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID) is robust to
// preemption on a shared machine. Environment: VPTQ_BENCH_COMPACT=0 keeps every codebook in fp32;
// VPTQ_BENCH_BLAS_MIN_BATCH=n sets GemvOptions::blas_min_batch (0 = lookup kernels only);
// VPTQ_BENCH_SORTED_MIN_BYTES / _MAX_RES_BYTES / _CHUNK_BYTES / _TILE_BLOCKS set the sorted-layout options
// (MIN_BYTES=0: never sorted).
// Prints the best-of-reps time per forward in ms (and the median). With layers > 1 it cycles through that
// many distinct plans (to defeat the caches) and reports effective GB/s of kernel bytes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "bench_layer.h"
#include "vptq/gemv.h"
#include "vptq/simd.h"


int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s M N v k1 k2 [batch] [level] [reps] [opct v0 k0] [layers]\n", argv[0]);
    return 2;
  }
  const vptq::idx_t M = std::atoll(argv[1]), N = std::atoll(argv[2]);
  const int v = std::atoi(argv[3]);
  const vptq::idx_t k1 = std::atoll(argv[4]), k2 = std::atoll(argv[5]);
  const vptq::idx_t batch = argc > 6 ? std::atoll(argv[6]) : 1;
  const std::string level = argc > 7 ? argv[7] : "auto";
  const int reps = argc > 8 ? std::atoi(argv[8]) : 50;
  const double opct = argc > 9 ? std::atof(argv[9]) : 0.0;
  const int v0 = argc > 10 ? std::atoi(argv[10]) : 4;
  const vptq::idx_t k0 = argc > 11 ? std::atoll(argv[11]) : 4096;
  const int layers = argc > 12 ? std::atoi(argv[12]) : 1;
  vptq::Rng rng(1);
  const vptq::GemvOptions opt = vptq_bench::options_from_env();
  std::vector<vptq::GemvPlan> plans;
  for (int l = 0; l < layers; ++l) plans.push_back(vptq_bench::random_plan(M, N, v, k1, k2, opct, v0, k0, rng, opt));
  std::vector<float> x(batch * N), y(batch * M);
  for (auto& f : x) f = static_cast<float>(rng.uniform() - 0.5);
  const vptq::SimdLevel lv = level == "auto" ? vptq::get_simd_level() : vptq::parse_simd_level(level);
  double best = 1e30, best_cpu = 1e30;
  std::vector<double> times;
  auto cpu_ms = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
  };
  for (int r = 0; r < reps; ++r) {
    const double c0 = cpu_ms();
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& p : plans) p.forward(x.data(), batch, y.data(), lv);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, ms / layers);
    times.push_back(ms / layers);
    best_cpu = std::min(best_cpu, (cpu_ms() - c0) / layers);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double gbs = static_cast<double>(plans[0].kernel_bytes()) / (best * 1e-3) / 1e9;
  std::printf("M=%lld N=%lld v%d-k%lld-%lld opct=%g batch=%lld level=%s threads=%d storage=%s: %.3f ms/layer, %.2f GB/s (calling thread's CPU time %.3f ms; median %.3f ms)\n",
              static_cast<long long>(M), static_cast<long long>(N), v, static_cast<long long>(k1),
              static_cast<long long>(k2), opct, static_cast<long long>(batch), vptq::simd_level_name(lv),
              vptq::get_num_threads(), plans[0].codebook_storage().c_str(), best, gbs, best_cpu, median);
  return 0;
}
