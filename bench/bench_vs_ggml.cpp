// Same-process, interleaved comparison of our GEMV against ggml's CPU MUL_MAT (iq2_xxs,
// q2_K) and OpenBLAS sgemv/sgemm on one M x N layer. Built only when CMake is given
// -DVPTQ_GGML_DIR=<ggml build dir> -DVPTQ_GGML_INCLUDE=<ggml source>/include (ggml is
// never part of this repository).
// usage: bench_vs_ggml M N [batch=1] [rounds=15] [ms_per_round=60] [configs...]
//   configs: v-k1-k2 names as in bench_gemv.py (default: the 2-bit set).
// Every method runs for ~ms_per_round per round, rounds interleave the methods, and a
// round's figure is the MEAN time per call in it (the statistic test-backend-ops prints),
// after one untimed call (steady state: caches hold that method's data).
// Reported: the median over rounds of each method's mean, and of its per-round ratio to
// OpenBLAS and to iq2_xxs, so a burst of noise on the shared machine moves one round only.
// One thread: ggml's graph runs with n_threads = 1, OpenBLAS and our OpenMP with 1 thread.
#include <cblas.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_layer.h"
#include "vptq/common.h"
#include "vptq/simd.h"

extern "C" void openblas_set_num_threads(int);

namespace {

struct Method {
  std::string name;
  std::function<void()> run;
  std::vector<double> ms;  // per-round mean
};

/// A ggml mul_mat graph y = A x with A [M, N] of `type` (rows quantized from random
/// normal-ish data with a unit importance matrix) and x [batch, N] f32.
struct GgmlMatmul {
  ggml_context* ctx = nullptr;
  ggml_cgraph* gf = nullptr;
  GgmlMatmul(ggml_type type, long M, long N, long batch, const float* x, vptq::Rng& rng) {
    const size_t abytes = ggml_row_size(type, N) * static_cast<size_t>(M);
    ggml_init_params ip{abytes + static_cast<size_t>(batch * (N + M)) * 4 + (64u << 20), nullptr, false};
    ctx = ggml_init(ip);
    ggml_tensor* A = ggml_new_tensor_2d(ctx, type, N, M);
    ggml_tensor* X = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, N, batch);
    std::memcpy(X->data, x, static_cast<size_t>(batch * N) * sizeof(float));
    // quantize 16 random rows, replicate them (kernel speed does not depend on the values)
    const long R = 16;
    std::vector<float> src(static_cast<size_t>(R * N)), imat(static_cast<size_t>(N), 1.0f);
    for (auto& f : src) f = static_cast<float>(rng.uniform() - 0.5);
    std::vector<char> q(ggml_row_size(type, N) * R);
    ggml_quantize_chunk(type, src.data(), q.data(), 0, R, N, imat.data());
    for (long r = 0; r < M; r += R)
      std::memcpy(static_cast<char*>(A->data) + ggml_row_size(type, N) * r, q.data(),
                  ggml_row_size(type, N) * static_cast<size_t>(std::min(R, M - r)));
    ggml_tensor* Y = ggml_mul_mat(ctx, A, X);
    gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, Y);
  }
  void run() const { ggml_graph_compute_with_ctx(ctx, gf, 1); }
  ~GgmlMatmul() { ggml_free(ctx); }
  GgmlMatmul(const GgmlMatmul&) = delete;
  GgmlMatmul& operator=(const GgmlMatmul&) = delete;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s M N [batch] [rounds] [ms_per_round] [configs...]\n", argv[0]);
    return 2;
  }
  const long M = std::atol(argv[1]), N = std::atol(argv[2]);
  const long batch = argc > 3 ? std::atol(argv[3]) : 1;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 15;
  const double round_ms = argc > 5 ? std::atof(argv[5]) : 60.0;
  std::vector<std::string> configs;
  for (int i = 6; i < argc; ++i) configs.emplace_back(argv[i]);
  if (configs.empty()) configs = {"v8-k256-256", "v6-k4096-0", "v8-k65536-0", "v12-k4096-4096", "v16-k65536-65536"};

  vptq::set_num_threads(1);
  openblas_set_num_threads(1);
  ggml_cpu_init();
  vptq::Rng rng(7);
  std::vector<float> x(static_cast<size_t>(batch * N)), W(static_cast<size_t>(M * N)),
      y(static_cast<size_t>(batch * M));
  for (auto& f : x) f = static_cast<float>(rng.uniform() - 0.5);
  for (auto& f : W) f = static_cast<float>(rng.uniform() - 0.5);

  std::vector<Method> methods;
  methods.push_back({"OpenBLAS fp32", [&] {
                       if (batch == 1)
                         cblas_sgemv(CblasRowMajor, CblasNoTrans, M, N, 1.0f, W.data(), N, x.data(), 1, 0.0f, y.data(), 1);
                       else
                         cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, M, N, 1.0f, x.data(), N, W.data(), N,
                                     0.0f, y.data(), M);
                     }, {}});
  GgmlMatmul iq2(GGML_TYPE_IQ2_XXS, M, N, batch, x.data(), rng);
  GgmlMatmul q2k(GGML_TYPE_Q2_K, M, N, batch, x.data(), rng);
  methods.push_back({"ggml iq2_xxs", [&] { iq2.run(); }, {}});
  methods.push_back({"ggml q2_K", [&] { q2k.run(); }, {}});
  const vptq::GemvOptions opt = vptq_bench::options_from_env();
  std::vector<vptq::GemvPlan> plans;
  plans.reserve(configs.size());
  for (const auto& c : configs) {
    int v = 0;
    long long k1 = 0, k2 = 0;
    if (std::sscanf(c.c_str(), "v%d-k%lld-%lld", &v, &k1, &k2) != 3) {
      std::fprintf(stderr, "bad config %s (expected v<v>-k<k1>-<k2>)\n", c.c_str());
      return 2;
    }
    plans.push_back(vptq_bench::random_plan(M, N, v, k1, k2, 0.0, 0, 0, rng, opt));
    vptq::GemvPlan* p = &plans.back();
    methods.push_back({c, [&, p] { p->forward(x.data(), batch, y.data()); }, {}});
  }
  for (auto& m : methods) m.run();  // warm up
  for (int r = 0; r < rounds; ++r)
    for (auto& m : methods) {
      m.run();  // untimed: the caches hold this method's data, not the previous method's
      int n = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double el = 0;
      do {
        m.run();
        ++n;
        el = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      } while (el < round_ms);
      m.ms.push_back(el / n);
    }
  std::printf("M=%ld N=%ld batch=%ld, one thread, %d interleaved rounds of ~%g ms per method (level %s)\n", M, N, batch,
              rounds, round_ms, vptq::simd_level_name(vptq::get_simd_level()));
  std::printf("%-18s %10s %10s %12s %12s\n", "method", "ms", "min ms", "x OpenBLAS", "x iq2_xxs");
  for (auto& m : methods) {
    std::vector<double> rb, ri;
    for (int r = 0; r < rounds; ++r) {
      rb.push_back(methods[0].ms[r] / m.ms[r]);
      ri.push_back(methods[1].ms[r] / m.ms[r]);
    }
    std::printf("%-18s %10.3f %10.3f %12.2f %12.2f\n", m.name.c_str(), median(m.ms),
                *std::min_element(m.ms.begin(), m.ms.end()), median(rb), median(ri));
  }
  std::printf("(ms: median over rounds of the mean per call; ratios: median of per-round ratios, > 1 = faster)\n");
  return 0;
}
