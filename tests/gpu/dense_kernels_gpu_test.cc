// The coordinator's GPU kernels against their CPU counterparts, over several shapes.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/cpu_kernels.h"
#include "coordinator/gpu/dense_kernels.h"
#include "coordinator/layers.h"
#include "gtest/gtest.h"

namespace pinmoe {
namespace {

#define ASSERT_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A device copy that frees itself.
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t n) : bytes(n) { EXPECT_EQ(cudaMalloc(&p, n), cudaSuccess); }
  template <typename T>
  explicit Dev(const std::vector<T>& v) : Dev(v.size() * sizeof(T)) {
    EXPECT_EQ(cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  template <typename T>
  T* as() { return static_cast<T*>(p); }
  template <typename T>
  std::vector<T> get() {
    std::vector<T> v(bytes / sizeof(T));
    EXPECT_EQ(cudaMemcpy(v.data(), p, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

TEST(DenseKernelsGpu, RmsNorm) {
  for (int dim : {8, 64, 2048, 5000}) {
    const int rows = 7;
    auto x = Random(rows * dim, dim), w = Random(dim, dim + 1);
    std::vector<float> ref(x.size());
    RmsNorm(x.data(), w.data(), ref.data(), rows, dim, 1e-6f);
    Dev dx(x), dw(w), dy(x.size() * 4);
    ASSERT_CUDA(LaunchRmsNorm(dx.as<float>(), dw.as<float>(), dy.as<float>(), rows, dim, 1e-6f, nullptr));
    auto y = dy.get<float>();
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f * (1 + std::fabs(ref[i]))) << dim << " " << i;
  }
}

TEST(DenseKernelsGpu, RopeFullAndPartial) {
  for (auto [hd, rot] : {std::pair{32, 32}, std::pair{128, 128}, std::pair{256, 64}}) {
    const int tokens = 5, heads = 3, first = 1234;
    Rope rope(hd, rot, 1e7);
    auto x = Random(tokens * heads * hd, hd);
    auto ref = x;
    for (int t = 0; t < tokens; ++t) rope.Apply(ref.data() + t * heads * hd, heads, first + t);
    Dev dx(x), df(rope.inv_freq());
    ASSERT_CUDA(LaunchRope(dx.as<float>(), tokens, heads, hd, rot, df.as<float>(), first, nullptr));
    auto y = dx.get<float>();
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f) << hd << "/" << rot << " " << i;
  }
}

TEST(DenseKernelsGpu, DecodeAttentionWithGroupedHeads) {
  for (auto [heads, kvh, hd, len] : {std::tuple{4, 2, 32, 1}, std::tuple{32, 4, 128, 300}, std::tuple{16, 2, 256, 1025}}) {
    KvCache cache;
    cache.kv_heads = kvh;
    cache.head_dim = hd;
    cache.length = len;
    cache.k = Random(static_cast<size_t>(len) * kvh * hd, 1);
    cache.v = Random(cache.k.size(), 2);
    auto q = Random(heads * hd, 3);
    std::vector<float> ref(q.size());
    CausalAttention(q.data(), 1, heads, cache, ref.data());
    Dev dq(q), dk(cache.k), dv(cache.v), scratch(static_cast<size_t>(heads) * len * 4), out(q.size() * 4);
    ASSERT_CUDA(LaunchDecodeAttention(dq.as<float>(), dk.as<float>(), dv.as<float>(), len, heads, kvh, hd,
                                      scratch.as<float>(), out.as<float>(), nullptr));
    auto y = out.get<float>();
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f) << heads << "," << len << " " << i;
  }
}

TEST(DenseKernelsGpu, RouteTopK) {
  for (auto [experts, k, norm] : {std::tuple{8, 2, true}, std::tuple{128, 8, true}, std::tuple{512, 10, false}}) {
    const int tokens = 9;
    auto logits = Random(static_cast<size_t>(tokens) * experts, experts, 2.f);
    logits[3] = logits[5];  // a tie: the lower index wins on both sides
    std::vector<int32_t> ref_ids(tokens * k);
    std::vector<float> ref_w(tokens * k);
    for (int t = 0; t < tokens; ++t) {
      RouteTopK(logits.data() + t * experts, experts, k, norm, ref_ids.data() + t * k, ref_w.data() + t * k);
    }
    Dev dl(logits), di(tokens * k * 4), dw(tokens * k * 4);
    ASSERT_CUDA(LaunchRouteTopK(dl.as<float>(), tokens, experts, k, norm, di.as<int32_t>(), dw.as<float>(), nullptr));
    EXPECT_EQ(di.get<int32_t>(), ref_ids) << experts;
    auto w = dw.get<float>();
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], ref_w[i], 1e-6f);
  }
}

}  // namespace
}  // namespace pinmoe
