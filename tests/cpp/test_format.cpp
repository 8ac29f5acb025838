// Layout computation, packed index bitstream and reference dequantization
// (design note §3.2-§3.6): worked examples, round trips, a bit-by-bit packer
// and a dequantization written directly from the formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "vptq/common.h"
#include "vptq/format.h"

namespace {

using vptq::idx_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

idx_t words_for(idx_t cols, int T) { return (cols * T + 31) / 32; }

/// Naive packer straight from §3.3: bit t of code c goes to stream bit c*T + t.
std::vector<u32> naive_pack(const std::vector<u16>& idx, const std::vector<u16>* ridx, idx_t rows, idx_t cols,
                            int b1, int b2) {
  const int T = b1 + b2;
  const idx_t W = words_for(cols, T);
  std::vector<u32> out(static_cast<std::size_t>(rows * W), 0u);
  for (idx_t r = 0; r < rows; ++r)
    for (idx_t c = 0; c < cols; ++c) {
      const std::uint64_t m =
          (static_cast<std::uint64_t>(ridx ? (*ridx)[r * cols + c] : 0) << b1) | idx[r * cols + c];
      for (int t = 0; t < T; ++t) {
        const idx_t pos = c * T + t;
        if ((m >> t) & 1u) out[r * W + pos / 32] |= u32{1} << (pos % 32);
      }
    }
  return out;
}

std::vector<u16> random_codes(vptq::Rng& rng, idx_t n, int bits) {
  std::vector<u16> a(static_cast<std::size_t>(n));
  for (auto& x : a) x = bits == 0 ? 0 : static_cast<u16>(rng.below(std::uint64_t{1} << bits));
  return a;
}

std::vector<float> random_floats(vptq::Rng& rng, idx_t n) {
  std::vector<float> a(static_cast<std::size_t>(n));
  for (auto& x : a) x = static_cast<float>(rng.uniform() * 4.0 - 2.0);
  return a;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "<no exception>";
}

// ---------------------------------------------------------------- layout

TEST(FormatLayout, no_outliers_single_group) {
  const auto L = vptq::make_layout(100, 64, 8, 256, 256, 0.0, 0, 0, 1);
  EXPECT_EQ(L.outlier_size, 0);
  EXPECT_EQ(L.group_size, 64);
  EXPECT_EQ(L.num_indices(), 13);  // ceil(100 / 8)
  EXPECT_EQ(L.num_outlier_indices(), 0);
  EXPECT_EQ(L.index_bits(), 8);
  EXPECT_EQ(L.res_index_bits(), 8);
  EXPECT_EQ(L.outlier_index_bits(), 0);
  EXPECT_EQ(L.packed_words(), 32);  // 64 * 16 / 32
  EXPECT_EQ(L.v0, 0);
}

TEST(FormatLayout, outliers_absorb_group_remainder) {
  // o = ceil(0.01 * 1000) = 10; (1000 - 10) % 4 = 2 -> outlier_size 12, group_size 247.
  const auto L = vptq::make_layout(30, 1000, 6, 4096, 0, 1.0, 4, 1024, 4);
  EXPECT_EQ(L.outlier_size, 12);
  EXPECT_EQ(L.group_size, 247);
  EXPECT_EQ(L.outlier_size + L.group_num * L.group_size, 1000);
  EXPECT_EQ(L.num_indices(), 5);          // ceil(30 / 6)
  EXPECT_EQ(L.num_outlier_indices(), 8);  // ceil(30 / 4)
  EXPECT_EQ(L.outlier_index_bits(), 10);
  EXPECT_EQ(L.packed_words(), (247 * 12 + 31) / 32);
}

TEST(FormatLayout, outlier_percent_rounds_up) {
  // 0.5% of 4096 = 20.48 -> 21 outlier columns, (4096 - 21) % 1 = 0.
  const auto L = vptq::make_layout(8, 4096, 8, 65536, 0, 0.5, 4, 256, 1);
  EXPECT_EQ(L.outlier_size, 21);
  EXPECT_EQ(L.group_size, 4075);
}

TEST(FormatLayout, outlier_codebook_without_percent_absorbs_remainder) {
  const auto L = vptq::make_layout(8, 10, 2, 4, 0, 0.0, 2, 4, 4);
  EXPECT_EQ(L.outlier_size, 2);
  EXPECT_EQ(L.group_size, 2);
}

TEST(FormatLayout, group_num_four_divisible) {
  const auto L = vptq::make_layout(16, 64, 8, 256, 0, 0.0, -1, 0, 4);
  EXPECT_EQ(L.outlier_size, 0);
  EXPECT_EQ(L.group_size, 16);
  EXPECT_EQ(L.v0, 0);
}

TEST(FormatLayout, remainder_without_outliers_is_rejected) {
  const std::string e = error_of([] { vptq::make_layout(16, 66, 8, 256, 0, 0.0, 0, 0, 4); });
  EXPECT_NE(e.find("divisible by group_num"), std::string::npos) << e;
  EXPECT_NE(e.find("N = 66"), std::string::npos) << e;
}

TEST(FormatLayout, bad_parameters_are_rejected_with_names) {
  EXPECT_EQ(error_of([] { vptq::make_layout(8, 64, 8, 300, 0, 0.0, 0, 0, 1); }),
            "num_centroids k1 must be a power of two in [2, 65536], got 300");
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 131072, 0, 0.0, 0, 0, 1); }).find("got 131072"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 1, 0, 0.0, 0, 0, 1); }).find("k1"), std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 12, 0.0, 0, 0, 1); }).find("k2"), std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, -1, 0.0, 0, 0, 1); }).find("k2"), std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, 1.0, 4, 100, 1); }).find("k0"), std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 1, 256, 0, 0.0, 0, 0, 1); }).find("v (vector length)"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 17, 256, 0, 0.0, 0, 0, 1); }).find("got 17"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, 1.0, 1, 256, 1); }).find("v0"), std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, 1.0, 0, 0, 1); }).find("requires an outlier"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, 100.0, 4, 256, 1); }).find("outlier_percent"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, -1.0, 4, 256, 1); }).find("outlier_percent"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, std::nan(""), 4, 256, 1); }).find("outlier_percent"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(0, 64, 8, 256, 0, 0.0, 0, 0, 1); }).find("M (out_features)"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 0, 8, 256, 0, 0.0, 0, 0, 1); }).find("N (in_features)"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 65537, 8, 256, 0, 0.0, 0, 0, 1); }).find("65536"),
            std::string::npos);
  EXPECT_NE(error_of([] { vptq::make_layout(8, 64, 8, 256, 0, 0.0, 0, 0, 0); }).find("group_num"),
            std::string::npos);
  // More groups than columns.
  EXPECT_NE(error_of([] { vptq::make_layout(8, 4, 2, 4, 0, 0.0, 2, 4, 8); }).find("group"), std::string::npos);
  // 99% outliers of 10 columns leaves nothing for the groups.
  EXPECT_NE(error_of([] { vptq::make_layout(8, 10, 2, 4, 0, 99.0, 2, 4, 1); }).find("no column"),
            std::string::npos);
}

TEST(FormatLayout, check_layout_validates_given_sizes) {
  vptq::VQLayout L = vptq::make_layout(8, 64, 8, 256, 0, 0.0, 0, 0, 2);
  EXPECT_NO_THROW(vptq::check_layout(L));
  L.group_size = 31;
  EXPECT_THROW(vptq::check_layout(L), std::invalid_argument);
  L.group_size = 30;
  L.outlier_size = 4;  // outliers without an outlier codebook
  EXPECT_NE(error_of([&] { vptq::check_layout(L); }).find("k0"), std::string::npos);
  L.k0 = 16;
  L.v0 = 4;
  EXPECT_NO_THROW(vptq::check_layout(L));
  L.v0 = 0;
  EXPECT_THROW(vptq::check_layout(L), std::invalid_argument);
}

// ---------------------------------------------------------------- packing

TEST(FormatPack, worked_example_b16_no_residual) {
  const std::vector<u16> idx = {0x1234, 0xABCD, 0x0001};
  std::vector<u32> out(2, 0xFFFFFFFFu);
  vptq::pack_indices(idx.data(), nullptr, 1, 3, 16, 0, out.data());
  EXPECT_EQ(out[0], 0xABCD1234u);
  EXPECT_EQ(out[1], 0x00000001u);  // padding bits are zero
}

TEST(FormatPack, worked_example_b16_res8) {
  const std::vector<u16> idx = {0x1234, 0xABCD};
  const std::vector<u16> res = {0x56, 0x78};
  std::vector<u32> out(2, 0u);
  vptq::pack_indices(idx.data(), res.data(), 1, 2, 16, 8, out.data());
  EXPECT_EQ(out[0], 0xCD561234u);
  EXPECT_EQ(out[1] & 0xFFFFu, 0x78ABu);
  EXPECT_EQ(out[1], 0x000078ABu);

  // Group size 4096 at T = 24: 3072 words per row; the next code starts at word1 bit 16.
  vptq::VQLayout L = vptq::make_layout(8, 4096, 8, 65536, 256, 0.0, 0, 0, 1);
  EXPECT_EQ(L.packed_words(), 3072);
  std::vector<u16> idx3 = {0x1234, 0xABCD, 0x0F0F};
  std::vector<u16> res3 = {0x56, 0x78, 0x9A};
  std::vector<u32> out3(3, 0u);
  vptq::pack_indices(idx3.data(), res3.data(), 1, 3, 16, 8, out3.data());
  EXPECT_EQ(out3[1], 0x0F0F78ABu);
  EXPECT_EQ(out3[2], 0x0000009Au);
}

TEST(FormatPack, b16_res16_one_code_per_word) {
  const std::vector<u16> idx = {0x1111, 0xFFFF};
  const std::vector<u16> res = {0x2222, 0x8001};
  std::vector<u32> out(2, 0u);
  vptq::pack_indices(idx.data(), res.data(), 1, 2, 16, 16, out.data());
  EXPECT_EQ(out[0], 0x22221111u);
  EXPECT_EQ(out[1], 0x8001FFFFu);
}

TEST(FormatPack, all_widths_round_trip_and_match_naive_packer) {
  vptq::Rng rng(1234);
  for (int b1 = 1; b1 <= 16; ++b1) {
    for (int b2 = 0; b2 <= 16; ++b2) {
      const int T = b1 + b2;
      if (T > 32) continue;
      const idx_t rows = 3;
      const idx_t cols = 37 + 2 * (b1 + b2 % 3);  // odd column counts
      const idx_t W = words_for(cols, T);
      const auto idx = random_codes(rng, rows * cols, b1);
      const auto res = random_codes(rng, rows * cols, b2);
      std::vector<u32> packed(static_cast<std::size_t>(rows * W), 0xDEADBEEFu);
      vptq::pack_indices(idx.data(), b2 > 0 ? res.data() : nullptr, rows, cols, b1, b2, packed.data());
      const auto ref = naive_pack(idx, b2 > 0 ? &res : nullptr, rows, cols, b1, b2);
      ASSERT_EQ(packed, ref) << "b1=" << b1 << " b2=" << b2;

      std::vector<u16> i2(idx.size(), 0xFFFF), r2(res.size(), 0xFFFF);
      vptq::unpack_indices(packed.data(), rows, cols, b1, b2, i2.data(), r2.data());
      ASSERT_EQ(i2, idx) << "b1=" << b1 << " b2=" << b2;
      ASSERT_EQ(r2, res) << "b1=" << b1 << " b2=" << b2;
    }
  }
}

TEST(FormatPack, decode_matches_straddling_rule) {
  // §3.3 decode rule written out: val = word[w] >> (s % 32), OR the next word
  // shifted left by 32 - s % 32 if the code straddles, mask to T bits.
  vptq::Rng rng(7);
  const int b1 = 13, b2 = 6, T = 19;
  const idx_t cols = 101;
  const auto idx = random_codes(rng, cols, b1);
  const auto res = random_codes(rng, cols, b2);
  std::vector<u32> packed(static_cast<std::size_t>(words_for(cols, T)));
  vptq::pack_indices(idx.data(), res.data(), 1, cols, b1, b2, packed.data());
  int straddling = 0;
  for (idx_t c = 0; c < cols; ++c) {
    const idx_t s = c * T;
    const idx_t w = s / 32;
    const int sh = static_cast<int>(s % 32);
    std::uint64_t val = packed[w] >> sh;
    if (sh + T > 32) {
      val |= static_cast<std::uint64_t>(packed[w + 1]) << (32 - sh);
      ++straddling;
    }
    val &= (std::uint64_t{1} << T) - 1;
    EXPECT_EQ(val & ((1u << b1) - 1), idx[c]);
    EXPECT_EQ(val >> b1, res[c]);
  }
  EXPECT_GT(straddling, 10);
}

TEST(FormatPack, unpack_ignores_padding_and_fills_zero_residual) {
  const std::vector<u16> idx = {5, 6, 7};
  std::vector<u32> packed(1, 0u);
  vptq::pack_indices(idx.data(), nullptr, 1, 3, 3, 0, packed.data());
  packed[0] |= 0xFFFFFE00u;  // garbage in the 23 padding bits
  std::vector<u16> i2(3), r2(3, 9);
  vptq::unpack_indices(packed.data(), 1, 3, 3, 0, i2.data(), r2.data());
  EXPECT_EQ(i2, idx);
  EXPECT_EQ(r2, std::vector<u16>(3, 0));
}

TEST(FormatPack, rejects_codes_that_do_not_fit) {
  std::vector<u16> idx = {1, 2, 3, 4, 5, 6};
  std::vector<u16> res = {0, 0, 0, 0, 0, 0};
  std::vector<u32> out(2);
  idx[4] = 8;  // 3 bits: < 8 expected
  const std::string e = error_of([&] { vptq::pack_indices(idx.data(), res.data(), 2, 3, 3, 2, out.data()); });
  EXPECT_NE(e.find("index 8 at row 1, column 1"), std::string::npos) << e;
  idx[4] = 5;
  res[2] = 4;  // 2 bits
  const std::string e2 = error_of([&] { vptq::pack_indices(idx.data(), res.data(), 2, 3, 3, 2, out.data()); });
  EXPECT_NE(e2.find("residual index 4 at row 0, column 2"), std::string::npos) << e2;
  // b2 == 0 with a non-zero residual array: does not fit in 0 bits.
  EXPECT_THROW(vptq::pack_indices(idx.data(), res.data(), 2, 3, 3, 0, out.data()), std::invalid_argument);
  // Missing residual, bad widths.
  EXPECT_THROW(vptq::pack_indices(idx.data(), nullptr, 2, 3, 3, 2, out.data()), std::invalid_argument);
  EXPECT_THROW(vptq::pack_indices(idx.data(), nullptr, 2, 3, 0, 0, out.data()), std::invalid_argument);
  EXPECT_THROW(vptq::pack_indices(idx.data(), nullptr, 2, 3, 17, 0, out.data()), std::invalid_argument);
  EXPECT_THROW(vptq::unpack_indices(out.data(), 2, 3, 16, 17, idx.data(), res.data()), std::invalid_argument);
}

TEST(FormatPack, result_independent_of_thread_count) {
  vptq::Rng rng(99);
  const idx_t rows = 64, cols = 333;
  const auto idx = random_codes(rng, rows * cols, 12);
  const auto res = random_codes(rng, rows * cols, 9);
  const idx_t W = words_for(cols, 21);
  std::vector<u32> a(static_cast<std::size_t>(rows * W)), b(a.size());
  const int saved = vptq::get_num_threads();
  vptq::set_num_threads(1);
  vptq::pack_indices(idx.data(), res.data(), rows, cols, 12, 9, a.data());
  vptq::set_num_threads(4);
  vptq::pack_indices(idx.data(), res.data(), rows, cols, 12, 9, b.data());
  vptq::set_num_threads(saved);
  EXPECT_EQ(a, b);
}

// ---------------------------------------------------------------- dequantize

struct Weights {
  vptq::VQLayout L;
  std::vector<float> C, Rc, O, scale, bias;
  std::vector<u16> idx, ridx, oidx;
  std::vector<idx_t> perm;

  vptq::VQWeightsView view(bool use_perm = true, bool use_norm = true) const {
    vptq::VQWeightsView w;
    w.layout = L;
    w.centroids = C.data();
    w.res_centroids = L.k2 > 0 ? Rc.data() : nullptr;
    w.outlier_centroids = L.k0 > 0 ? O.data() : nullptr;
    w.indices = idx.data();
    w.res_indices = L.k2 > 0 ? ridx.data() : nullptr;
    w.outlier_indices = L.k0 > 0 ? oidx.data() : nullptr;
    w.perm = use_perm ? perm.data() : nullptr;
    w.scale = use_norm ? scale.data() : nullptr;
    w.bias = use_norm ? bias.data() : nullptr;
    return w;
  }
};

Weights random_weights(const vptq::VQLayout& L, std::uint64_t seed) {
  vptq::Rng rng(seed);
  Weights w;
  w.L = L;
  const idx_t G = L.group_num, R = L.num_indices();
  w.C = random_floats(rng, G * L.k1 * L.v);
  w.Rc = random_floats(rng, G * L.k2 * L.v);
  w.O = random_floats(rng, L.k0 * L.v0);
  w.idx = random_codes(rng, G * R * L.group_size, L.index_bits());
  w.ridx = random_codes(rng, G * R * L.group_size, L.res_index_bits());
  w.oidx = random_codes(rng, L.num_outlier_indices() * L.outlier_size, L.outlier_index_bits());
  w.scale = random_floats(rng, L.N);
  w.bias = random_floats(rng, L.N);
  w.perm.resize(static_cast<std::size_t>(L.N));
  std::iota(w.perm.begin(), w.perm.end(), idx_t{0});
  for (idx_t i = L.N - 1; i > 0; --i)
    std::swap(w.perm[i], w.perm[static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(i + 1)))]);
  return w;
}

/// §3.4 written out: a padded Q [R*v rows, N permuted columns], then un-permute and normalise.
std::vector<float> naive_dequant(const vptq::VQWeightsView& w) {
  const vptq::VQLayout& L = w.layout;
  const idx_t M = L.M, N = L.N;
  const idx_t rows_pad = std::max(L.num_indices() * L.v, L.num_outlier_indices() * L.v0);
  std::vector<float> Q(static_cast<std::size_t>(rows_pad * N), 0.0f);
  for (idx_t p = 0; p < N; ++p)
    for (idx_t i = 0; i < M; ++i) {
      float q;
      if (p < L.outlier_size) {
        q = w.outlier_centroids[w.outlier_indices[(i / L.v0) * L.outlier_size + p] * L.v0 + i % L.v0];
      } else {
        const idx_t g = (p - L.outlier_size) / L.group_size, c = (p - L.outlier_size) % L.group_size;
        const idx_t flat = (g * L.num_indices() + i / L.v) * L.group_size + c;
        q = w.centroids[(g * L.k1 + w.indices[flat]) * L.v + i % L.v];
        if (L.k2 > 0) q = q + w.res_centroids[(g * L.k2 + w.res_indices[flat]) * L.v + i % L.v];
      }
      Q[i * N + p] = q;
    }
  std::vector<float> W(static_cast<std::size_t>(M * N));
  for (idx_t p = 0; p < N; ++p) {
    const idx_t j = w.perm ? w.perm[p] : p;
    for (idx_t i = 0; i < M; ++i) W[i * N + j] = Q[i * N + p];
  }
  for (idx_t i = 0; i < M; ++i)
    for (idx_t j = 0; j < N; ++j) {
      float x = W[i * N + j];
      if (w.scale) x = x * w.scale[j];
      if (w.bias) x = x + w.bias[j];
      W[i * N + j] = x;
    }
  return W;
}

TEST(FormatDequant, matches_formula_with_outliers_residual_groups_perm_norm) {
  // M = 23 is a multiple of neither v = 6 nor v0 = 4; N = 150 with 3 groups.
  const auto L = vptq::make_layout(23, 150, 6, 16, 8, 5.0, 4, 32, 3);
  ASSERT_EQ(L.outlier_size, 9);  // ceil(7.5) = 8, (150 - 8) % 3 = 1
  ASSERT_EQ(L.group_size, 47);
  const Weights w = random_weights(L, 42);
  for (const bool use_perm : {true, false})
    for (const bool use_norm : {true, false}) {
      const auto view = w.view(use_perm, use_norm);
      std::vector<float> out(static_cast<std::size_t>(L.M * L.N), std::nanf(""));
      vptq::dequantize(view, out.data());
      const auto ref = naive_dequant(view);
      for (std::size_t i = 0; i < out.size(); ++i)
        ASSERT_EQ(out[i], ref[i]) << "at " << i << " perm=" << use_perm << " norm=" << use_norm;
    }
}

TEST(FormatDequant, matches_formula_without_outliers_or_residual) {
  for (const auto& L : {vptq::make_layout(13, 130, 8, 64, 0, 0.0, 0, 0, 1),
                        vptq::make_layout(9, 64, 2, 4, 4, 0.0, 0, 0, 4),
                        vptq::make_layout(3, 200, 16, 256, 0, 0.0, 0, 0, 2)}) {
    const Weights w = random_weights(L, 5);
    const auto view = w.view();
    std::vector<float> out(static_cast<std::size_t>(L.M * L.N), std::nanf(""));
    vptq::dequantize(view, out.data());
    EXPECT_EQ(out, naive_dequant(view));
  }
}

TEST(FormatDequant, exact_small_example) {
  // M = 3, N = 3: one outlier column (v0 = 2, k0 = 2), two group columns (v = 2, k1 = 2).
  vptq::VQLayout L = vptq::make_layout(3, 3, 2, 2, 0, 1.0, 2, 2, 1);  // ceil(0.03) = 1
  ASSERT_EQ(L.outlier_size, 1);
  const std::vector<float> C = {1, 2, 3, 4};     // [1, 2, 2]
  const std::vector<float> O = {10, 20, 30, 40};  // [2, 2]
  const std::vector<u16> idx = {1, 0, 0, 1};      // [1, 2 row blocks, 2 cols]
  const std::vector<u16> oidx = {1, 0};           // [2, 1]
  const std::vector<idx_t> perm = {2, 0, 1};
  const std::vector<float> scale = {1, 2, 10}, bias = {0, 1, 0};
  vptq::VQWeightsView w;
  w.layout = L;
  w.centroids = C.data();
  w.outlier_centroids = O.data();
  w.indices = idx.data();
  w.outlier_indices = oidx.data();
  w.perm = perm.data();
  w.scale = scale.data();
  w.bias = bias.data();
  // Q (rows 0..2, permuted cols 0..2): col0 = O[1],O[1],O[0][0] = 30,40,10;
  // col1 = C[1],C[0][0] = 3,4,1; col2 = C[0],C[1][0] = 1,2,3.
  // Ŵ[:, 2] = col0 * 10, Ŵ[:, 0] = col1 * 1, Ŵ[:, 1] = col2 * 2 + 1.
  const std::vector<float> expect = {3, 3, 300, 4, 5, 400, 1, 7, 100};
  std::vector<float> out(9);
  vptq::dequantize(w, out.data());
  EXPECT_EQ(out, expect);
}

TEST(FormatDequant, independent_of_thread_count) {
  const auto L = vptq::make_layout(40, 700, 8, 256, 16, 2.0, 4, 64, 2);
  const Weights w = random_weights(L, 11);
  std::vector<float> a(static_cast<std::size_t>(L.M * L.N)), b(a.size());
  const int saved = vptq::get_num_threads();
  vptq::set_num_threads(1);
  vptq::dequantize(w.view(), a.data());
  vptq::set_num_threads(3);
  vptq::dequantize(w.view(), b.data());
  vptq::set_num_threads(saved);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, naive_dequant(w.view()));
}

TEST(FormatWeights, check_weights_rejects_corrupt_data) {
  const auto L = vptq::make_layout(10, 40, 4, 16, 4, 10.0, 2, 8, 2);
  Weights w = random_weights(L, 3);
  EXPECT_NO_THROW(vptq::check_weights(w.view()));
  std::vector<float> out(static_cast<std::size_t>(L.M * L.N));

  {
    Weights b = w;
    b.idx[17] = 16;
    const std::string e = error_of([&] { vptq::dequantize(b.view(), out.data()); });
    EXPECT_NE(e.find("indices: expected every index < k1 = 16, got 16"), std::string::npos) << e;
  }
  {
    Weights b = w;
    b.ridx.back() = 4;
    EXPECT_NE(error_of([&] { vptq::check_weights(b.view()); }).find("res_indices"), std::string::npos);
  }
  {
    Weights b = w;
    b.oidx[0] = 8;
    EXPECT_NE(error_of([&] { vptq::check_weights(b.view()); }).find("outlier_indices"), std::string::npos);
  }
  {
    Weights b = w;
    b.perm[3] = b.perm[5];
    const std::string e = error_of([&] { vptq::check_weights(b.view()); });
    EXPECT_NE(e.find("perm: expected a permutation"), std::string::npos) << e;
    b.perm[3] = 40;
    EXPECT_NE(error_of([&] { vptq::check_weights(b.view()); }).find("perm[3] = 40"), std::string::npos);
    b.perm[3] = -1;
    EXPECT_THROW(vptq::check_weights(b.view()), std::invalid_argument);
  }
  {
    Weights b = w;
    b.scale[7] = std::numeric_limits<float>::infinity();
    EXPECT_NE(error_of([&] { vptq::check_weights(b.view()); }).find("scale"), std::string::npos);
    b.scale[7] = 1.0f;
    b.bias[0] = std::nanf("");
    EXPECT_NE(error_of([&] { vptq::check_weights(b.view()); }).find("bias"), std::string::npos);
  }
  {
    auto v = w.view();
    v.res_centroids = nullptr;
    EXPECT_NE(error_of([&] { vptq::check_weights(v); }).find("res_centroids"), std::string::npos);
    v = w.view();
    v.outlier_indices = nullptr;
    EXPECT_NE(error_of([&] { vptq::check_weights(v); }).find("outlier_indices"), std::string::npos);
    v = w.view();
    v.layout.k2 = 0;  // residual pointers given but layout has no residual
    EXPECT_THROW(vptq::check_weights(v), std::invalid_argument);
  }
}

}  // namespace
