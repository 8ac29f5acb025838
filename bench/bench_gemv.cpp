// C++ micro-benchmark of GemvPlan::forward on random VQ weights.
// usage: bench_gemv_cpp M N v k1 k2 [batch=1] [level=auto] [reps=50] [outlier_pct=0 v0=4 k0=4096] [layers=1]
// With one thread, the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID) is robust to
// preemption on a shared machine. Environment: VPTQ_BENCH_COMPACT=0 keeps every codebook in fp32;
// VPTQ_BENCH_BLAS_MIN_BATCH=n sets GemvOptions::blas_min_batch (0 = lookup kernels only);
// VPTQ_BENCH_SORTED_MIN_BYTES / _MAX_RES_BYTES / _CHUNK_BYTES / _TILE_BLOCKS set the sorted-layout options
// (MIN_BYTES=0: never sorted).
// Prints the best-of-reps time per forward in ms. With layers > 1 it cycles through that
// many distinct plans (to defeat the caches) and reports effective GB/s of kernel bytes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "vptq/format.h"
#include "vptq/gemv.h"
#include "vptq/simd.h"

namespace {
float round_half(float f) {  // keep 11 significant bits (fp16-exact for |f| in normal range)
  if (f == 0.0f) return f;
  int e = 0;
  std::frexp(f, &e);
  const float q = std::ldexp(1.0f, std::max(e - 11, -24));
  return std::nearbyint(f / q) * q;
}
}  // namespace

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
  const vptq::VQLayout L = vptq::make_layout(M, N, v, k1, k2, opct, opct > 0 ? v0 : 0, opct > 0 ? k0 : 0, 1);
  vptq::Rng rng(1);
  std::vector<vptq::GemvPlan> plans;
  for (int l = 0; l < layers; ++l) {
    std::vector<float> cb(k1 * v), rcb(k2 * v), ocb(L.k0 * L.v0);
    for (auto& f : cb) f = round_half(static_cast<float>(rng.uniform()));
    for (auto& f : rcb) f = round_half(static_cast<float>(rng.uniform() * 0.1));
    for (auto& f : ocb) f = round_half(static_cast<float>(rng.uniform()));
    const vptq::idx_t nb = L.num_indices();
    std::vector<std::uint16_t> idx(nb * L.group_size), ridx(k2 > 0 ? idx.size() : 0),
        oidx(L.num_outlier_indices() * L.outlier_size);
    for (auto& i : idx) i = static_cast<std::uint16_t>(rng.below(k1));
    for (auto& i : ridx) i = static_cast<std::uint16_t>(rng.below(k2));
    for (auto& i : oidx) i = static_cast<std::uint16_t>(rng.below(L.k0));
    vptq::VQWeightsView w;
    w.layout = L;
    w.centroids = cb.data();
    w.res_centroids = k2 > 0 ? rcb.data() : nullptr;
    w.outlier_centroids = L.k0 > 0 ? ocb.data() : nullptr;
    w.indices = idx.data();
    w.res_indices = k2 > 0 ? ridx.data() : nullptr;
    w.outlier_indices = L.k0 > 0 ? oidx.data() : nullptr;
    vptq::GemvOptions opt;
    if (const char* e = std::getenv("VPTQ_BENCH_COMPACT")) opt.allow_compact_codebooks = std::atoi(e) != 0;
    if (const char* e = std::getenv("VPTQ_BENCH_BLAS_MIN_BATCH")) opt.blas_min_batch = std::atoll(e);
    if (const char* e = std::getenv("VPTQ_BENCH_SORTED_MIN_BYTES")) opt.sorted_min_codebook_bytes = std::strtoull(e, nullptr, 10);
    if (const char* e = std::getenv("VPTQ_BENCH_SORTED_MAX_RES_BYTES")) opt.sorted_max_residual_bytes = std::strtoull(e, nullptr, 10);
    if (const char* e = std::getenv("VPTQ_BENCH_SORTED_CHUNK_BYTES")) opt.sorted_chunk_bytes = std::strtoull(e, nullptr, 10);
    if (const char* e = std::getenv("VPTQ_BENCH_SORTED_TILE_BLOCKS")) opt.sorted_tile_blocks = std::atoll(e);
    plans.emplace_back(w, nullptr, opt);
  }
  std::vector<float> x(batch * N), y(batch * M);
  for (auto& f : x) f = static_cast<float>(rng.uniform() - 0.5);
  const vptq::SimdLevel lv = level == "auto" ? vptq::get_simd_level() : vptq::parse_simd_level(level);
  double best = 1e30, best_cpu = 1e30;
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
    best_cpu = std::min(best_cpu, (cpu_ms() - c0) / layers);
  }
  const double gbs = static_cast<double>(plans[0].kernel_bytes()) / (best * 1e-3) / 1e9;
  std::printf("M=%lld N=%lld v%d-k%lld-%lld opct=%g batch=%lld level=%s threads=%d storage=%s: %.3f ms/layer, %.2f GB/s (calling thread's CPU time %.3f ms)\n",
              static_cast<long long>(M), static_cast<long long>(N), v, static_cast<long long>(k1),
              static_cast<long long>(k2), opct, static_cast<long long>(batch), vptq::simd_level_name(lv),
              vptq::get_num_threads(), plans[0].codebook_storage().c_str(), best, gbs, best_cpu);
  return 0;
}
