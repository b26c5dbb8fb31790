// The coordinator's GPU kernels against their CPU counterparts, over several shapes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/cpu_kernels.h"
#include "common/dtype.h"
#include "coordinator/gpu/dense_kernels.h"
#include "coordinator/gpu/flash_attention.h"
#include "coordinator/gpu/linear.h"
#include "coordinator/layers.h"
#include "coordinator/sampler.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

namespace pinmoe {
namespace {

using testing::Dev;
using testing::Random;

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

// An attention core's shape: query and kv heads, head_dim, rotary dimensions, positions already
// cached, new tokens.
struct AttnShape {
  int heads, kvh, hd, rot, first, tokens;
};

// Fused q/k/v rows [tokens, (heads + 2 kv heads) * head_dim] split into q, k and v.
void SplitFusedRows(const AttnShape& sh, const std::vector<float>& qkv, std::vector<float>* q, std::vector<float>* k,
                    std::vector<float>* v) {
  const int nh = sh.heads, nkv = sh.kvh, hd = sh.hd, row = (nh + 2 * nkv) * hd;
  q->assign(static_cast<size_t>(sh.tokens) * nh * hd, 0.f);
  k->assign(static_cast<size_t>(sh.tokens) * nkv * hd, 0.f);
  v->assign(k->size(), 0.f);
  for (int t = 0; t < sh.tokens; ++t) {
    const float* r = qkv.data() + static_cast<size_t>(t) * row;
    std::copy(r, r + nh * hd, q->data() + static_cast<size_t>(t) * nh * hd);
    std::copy(r + nh * hd, r + (nh + nkv) * hd, k->data() + static_cast<size_t>(t) * nkv * hd);
    std::copy(r + (nh + nkv) * hd, r + row, v->data() + static_cast<size_t>(t) * nkv * hd);
  }
}

// The device core over such rows (eps 1e-6), appending at sh.first.
QkNormRopeCacheArgs CoreArgs(const AttnShape& sh, const float* qkv, const float* q_norm, const float* k_norm,
                             const float* inv_freq, float* q_out, void* k_cache, void* v_cache, bool cache_bf16) {
  QkNormRopeCacheArgs qa;
  qa.qkv = qkv;
  qa.row_stride = (sh.heads + 2 * sh.kvh) * sh.hd;
  qa.q_head_stride = sh.hd;
  qa.k_offset = sh.heads * sh.hd;
  qa.v_offset = (sh.heads + sh.kvh) * sh.hd;
  qa.heads = sh.heads;
  qa.kv_heads = sh.kvh;
  qa.head_dim = sh.hd;
  qa.rotary_dim = sh.rot;
  qa.q_norm = q_norm;
  qa.k_norm = k_norm;
  qa.inv_freq = inv_freq;
  qa.eps = 1e-6f;
  qa.first_position = sh.first;
  qa.q_out = q_out;
  qa.k_cache = k_cache;
  qa.v_cache = v_cache;
  qa.cache_bf16 = cache_bf16;
  return qa;
}

// A split form of the decode attention over qa's shape and batch: its scratch, the counters
// zeroed, and the arguments that use them.
struct SplitRun {
  SplitRun(const QkNormRopeCacheArgs& qa, int splits, bool grouped)
      : parts(AttnSplitPartialFloats(qa.batch, qa.heads, qa.head_dim, splits) * 4),
        counters(static_cast<size_t>(qa.batch) * qa.heads * 4),
        args(qa) {
    EXPECT_EQ(cudaMemset(counters.p, 0, counters.bytes), cudaSuccess);
    args.splits = splits;
    args.grouped = grouped;
    args.split_partials = parts.as<float>();
    args.split_counters = counters.as<unsigned int>();
  }
  Dev parts, counters;
  QkNormRopeCacheArgs args;
};

// The fused q/k norm + RoPE + cache append and the attention over the cache, against the CPU core
// (QkNormRopeAttend) with part of the cache already filled: prefill (several tokens) and decode (one).
TEST(DenseKernelsGpu, QkNormRopeCacheAndAttention) {
  using Shape = AttnShape;
  for (const Shape& sh : {Shape{4, 2, 32, 32, 0, 5}, Shape{32, 4, 128, 128, 300, 1}, Shape{16, 2, 256, 64, 7, 130},
                          Shape{8, 8, 64, 64, 129, 3}, Shape{16, 2, 256, 64, 0, 1}, Shape{4, 2, 32, 8, 200, 1},
                          Shape{32, 4, 128, 128, 2100, 1}, Shape{8, 8, 64, 64, 129, 1},
                          Shape{16, 2, 256, 64, 517, 1}}) {
    const int nh = sh.heads, nkv = sh.kvh, hd = sh.hd, T = sh.tokens, first = sh.first;
    const int row = (nh + 2 * nkv) * hd;
    auto qkv = Random(static_cast<size_t>(T) * row, hd + T, 2.f);
    auto qn = Random(hd, 5), kn = Random(hd, 6);
    Rope rope(hd, sh.rot, 1e6);
    // CPU: split the fused rows, prefill the cache with `first` random positions, run the core.
    KvCache cache;
    cache.kv_heads = nkv;
    cache.head_dim = hd;
    cache.length = first;
    cache.k = Random(static_cast<size_t>(first) * nkv * hd, 7);
    cache.v = Random(cache.k.size(), 8);
    std::vector<float> q, k, v;
    SplitFusedRows(sh, qkv, &q, &k, &v);
    const std::vector<float> k_prefix = cache.k, v_prefix = cache.v;
    std::vector<float> ref(q.size());
    QkNormRopeAttend(rope, qn.data(), kn.data(), 1e-6f, first, T, nh, q.data(), k, v, &cache, ref.data());

    const size_t cache_floats = static_cast<size_t>(first + T) * nkv * hd;
    Dev dqkv(qkv), dqn(qn), dkn(kn), df(rope.inv_freq()), dq(q.size() * 4), dout(q.size() * 4),
        dk(cache_floats * 4), dv(cache_floats * 4);
    ASSERT_CUDA(cudaMemcpy(dk.p, k_prefix.data(), k_prefix.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dv.p, v_prefix.data(), v_prefix.size() * 4, cudaMemcpyHostToDevice));
    const QkNormRopeCacheArgs qa = CoreArgs(sh, dqkv.as<float>(), dqn.as<float>(), dkn.as<float>(), df.as<float>(),
                                            dq.as<float>(), dk.p, dv.p, /*cache_bf16=*/false);
    ASSERT_CUDA(LaunchQkNormRopeCache(qa, T, nullptr));
    ASSERT_CUDA(LaunchAttention(AttentionAfter(qa, dout.as<float>()), T, nullptr));
    auto gk = dk.get<float>(), gv = dv.get<float>(), y = dout.get<float>();
    for (size_t i = 0; i < cache_floats; ++i) {
      ASSERT_NEAR(gk[i], cache.k[i], 2e-5f * (1 + std::fabs(cache.k[i]))) << "k cache " << i;
      ASSERT_EQ(gv[i], cache.v[i]) << "v cache " << i;
    }
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f) << nh << "x" << hd << " T=" << T << " " << i;
    if (T == 1) {  // the fused decode kernel, from the same prefix
      ASSERT_CUDA(cudaMemcpy(dk.p, k_prefix.data(), k_prefix.size() * 4, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemcpy(dv.p, v_prefix.data(), v_prefix.size() * 4, cudaMemcpyHostToDevice));
      ASSERT_CUDA(LaunchDecodeAttentionFused(qa, dout.as<float>(), nullptr));
      auto fk = dk.get<float>(), fv = dv.get<float>(), fy = dout.get<float>();
      for (size_t i = 0; i < cache_floats; ++i) {
        ASSERT_NEAR(fk[i], cache.k[i], 2e-5f * (1 + std::fabs(cache.k[i]))) << "fused k cache " << i;
        ASSERT_EQ(fv[i], cache.v[i]) << "fused v cache " << i;
      }
      for (size_t i = 0; i < fy.size(); ++i) ASSERT_NEAR(fy[i], ref[i], 1e-4f) << "fused " << nh << "x" << hd << " " << i;
      // The split form: each head's positions shared by one or several blocks (more splits than
      // positions included), merged in split order; a second launch must reuse the counters the first
      // left zeroed and give the same bits.
      for (const bool grouped : {false, true}) {
        for (int splits : {1, 2, 7, kAttnMaxSplits}) {
          SCOPED_TRACE(::testing::Message() << (grouped ? "grouped, " : "") << splits << " splits");
          SplitRun split(qa, splits, grouped);
          std::vector<float> first_run;
          for (int run = 0; run < 2; ++run) {
            ASSERT_CUDA(cudaMemcpy(dk.p, k_prefix.data(), k_prefix.size() * 4, cudaMemcpyHostToDevice));
            ASSERT_CUDA(cudaMemcpy(dv.p, v_prefix.data(), v_prefix.size() * 4, cudaMemcpyHostToDevice));
            ASSERT_CUDA(cudaMemset(dout.p, 0, dout.bytes));
            ASSERT_CUDA(LaunchDecodeAttentionFused(split.args, dout.as<float>(), nullptr));
            auto sk = dk.get<float>(), sv = dv.get<float>(), sy = dout.get<float>();
            for (size_t i = 0; i < cache_floats; ++i) {
              ASSERT_NEAR(sk[i], cache.k[i], 2e-5f * (1 + std::fabs(cache.k[i]))) << "split k cache " << i;
              ASSERT_EQ(sv[i], cache.v[i]) << "split v cache " << i;
            }
            for (size_t i = 0; i < sy.size(); ++i) {
              ASSERT_NEAR(sy[i], ref[i], 1e-4f) << nh << "x" << hd << " first " << first << " " << i;
            }
            if (run == 0) {
              first_run = sy;
            } else {
              ASSERT_EQ(0, std::memcmp(sy.data(), first_run.data(), sy.size() * 4)) << splits << " splits";
            }
          }
          for (unsigned int c : split.counters.get<unsigned int>()) ASSERT_EQ(c, 0u) << "a split counter was left set";
        }
      }
    }
  }
}

std::vector<uint16_t> ToBf16Bits(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = F32ToBf16(x[i]);
  return b;
}
std::vector<float> RoundToBf16(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = Bf16ToF32(F32ToBf16(x[i]));
  return r;
}

// The tensor-core prefill attention against the CPU attention over the same cache: Q, K, V and the
// probabilities are rounded to bf16 there (8 significant bits), so the bound is on the relative L2
// error of the whole output, 1.5e-2 (a few bf16 steps). With a bf16 cache (cache_bf16), against the CPU
// attention over the same cache, rounded.
TEST(DenseKernelsGpu, FlashAttentionMatchesCpu) {
  struct Shape {
    int heads, kvh, hd, first, tokens;
  };
  for (const bool bf16 : {false, true}) {
    for (const Shape& sh : {Shape{4, 2, 32, 3, 40}, Shape{4, 2, 64, 0, 5}, Shape{32, 4, 128, 0, 300},
                            Shape{16, 2, 256, 70, 130}, Shape{8, 8, 128, 129, 64},
                            Shape{32, 4, 128, 1000, 17}}) {
      const int T = sh.tokens, total = sh.first + T;
      KvCache cache;
      cache.kv_heads = sh.kvh;
      cache.head_dim = sh.hd;
      cache.length = total;
      cache.k = Random(static_cast<size_t>(total) * sh.kvh * sh.hd, 21);
      cache.v = Random(cache.k.size(), 22);
      if (bf16) {
        cache.k = RoundToBf16(cache.k);
        cache.v = RoundToBf16(cache.v);
      }
      auto q = Random(static_cast<size_t>(T) * sh.heads * sh.hd, 23);
      std::vector<float> ref(q.size());
      CausalAttention(q.data(), T, sh.heads, cache, ref.data());
      const std::vector<uint16_t> kb = ToBf16Bits(cache.k), vb = ToBf16Bits(cache.v);
      Dev dq(q), dout(q.size() * 4), dk(cache.k.size() * (bf16 ? 2 : 4)), dv(dk.bytes);
      ASSERT_CUDA(cudaMemcpy(dk.p, bf16 ? static_cast<const void*>(kb.data()) : cache.k.data(), dk.bytes,
                             cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemcpy(dv.p, bf16 ? static_cast<const void*>(vb.data()) : cache.v.data(), dv.bytes,
                             cudaMemcpyHostToDevice));
      FlashAttentionArgs fa;
      fa.q = dq.as<float>();
      fa.k_cache = dk.p;
      fa.v_cache = dv.p;
      fa.cache_bf16 = bf16;
      fa.tokens = T;
      fa.heads = sh.heads;
      fa.kv_heads = sh.kvh;
      fa.head_dim = sh.hd;
      fa.first_position = sh.first;
      fa.out = dout.as<float>();
      ASSERT_CUDA(LaunchFlashAttention(fa, nullptr));
      auto y = dout.get<float>();
      double err2 = 0, ref2 = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_TRUE(std::isfinite(y[i])) << i;
        err2 += (y[i] - ref[i]) * static_cast<double>(y[i] - ref[i]);
        ref2 += ref[i] * static_cast<double>(ref[i]);
      }
      const double rel = std::sqrt(err2 / ref2);
      EXPECT_LT(rel, 1.5e-2) << sh.heads << "x" << sh.hd << " first " << sh.first << " tokens " << T;
      std::printf("flash attention %dx%d, %d tokens after %d, %s cache: relative L2 error %.2e\n", sh.heads, sh.hd, T,
                  sh.first, bf16 ? "bf16" : "f32", rel);
    }
  }
}

// A bf16 KV cache (QkNormRopeCacheArgs::cache_bf16) through every attention form: the keys and values
// the kernels store are the CPU's rounded to bf16 (a key within one bf16 step: the GPU's fp32 key may
// differ from the CPU's in its last bits and round the other way; a value exactly), and the prefill
// kernel, the fused decode kernel and its split and grouped split forms match the CPU attention over
// the rounded cache, the decode forms reading their own new key and value from shared memory rounded
// like the cached ones. The bound on the outputs, 2e-3, allows for a few keys rounded the other way.
TEST(DenseKernelsGpu, Bf16KvCache) {
  using Shape = AttnShape;
  for (const Shape& sh : {Shape{4, 2, 32, 32, 0, 5}, Shape{32, 4, 128, 128, 300, 1}, Shape{16, 2, 256, 64, 7, 130},
                          Shape{8, 8, 64, 64, 129, 3}, Shape{4, 2, 32, 8, 200, 1}, Shape{32, 4, 128, 128, 2100, 1},
                          Shape{8, 8, 64, 64, 129, 1}, Shape{16, 2, 256, 64, 517, 1}}) {
    SCOPED_TRACE(::testing::Message() << sh.heads << "x" << sh.hd << " first " << sh.first << " tokens " << sh.tokens);
    const int nh = sh.heads, nkv = sh.kvh, hd = sh.hd, T = sh.tokens, first = sh.first;
    const int row = (nh + 2 * nkv) * hd;
    auto qkv = Random(static_cast<size_t>(T) * row, hd + T + 1, 2.f);
    auto qn = Random(hd, 5), kn = Random(hd, 6);
    Rope rope(hd, sh.rot, 1e6);
    KvCache cache;
    cache.kv_heads = nkv;
    cache.head_dim = hd;
    cache.length = first;
    cache.k = RoundToBf16(Random(static_cast<size_t>(first) * nkv * hd, 17));
    cache.v = RoundToBf16(Random(cache.k.size(), 18));
    const std::vector<uint16_t> k_prefix = ToBf16Bits(cache.k), v_prefix = ToBf16Bits(cache.v);
    std::vector<float> q, k, v;
    SplitFusedRows(sh, qkv, &q, &k, &v);
    std::vector<float> unused(q.size()), ref(q.size());
    QkNormRopeAttend(rope, qn.data(), kn.data(), 1e-6f, first, T, nh, q.data(), k, v, &cache, unused.data());
    KvCache rounded = cache;  // q now holds the normalised, rotated queries
    rounded.k = RoundToBf16(cache.k);
    rounded.v = RoundToBf16(cache.v);
    CausalAttention(q.data(), T, nh, rounded, ref.data());

    const size_t elems = static_cast<size_t>(first + T) * nkv * hd;
    Dev dqkv(qkv), dqn(qn), dkn(kn), df(rope.inv_freq()), dq(q.size() * 4), dout(q.size() * 4), dk(elems * 2),
        dv(elems * 2);
    auto reset_cache = [&] {
      ASSERT_CUDA(cudaMemcpy(dk.p, k_prefix.data(), k_prefix.size() * 2, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemcpy(dv.p, v_prefix.data(), v_prefix.size() * 2, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemset(dout.p, 0, dout.bytes));
    };
    auto check = [&](const char* form) {
      auto gk = dk.get<uint16_t>(), gv = dv.get<uint16_t>();
      for (size_t i = 0; i < elems; ++i) {
        const float want = rounded.k[i], got = Bf16ToF32(gk[i]);
        ASSERT_LE(std::fabs(got - want), std::ldexp(std::fabs(want), -7) + 1e-30f) << form << " k cache " << i;
        ASSERT_EQ(Bf16ToF32(gv[i]), rounded.v[i]) << form << " v cache " << i;
      }
      auto y = dout.get<float>();
      for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 2e-3f) << form << " " << i;
    };
    const QkNormRopeCacheArgs qa = CoreArgs(sh, dqkv.as<float>(), dqn.as<float>(), dkn.as<float>(), df.as<float>(),
                                            dq.as<float>(), dk.p, dv.p, /*cache_bf16=*/true);
    reset_cache();
    ASSERT_CUDA(LaunchQkNormRopeCache(qa, T, nullptr));
    ASSERT_CUDA(LaunchAttention(AttentionAfter(qa, dout.as<float>()), T, nullptr));
    check("prefill");
    if (T != 1) continue;
    reset_cache();
    ASSERT_CUDA(LaunchDecodeAttentionFused(qa, dout.as<float>(), nullptr));
    check("fused decode");
    // The grouped form on the CUDA cores and, where it serves (group 8, head_dim 128), on tensor cores.
    for (const int form : {0, 1, 2}) {
      for (int splits : {1, 7, kAttnMaxSplits}) {
        SplitRun split(qa, splits, form >= 1);
        split.args.tensor_cores = form == 2;
        reset_cache();
        ASSERT_CUDA(LaunchDecodeAttentionFused(split.args, dout.as<float>(), nullptr));
        check(form == 0 ? "split decode" : form == 1 ? "grouped split decode" : "grouped split decode, tensor cores");
      }
    }
  }
}

// The grouped split form on tensor cores (bf16 cache, 8 query heads per kv head, head_dim 128: the
// Qwen3-30B-A3B shape) against the same form on the CUDA cores (tested against the CPU above), for a
// batch of sequences at different depths read from the device (an empty cache, a part of one key per
// warp, a partial last round, more splits than the grid has): the two differ by the tensor cores'
// bf16 halves of each query and probability (hi + lo, ~2^-17 of each) and the order of the sums, so
// they agree to 5e-5 of the outputs' scale (bf16 probabilities alone would be ~1e-3 off); the caches
// they leave are the same, a second launch gives the same bits and the counters are left zeroed.
TEST(DenseKernelsGpu, GroupedDecodeOnTensorCores) {
  const AttnShape sh{32, 4, 128, 128, 0, 1};
  const std::vector<int> positions = {4999, 300, 16, 0, 2047};
  const int batch = static_cast<int>(positions.size()), max_positions = 5000;
  const int row = (sh.heads + 2 * sh.kvh) * sh.hd;
  const size_t seq_elems = static_cast<size_t>(max_positions) * sh.kvh * sh.hd;
  auto qkv = Random(static_cast<size_t>(batch) * row, 41, 2.f);
  auto qn = Random(sh.hd, 42), kn = Random(sh.hd, 43);
  Rope rope(sh.hd, sh.rot, 1e6);
  const std::vector<uint16_t> k0 = ToBf16Bits(Random(batch * seq_elems, 44)), v0 = ToBf16Bits(Random(batch * seq_elems, 45));
  Dev dqkv(qkv), dqn(qn), dkn(kn), df(rope.inv_freq()), dq(static_cast<size_t>(batch) * sh.heads * sh.hd * 4),
      dout(dq.bytes), dk(k0.size() * 2), dv(v0.size() * 2), dpos(positions.size() * 4);
  ASSERT_CUDA(cudaMemcpy(dpos.p, positions.data(), dpos.bytes, cudaMemcpyHostToDevice));
  QkNormRopeCacheArgs qa = CoreArgs(sh, dqkv.as<float>(), dqn.as<float>(), dkn.as<float>(), df.as<float>(),
                                    dq.as<float>(), dk.p, dv.p, /*cache_bf16=*/true);
  qa.batch = batch;
  qa.cache_seq_stride = seq_elems;
  qa.position_dev = dpos.as<int>();
  for (int splits : {1, 7, kAttnMaxSplits}) {
    SCOPED_TRACE(::testing::Message() << splits << " splits");
    std::vector<float> cuda_cores;
    std::vector<uint16_t> cuda_cores_k;
    for (const bool tensor_cores : {false, true}) {
      SplitRun split(qa, splits, /*grouped=*/true);
      split.args.tensor_cores = tensor_cores;
      std::vector<float> first_run;
      for (int run = 0; run < 2; ++run) {
        ASSERT_CUDA(cudaMemcpy(dk.p, k0.data(), dk.bytes, cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemcpy(dv.p, v0.data(), dv.bytes, cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemset(dout.p, 0, dout.bytes));
        ASSERT_CUDA(LaunchDecodeAttentionFused(split.args, dout.as<float>(), nullptr));
        auto y = dout.get<float>();
        if (run == 0) {
          first_run = y;
        } else {
          ASSERT_EQ(0, std::memcmp(y.data(), first_run.data(), y.size() * 4)) << "a second launch differs";
        }
      }
      for (unsigned int c : split.counters.get<unsigned int>()) ASSERT_EQ(c, 0u) << "a split counter was left set";
      auto gk = dk.get<uint16_t>();
      if (!tensor_cores) {
        cuda_cores = first_run;
        cuda_cores_k = gk;
        continue;
      }
      ASSERT_EQ(gk, cuda_cores_k) << "the appended keys differ";
      float scale = 0.f;
      for (float y : cuda_cores) scale = std::max(scale, std::fabs(y));
      ASSERT_GT(scale, 0.1f);
      for (size_t i = 0; i < first_run.size(); ++i) {
        const size_t b = i / (static_cast<size_t>(sh.heads) * sh.hd);
        ASSERT_NEAR(first_run[i], cuda_cores[i], 5e-5f * scale) << "sequence " << b << " at position "
                                                                << positions[b] << ", element " << i;
      }
    }
  }
}

// y (=|+=) x . W^T through the GEMV kernel (up to 8 tokens) and cuBLAS (more), bf16 and fp32 weights,
// against a double-precision reference from the same (bf16-rounded where the path rounds) values.
TEST(DenseKernelsGpu, LinearGemvAndCublas) {
  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreate(&stream));
  auto runner = LinearRunner::Create(stream);
  ASSERT_TRUE(runner.ok()) << runner.status();
  for (bool bf16 : {false, true}) {
    for (auto [rows, cols] : {std::pair{8, 64}, std::pair{1000, 2048}, std::pair{77, 4096}}) {
      for (int tokens : {1, 3, 8, 17, 64}) {
        for (bool acc : {false, true}) {
          auto w = Random(static_cast<size_t>(rows) * cols, rows + cols, 1.f / std::sqrt(static_cast<float>(cols)));
          auto x = Random(static_cast<size_t>(tokens) * cols, tokens);
          auto y0 = Random(static_cast<size_t>(tokens) * rows, 99);
          std::vector<uint16_t> wb(w.size());
          for (size_t i = 0; i < w.size(); ++i) {
            wb[i] = __bfloat16_as_ushort(__float2bfloat16(w[i]));
            if (bf16) w[i] = __bfloat162float(__ushort_as_bfloat16(wb[i]));
          }
          // The tensor-core path rounds activations to bf16 too.
          auto xr = x;
          if (bf16 && tokens > kGemvMaxTokens) {
            for (float& v : xr) v = __bfloat162float(__float2bfloat16(v));
          }
          Dev dw = bf16 ? Dev(wb) : Dev(w);
          Dev dx(x), dy(y0);
          DeviceMatrix m{dw.p, bf16, rows, cols};
          ASSERT_TRUE((*runner)->Run(m, dx.as<float>(), tokens, dy.as<float>(), acc).ok());
          ASSERT_CUDA(cudaStreamSynchronize(stream));
          auto y = dy.get<float>();
          for (int t = 0; t < tokens; ++t) {
            for (int r = 0; r < rows; ++r) {
              double ref = acc ? y0[static_cast<size_t>(t) * rows + r] : 0.0;
              for (int c = 0; c < cols; ++c) {
                ref += static_cast<double>(w[static_cast<size_t>(r) * cols + c]) * xr[static_cast<size_t>(t) * cols + c];
              }
              ASSERT_NEAR(y[static_cast<size_t>(t) * rows + r], ref, 2e-4 * (1 + std::fabs(ref)))
                  << (bf16 ? "bf16 " : "fp32 ") << rows << "x" << cols << " tokens " << tokens << " at " << t << "," << r;
            }
          }
        }
      }
    }
  }
  // With the RMSNorm fused in (GEMV) or in front (cuBLAS): against RmsNorm then the plain product.
  for (int tokens : {1, 5, 40}) {
    const int rows = 300, cols = 512;
    auto w = Random(static_cast<size_t>(rows) * cols, 11, 0.05f), x = Random(static_cast<size_t>(tokens) * cols, 12, 3.f);
    auto nw = Random(cols, 13);
    std::vector<float> xn(x.size()), ref(static_cast<size_t>(tokens) * rows);
    RmsNorm(x.data(), nw.data(), xn.data(), tokens, cols, 1e-6f);
    MatMulTransposed(xn.data(), w.data(), ref.data(), tokens, cols, rows);
    Dev dw(w), dx(x), dnw(nw), dy(ref.size() * 4), dxn(x.size() * 4);
    DeviceMatrix m{dw.p, false, rows, cols};
    ASSERT_TRUE((*runner)->RunNormed(m, dx.as<float>(), GemvNorm{dnw.as<float>(), 1e-6f, dxn.as<float>()}, tokens,
                                     dy.as<float>(), false).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    auto y = dy.get<float>(), got_xn = dxn.get<float>();
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f * (1 + std::fabs(ref[i]))) << tokens << " " << i;
    for (size_t i = 0; i < xn.size(); ++i) ASSERT_NEAR(got_xn[i], xn[i], 1e-5f * (1 + std::fabs(xn[i])));
  }
  runner->reset();
  cudaStreamDestroy(stream);
}

// The router GEMV with the norm and the softmax top-k fused (decode batches), twice in a row (its block
// counter must reset itself), against RmsNorm, the plain product and RouteTopK on the CPU; each call
// also stores a ready counter (GPU scope, then system scope) once the routing is written. One-token
// routers of up to 128 experts run as one cluster of blocks (GemvTopK::one_cluster) on sm_90 and later:
// those shapes run in both forms, whose logits must then agree bit for bit. Weights in fp32 and bf16 (the
// reference uses the bf16 values), Qwen3-30B-A3B's router (128 x 2048) among the shapes.
TEST(DenseKernelsGpu, FusedRouterTopK) {
  int major = 0;
  ASSERT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  struct Shape {
    int experts, k, tokens, cols;
    bool norm, bf16;
  };
  for (const Shape& sh : {Shape{128, 8, 1, 256, true, false}, Shape{512, 10, 3, 256, true, false},
                          Shape{6, 2, 8, 256, false, false}, Shape{128, 8, 1, 2048, true, true},
                          Shape{100, 4, 1, 512, false, true}, Shape{128, 8, 2, 2048, true, true}}) {
    const int experts = sh.experts, k = sh.k, tokens = sh.tokens, cols = sh.cols;
    SCOPED_TRACE(::testing::Message() << experts << " experts, " << cols << " columns, " << tokens << " tokens"
                                      << (sh.bf16 ? ", bf16" : ", fp32"));
    auto w = Random(static_cast<size_t>(experts) * cols, experts, 0.3f), x = Random(static_cast<size_t>(tokens) * cols, 5);
    if (sh.bf16) w = RoundToBf16(w);
    auto nw = Random(cols, 6);
    std::vector<float> xn(x.size()), logits(static_cast<size_t>(tokens) * experts);
    RmsNorm(x.data(), nw.data(), xn.data(), tokens, cols, 1e-6f);
    MatMulTransposed(xn.data(), w.data(), logits.data(), tokens, cols, experts);
    std::vector<int32_t> ref_ids(tokens * k);
    std::vector<float> ref_w(tokens * k);
    for (int t = 0; t < tokens; ++t) {
      RouteTopK(logits.data() + t * experts, experts, k, sh.norm, ref_ids.data() + t * k, ref_w.data() + t * k);
    }
    const std::vector<uint16_t> wb = ToBf16Bits(w);
    Dev dw(w.size() * (sh.bf16 ? 2 : 4)), dx(x), dnw(nw), dy(logits.size() * 4), di(tokens * k * 4),
        dwt(tokens * k * 4), counter(4), ready(4), soon(4);
    ASSERT_CUDA(cudaMemcpy(dw.p, sh.bf16 ? static_cast<const void*>(wb.data()) : w.data(), dw.bytes,
                           cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemset(counter.p, 0, 4));
    ASSERT_CUDA(cudaMemset(ready.p, 0, 4));
    ASSERT_CUDA(cudaMemset(soon.p, 0, 4));
    DeviceMatrix m{dw.p, sh.bf16, experts, cols};
    GemvNorm gn{dnw.as<float>(), 1e-6f, nullptr};
    const bool clustered = major >= 9 && tokens == 1 && experts <= kClusterRouterExperts;
    std::vector<std::vector<float>> form_logits;
    for (const bool one_cluster : {false, true}) {
      if (one_cluster && !clustered) continue;
      GemvTopK topk{k, sh.norm, di.as<int32_t>(), dwt.as<float>(), counter.as<unsigned int>(), {}, {}, one_cluster};
      // On sm_90 and later the cluster form must really run where it serves (not fall back unseen).
      EXPECT_EQ(RouterRunsOnOneCluster(m, tokens, &topk), one_cluster);
      ASSERT_CUDA(cudaMemset(di.p, 0xff, di.bytes));
      for (int call = 0; call < 2; ++call) {
        SCOPED_TRACE(::testing::Message() << (one_cluster ? "one cluster" : "blocks and a counter") << ", call " << call);
        topk.ready = CounterStore{ready.as<uint32_t>(), 77u + call + (one_cluster ? 10u : 0u), call == 1};
        // The second call also stores `soon` once every block has started (the early hand-over).
        topk.soon = call == 1 ? CounterStore{soon.as<uint32_t>(), 55u, false} : CounterStore();
        ASSERT_CUDA(cudaMemset(soon.p, 0, 4));
        ASSERT_CUDA(LaunchGemv(m, dx.as<float>(), tokens, dy.as<float>(), false, &gn, nullptr, &topk));
        ASSERT_CUDA(cudaDeviceSynchronize());
        EXPECT_EQ(ready.get<uint32_t>()[0], 77u + call + (one_cluster ? 10u : 0u));
        EXPECT_EQ(soon.get<uint32_t>()[0], call == 1 ? 55u : 0u);
        EXPECT_EQ(di.get<int32_t>(), ref_ids);
        auto got = dwt.get<float>();
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref_w[i], 2e-5f) << i;
        auto y = dy.get<float>();
        for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], logits[i], 1e-4f * (1 + std::fabs(logits[i]))) << i;
        EXPECT_EQ(counter.get<uint32_t>()[0], 0u);
      }
      form_logits.push_back(dy.get<float>());
    }
    if (form_logits.size() == 2) {
      EXPECT_EQ(0, std::memcmp(form_logits[0].data(), form_logits[1].data(), form_logits[0].size() * 4))
          << "the two forms' logits differ";
    }
  }
}

TEST(DenseKernelsGpu, EmbedSiluMulCombineArgMax) {
  const int vocab = 300, hidden = 64, tokens = 4, top_k = 3, inter = 40;
  auto table = Random(static_cast<size_t>(vocab) * hidden, 1);
  std::vector<int32_t> ids = {5, 0, 299, 5};
  Dev dt(table), di(ids), dx(static_cast<size_t>(tokens) * hidden * 4);
  ASSERT_CUDA(LaunchEmbed(dt.p, /*bf16=*/false, di.as<int32_t>(), tokens, hidden, dx.as<float>(), nullptr));
  auto x = dx.get<float>();
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < hidden; ++i) ASSERT_EQ(x[t * hidden + i], table[ids[t] * hidden + i]);
  }
  auto gu = Random(static_cast<size_t>(tokens) * 2 * inter, 2);
  Dev dgu(gu), dact(static_cast<size_t>(tokens) * inter * 4);
  ASSERT_CUDA(LaunchSiluMul(dgu.as<float>(), 2 * inter, tokens, inter, dact.as<float>(), nullptr));
  auto act = dact.get<float>();
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < inter; ++i) {
      const float g = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
      ASSERT_NEAR(act[t * inter + i], g / (1 + std::exp(-g)) * u, 1e-5f * (1 + std::fabs(g * u)));
    }
  }
  auto slots = Random(static_cast<size_t>(tokens) * top_k * hidden, 3), wts = Random(tokens * top_k, 4);
  Dev ds(slots), dw(wts);
  ASSERT_CUDA(LaunchMoeCombine(ds.as<float>(), dw.as<float>(), tokens, top_k, hidden, dx.as<float>(), nullptr));
  auto combined = dx.get<float>();
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < hidden; ++i) {
      // Bit for bit: fused multiply-adds in slot order, then one add (what the one-token down kernel
      // that combines as it goes does too; expert_ffn_gpu_test).
      float o = 0;
      for (int s = 0; s < top_k; ++s) o = std::fma(wts[t * top_k + s], slots[(t * top_k + s) * hidden + i], o);
      ASSERT_EQ(combined[t * hidden + i], x[t * hidden + i] + o);
    }
  }
  for (int n : {1, 1000, 151936}) {
    auto v = Random(n, n);
    v[n / 2] = 50.f;
    if (n > 2) v[n - 1] = 50.f;  // a tie: the lower index wins
    Dev dv(v), dix(4), scratch(16);
    ASSERT_CUDA(cudaMemset(scratch.p, 0, 16));
    ArgMaxScratch as{scratch.as<unsigned long long>(), reinterpret_cast<unsigned int*>(scratch.as<uint8_t>() + 8)};
    for (int call = 0; call < 2; ++call) {  // the scratch resets itself
      ASSERT_CUDA(LaunchArgMax(dv.as<float>(), n, as, dix.as<int32_t>(), nullptr));
      EXPECT_EQ(dix.get<int32_t>()[0], n / 2) << n;
    }
  }
}

// The sampler's candidates on the device against TopCandidates on the host: same ids, same order, the
// same float values, over vocabularies of several sizes with ties and negative logits.
TEST(DenseKernelsGpu, SamplerTopK) {
  for (auto [n, k] : {std::pair{151936, 20}, std::pair{151936, 64}, std::pair{5000, 1}, std::pair{2049, 40},
                      std::pair{7, 7}, std::pair{300, 33}}) {
    auto v = Random(static_cast<size_t>(n), n + k, 8.f);
    for (int i = 0; i < n; i += 7) v[i] = std::round(v[i] * 4.f) / 4.f;  // many ties among the largest
    v[n / 3] = 1000.f;
    v[n - 1] = 1000.f;  // a tie at the top: the lower index first
    Dev dv(v), partial(static_cast<size_t>(TopKPartialKeys(n)) * 8), out(kDeviceTopKMax * 8);
    ASSERT_CUDA(LaunchTopK(dv.as<float>(), n, k, partial.as<unsigned long long>(), out.as<unsigned long long>(),
                           nullptr));
    const auto keys = out.get<unsigned long long>();
    const auto want = TopCandidates(v, k);
    for (int i = 0; i < k; ++i) {
      int32_t id = -1;
      float value = 0.f;
      DecodeTopKKey(keys[i], &id, &value);
      ASSERT_EQ(id, want[i].id) << "n " << n << " k " << k << " rank " << i;
      ASSERT_EQ(value, want[i].logit) << "n " << n << " k " << k << " rank " << i;
    }
  }
}

TEST(DenseKernelsGpu, RouteTopK) {
  for (auto [experts, k, norm] : {std::tuple{8, 2, true}, std::tuple{128, 8, true}, std::tuple{512, 10, false}}) {
    const int tokens = 9;
    auto logits = Random(static_cast<size_t>(tokens) * experts, experts, 2.f);
    logits[3] = logits[5];  // a tie: the lower index wins on both sides
    // Token 1: ties at the top, within a lane (experts 2 and 34) and across lanes (2 and 7).
    for (int e : {2, 7, 34}) {
      if (e < experts) logits[experts + e] = 5.f;
    }
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
