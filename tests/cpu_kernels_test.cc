// Every CPU kernel against a plain double-precision reference, over several shapes.
#include "common/cpu_kernels.h"

#include <cmath>
#include <random>
#include <vector>

#include "coordinator/layers.h"
#include "gtest/gtest.h"

namespace pinmoe {
namespace {

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

class MatMulTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(MatMulTest, MatchesDoubleReference) {
  auto [rows, in, out] = GetParam();
  auto x = Random(static_cast<size_t>(rows) * in, 1), w = Random(static_cast<size_t>(out) * in, 2);
  std::vector<float> y(static_cast<size_t>(rows) * out);
  MatMulTransposed(x.data(), w.data(), y.data(), rows, in, out);
  for (int t = 0; t < rows; ++t) {
    for (int o = 0; o < out; ++o) {
      double ref = 0;
      for (int i = 0; i < in; ++i) ref += static_cast<double>(x[t * in + i]) * w[o * in + i];
      ASSERT_NEAR(y[t * out + o], ref, 1e-4 * std::sqrt(in)) << t << "," << o;
    }
  }
  // A row's result does not depend on the batch around it (what makes worker counts bit-identical).
  std::vector<float> single(out);
  MatMulTransposed(x.data() + (rows - 1) * in, w.data(), single.data(), 1, in, out);
  for (int o = 0; o < out; ++o) ASSERT_EQ(single[o], y[(rows - 1) * out + o]);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatMulTest,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 7, 3),
                                           std::make_tuple(3, 64, 65), std::make_tuple(17, 130, 200),
                                           std::make_tuple(2, 2048, 96)));

TEST(RmsNorm, MatchesDoubleReference) {
  for (int dim : {1, 8, 33, 256}) {
    auto x = Random(3 * dim, 3), w = Random(dim, 4);
    std::vector<float> y(x.size());
    RmsNorm(x.data(), w.data(), y.data(), 3, dim, 1e-6f);
    for (int t = 0; t < 3; ++t) {
      double ss = 0;
      for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
      double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
      for (int i = 0; i < dim; ++i) ASSERT_NEAR(y[t * dim + i], w[i] * x[t * dim + i] * inv, 1e-5);
    }
  }
}

TEST(SwigluFfn, MatchesDoubleReference) {
  const int rows = 5, h = 24, inter = 40;
  auto x = Random(rows * h, 5), g = Random(inter * h, 6), u = Random(inter * h, 7), d = Random(h * inter, 8);
  std::vector<float> y(rows * h), scratch(2 * rows * inter);
  SwigluFfn(x.data(), g.data(), u.data(), d.data(), y.data(), rows, h, inter, scratch.data());
  for (int t = 0; t < rows; ++t) {
    std::vector<double> a(inter);
    for (int j = 0; j < inter; ++j) {
      double gv = 0, uv = 0;
      for (int i = 0; i < h; ++i) {
        gv += static_cast<double>(x[t * h + i]) * g[j * h + i];
        uv += static_cast<double>(x[t * h + i]) * u[j * h + i];
      }
      a[j] = gv / (1 + std::exp(-gv)) * uv;
    }
    for (int o = 0; o < h; ++o) {
      double ref = 0;
      for (int j = 0; j < inter; ++j) ref += a[j] * d[o * inter + j];
      ASSERT_NEAR(y[t * h + o], ref, 1e-3);
    }
  }
}

TEST(Rope, MatchesDoubleReferenceRotateHalf) {
  for (int hd : {8, 32, 128}) {
    Rope rope(hd, hd, 10000.0);
    auto x = Random(2 * hd, 9);
    auto y = x;
    const int pos = 37;
    rope.Apply(y.data(), 2, pos);
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < hd / 2; ++i) {
        double f = pos / std::pow(10000.0, 2.0 * i / hd);
        double a = x[h * hd + i], b = x[h * hd + i + hd / 2];
        ASSERT_NEAR(y[h * hd + i], a * std::cos(f) - b * std::sin(f), 1e-4);
        ASSERT_NEAR(y[h * hd + i + hd / 2], b * std::cos(f) + a * std::sin(f), 1e-4);
      }
    }
  }
}

TEST(CausalAttention, MatchesDoubleReferenceWithGroupedHeads) {
  const int heads = 4, kv = 2, hd = 16, len = 9, tokens = 3;
  KvCache cache;
  cache.kv_heads = kv;
  cache.head_dim = hd;
  cache.length = len;
  cache.k = Random(len * kv * hd, 10);
  cache.v = Random(len * kv * hd, 11);
  auto q = Random(tokens * heads * hd, 12);
  std::vector<float> out(q.size());
  CausalAttention(q.data(), tokens, heads, cache, out.data());
  for (int t = 0; t < tokens; ++t) {
    const int visible = len - tokens + t + 1;
    for (int h = 0; h < heads; ++h) {
      const int g = h / (heads / kv);
      std::vector<double> s(visible);
      double mx = -1e30, sum = 0;
      for (int j = 0; j < visible; ++j) {
        double d = 0;
        for (int i = 0; i < hd; ++i) d += static_cast<double>(q[(t * heads + h) * hd + i]) * cache.k[(j * kv + g) * hd + i];
        s[j] = d / std::sqrt(hd);
        mx = std::max(mx, s[j]);
      }
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int i = 0; i < hd; ++i) {
        double ref = 0;
        for (int j = 0; j < visible; ++j) ref += s[j] / sum * cache.v[(j * kv + g) * hd + i];
        ASSERT_NEAR(out[(t * heads + h) * hd + i], ref, 1e-5);
      }
    }
  }
}

TEST(RouteTopK, PicksLargestAndNormalises) {
  const float logits[6] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 1.5f};
  int32_t ids[3];
  float w[3];
  RouteTopK(logits, 6, 3, /*norm_topk_prob=*/false, ids, w);
  EXPECT_EQ(ids[0], 1);  // tie with 3: lower index first
  EXPECT_EQ(ids[1], 3);
  EXPECT_EQ(ids[2], 5);
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(w[0], std::exp(2.0) / z, 1e-6);
  RouteTopK(logits, 6, 3, /*norm_topk_prob=*/true, ids, w);
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.0f, 1e-6);
}

}  // namespace
}  // namespace pinmoe
