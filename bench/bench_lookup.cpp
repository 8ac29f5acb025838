// Why v12-k4096-4096 layers trail: per (row block, column) one main and one residual entry
// of 12 values are looked up, summed and multiplied into 12 accumulators, and two 4096-entry
// codebooks (128 KiB each in fp16) do not fit L1. This times the library's batch-1 kernel on
// 4096 x 4096 v12 layers with both codebooks of k = 256 .. 4096 entries, and, next to it, a
// prototype of the "2-D sorted" alternative: lookups visited by (main chunk, residual chunk)
// so that both chunks stay in L1, at the price of a list entry, an x broadcast and padding
// per lookup. Time per lookup; ratios against the library's k = 4096 layer of the same run.
//
//   bench_lookup [reps]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_layer.h"

namespace {

constexpr int kN = 4096;    // columns
constexpr int kRB = 342;    // row blocks of 12 rows (4096 rows)
constexpr int kVP = 16;     // fp16 values per padded entry
constexpr int kGroup = 4;   // lists per register group in the sorted form

struct Codebooks {
  std::vector<std::uint16_t> main, res;  // k * kVP halves each
};

Codebooks make_codebooks(int k) {
  Codebooks c{std::vector<std::uint16_t>(static_cast<std::size_t>(k) * kVP, 0x3c00),
              std::vector<std::uint16_t>(static_cast<std::size_t>(k) * kVP, 0x2e66)};
  return c;
}

__attribute__((target("avx2,fma,f16c"))) inline __m256 entry8(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

/// One group of the sorted form: kGroup lists (row blocks rb0..) of len rounds each, all
/// lookups in main chunk cm and residual chunk cr. Entry: column (12 bits) | main entry in
/// chunk (10 bits) | residual entry in chunk (10 bits).
struct Group {
  int rb0;
  std::uint32_t first, len;
  const std::uint16_t* cm;
  const std::uint16_t* cr;
};

__attribute__((target("avx2,fma,f16c"), noinline)) float sorted2d(const std::vector<Group>& gs,
                                                                   const std::uint32_t* ent, const float* x, float* y) {
  for (const Group& g : gs) {
    __m256 A[kGroup][2];
    for (auto& a : A) a[0] = a[1] = _mm256_setzero_ps();
    const std::uint32_t* e = ent + g.first;
    for (std::uint32_t r = 0; r < g.len; ++r, e += kGroup) {
#pragma GCC unroll 4
      for (int l = 0; l < kGroup; ++l) {
        std::uint32_t w = e[l];
        asm("" : "+r"(w));  // one load per entry
        const __m256 X = _mm256_broadcast_ss(x + (w & 0xfffu));
        const std::uint16_t* pm = g.cm + ((w >> 12) & 0x3ffu) * kVP;
        const std::uint16_t* pr = g.cr + (w >> 22) * kVP;
        A[l][0] = _mm256_fmadd_ps(X, _mm256_add_ps(entry8(pm), entry8(pr)), A[l][0]);
        A[l][1] = _mm256_fmadd_ps(X, _mm256_add_ps(entry8(pm + 8), entry8(pr + 8)), A[l][1]);
      }
    }
    for (int l = 0; l < kGroup && g.rb0 + l < kRB; ++l) {
      float* o = y + (g.rb0 + l) * kVP;
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), A[l][0]));
      _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), A[l][1]));
    }
  }
  return y[0];
}

/// Lists of the sorted form for chunks of cm main and cr residual entries; returns the
/// padding factor (list entries / lookups). Padding entries read column kN, where x is 0.
double build_sorted(const std::vector<std::uint16_t>& i1, const std::vector<std::uint16_t>& i2, int k, int cm,
                    int cr, const Codebooks& c, std::vector<Group>* gs, std::vector<std::uint32_t>* ent) {
  const int nqm = k / cm, nqr = k / cr;
  std::vector<std::vector<std::uint32_t>> lists(static_cast<std::size_t>(nqm) * nqr * kRB);
  for (int rb = 0; rb < kRB; ++rb)
    for (int j = 0; j < kN; ++j) {
      const int a = i1[static_cast<std::size_t>(rb) * kN + j], b = i2[static_cast<std::size_t>(rb) * kN + j];
      const auto w = static_cast<std::uint32_t>(j) | static_cast<std::uint32_t>(a % cm) << 12 |
                     static_cast<std::uint32_t>(b % cr) << 22;
      lists[(static_cast<std::size_t>(a / cm) * nqr + b / cr) * kRB + rb].push_back(w);
    }
  std::size_t total = 0;
  for (int qm = 0; qm < nqm; ++qm)
    for (int qr = 0; qr < nqr; ++qr)
      for (int rb0 = 0; rb0 < kRB; rb0 += kGroup) {
        auto list = [&](int l) -> const std::vector<std::uint32_t>* {
          return rb0 + l < kRB ? &lists[(static_cast<std::size_t>(qm) * nqr + qr) * kRB + rb0 + l] : nullptr;
        };
        std::size_t len = 0;
        for (int l = 0; l < kGroup; ++l)
          if (list(l) != nullptr) len = std::max(len, list(l)->size());
        gs->push_back(Group{rb0, static_cast<std::uint32_t>(ent->size()), static_cast<std::uint32_t>(len),
                            c.main.data() + static_cast<std::size_t>(qm) * cm * kVP,
                            c.res.data() + static_cast<std::size_t>(qr) * cr * kVP});
        for (std::size_t r = 0; r < len; ++r)
          for (int l = 0; l < kGroup; ++l) {
            const auto* L = list(l);
            ent->push_back(L != nullptr && r < L->size() ? (*L)[r] : static_cast<std::uint32_t>(kN));
          }
        total += len * kGroup;
      }
  return static_cast<double>(total) / (static_cast<double>(kRB) * kN);
}

template <class F>
double best_ms(int reps, F f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 200;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    std::printf("skipped: this CPU lacks AVX2/FMA/F16C\n");
    return 0;
  }
  const double lookups = kRB * static_cast<double>(kN);
  std::printf("4096 x 4096 v12 layer with a residual codebook, batch 1, one thread, best of %d;\n"
              "ratio: time per lookup against the library's k = 4096 layer (< 1: faster)\n",
              reps);
  std::printf("%-44s %9s %9s %8s\n", "form", "ms", "ns/look", "ratio");
  vptq::Rng rng(1);
  std::vector<float> xl(kN), yl(static_cast<std::size_t>(kRB) * 12);
  for (auto& f : xl) f = static_cast<float>(rng.uniform() - 0.5);
  std::vector<std::pair<std::string, double>> rows;
  for (int k : {256, 1024, 2048, 4096}) {
    const vptq::GemvPlan plan = vptq_bench::random_plan(4096, kN, 12, k, k, 0.0, 0, 0, rng, vptq_bench::options_from_env());
    const double ms = best_ms(reps, [&] { plan.forward(xl.data(), 1, yl.data(), vptq::get_simd_level()); });
    rows.emplace_back("library, k = " + std::to_string(k) + " + " + std::to_string(k) + " (" +
                          plan.codebook_storage() + ")",
                      ms);
  }
  const double base = rows.back().second / lookups;
  std::mt19937 gen(1);
  std::uniform_int_distribution<int> d(0, 4095);
  std::vector<std::uint16_t> i1(static_cast<std::size_t>(kRB) * kN), i2(i1.size());
  for (auto& v : i1) v = static_cast<std::uint16_t>(d(gen));
  for (auto& v : i2) v = static_cast<std::uint16_t>(d(gen));
  const Codebooks c = make_codebooks(4096);
  std::vector<float> x(kN + 1, 1e-3f), y((kRB + kGroup) * kVP);
  x[kN] = 0.0f;
  const int chunks[][2] = {{512, 256}, {1024, 256}, {256, 512}};
  for (const auto& ch : chunks) {
    std::vector<Group> gs;
    std::vector<std::uint32_t> ent;
    const double pad = build_sorted(i1, i2, 4096, ch[0], ch[1], c, &gs, &ent);
    const double ms = best_ms(reps, [&] { sorted2d(gs, ent.data(), x.data(), y.data()); });
    char name[80];
    std::snprintf(name, sizeof name, "2-D sorted, k = 4096, %d x %d (pad %.2f)", ch[0], ch[1], pad);
    rows.emplace_back(name, ms);
  }
  for (const auto& [name, ms] : rows)
    std::printf("%-44s %9.3f %9.3f %8.2f\n", name.c_str(), ms, ms * 1e6 / lookups, ms / lookups / base);
  return 0;
}
