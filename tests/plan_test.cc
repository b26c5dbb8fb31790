// Memory planning from config.json alone, on the real shapes of Qwen3-30B-A3B and Qwen3-Next-80B-A3B.
#include "coordinator/plan.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace pinmoe {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

ModelConfig Qwen3_30B() {
  nlohmann::json j = {{"architectures", {"Qwen3MoeForCausalLM"}}, {"vocab_size", 151936}, {"hidden_size", 2048},
                      {"num_hidden_layers", 48}, {"num_attention_heads", 32}, {"num_key_value_heads", 4},
                      {"head_dim", 128}, {"num_experts", 128}, {"num_experts_per_tok", 8},
                      {"moe_intermediate_size", 768}, {"intermediate_size", 6144}, {"max_position_embeddings", 40960},
                      {"rope_theta", 1000000.0}, {"norm_topk_prob", true}, {"torch_dtype", "bfloat16"}};
  return ParseModelConfig(j.dump(), "qwen3-30b").value();
}

ModelConfig Qwen3Next80B() {
  nlohmann::json j = {{"architectures", {"Qwen3NextForCausalLM"}}, {"vocab_size", 151936}, {"hidden_size", 2048},
                      {"num_hidden_layers", 48}, {"num_attention_heads", 16}, {"num_key_value_heads", 2},
                      {"head_dim", 256}, {"num_experts", 512}, {"num_experts_per_tok", 10},
                      {"moe_intermediate_size", 512}, {"shared_expert_intermediate_size", 512},
                      {"intermediate_size", 5120}, {"max_position_embeddings", 262144},
                      {"full_attention_interval", 4}, {"partial_rotary_factor", 0.25}, {"rope_theta", 10000000.0},
                      {"linear_num_key_heads", 16}, {"linear_num_value_heads", 32}, {"linear_key_head_dim", 128},
                      {"linear_value_head_dim", 128}, {"linear_conv_kernel_dim", 4}, {"norm_topk_prob", true},
                      {"torch_dtype", "bfloat16"}};
  return ParseModelConfig(j.dump(), "qwen3-next").value();
}

void ExpectConsistent(const ModelConfig& c, const MemoryPlan& p) {
  uint64_t experts = 0, bytes = 0;
  for (const auto& d : p.devices) {
    EXPECT_LE(d.dense_bytes + d.expert_bytes + d.scratch_bytes, d.budget) << d.name;
    experts += d.experts;
    bytes += d.expert_bytes;
  }
  EXPECT_EQ(experts, 48u * c.num_experts);
  EXPECT_EQ(bytes, p.expert_bytes);
  for (int l = 0; l < c.num_layers; ++l) {
    for (int e = 0; e < c.num_experts; ++e) ASSERT_GE(p.placement.owner[l][e], 0) << l << "," << e;
  }
}

TEST(Plan, ParameterCountsMatchThePublishedSizes) {
  // Qwen3-30B-A3B has 30.5 B parameters; Qwen3-Next-80B-A3B 80 B (of which 3 B are not routed experts).
  const ModelConfig a = Qwen3_30B(), b = Qwen3Next80B();
  const double a_params = (DenseWeightBytes(a) + 48.0 * 128 * a.ExpertBytes()) / 2;
  const double b_params = (DenseWeightBytes(b) + 48.0 * 512 * b.ExpertBytes()) / 2;
  EXPECT_NEAR(a_params / 1e9, 30.5, 0.3);
  EXPECT_NEAR(b_params / 1e9, 79.7, 0.8);
}

TEST(Plan, CachesAreCountedInFp32LikeTheModelsHoldThem) {
  // Qwen3-30B-A3B: K and V of 4 heads x 128 for each of 48 layers and 4,096 positions.
  EXPECT_EQ(CacheBytes(Qwen3_30B(), 4096), 48ull * 2 * 4 * 128 * 4096 * 4);
  // Qwen3-Next-80B-A3B: 12 full-attention layers (K and V of 2 heads x 256); 36 Gated DeltaNet layers
  // with a 32 x 128 x 128 state and 3 positions of conv state over q, k (16 x 128 each) and v (32 x 128).
  EXPECT_EQ(CacheBytes(Qwen3Next80B(), 4096),
            12ull * 2 * 2 * 256 * 4096 * 4 + 36ull * (32 * 128 * 128 + (2 * 2048 + 4096) * 3) * 4);
}

// --kv-cache-dtype: a bf16 KV cache counts half the bytes (the DeltaNet states stay fp32); auto follows
// the weights (bf16 here), except where the dense part is on the CPU, whose cache is fp32.
TEST(Plan, Bf16KvCacheHalvesTheKvBytes) {
  EXPECT_EQ(CacheBytes(Qwen3_30B(), 4096, KvCacheDtype::kBf16), 48ull * 2 * 4 * 128 * 4096 * 2);
  EXPECT_EQ(CacheBytes(Qwen3Next80B(), 4096, KvCacheDtype::kBf16),
            12ull * 2 * 2 * 256 * 4096 * 2 + 36ull * (32 * 128 * 128 + (2 * 2048 + 4096) * 3) * 4);
  EXPECT_EQ(DecodeCacheBytes(Qwen3_30B(), 2, 64.5, KvCacheDtype::kBf16), 48ull * 2 * 4 * 128 * 129 * 2);
  const ModelConfig c = Qwen3_30B();
  const uint64_t budget = 200ull << 30;
  auto gpu = PlanMemory(c, {{"cuda:0", budget}}, 4096, KvCacheDtype::kAuto);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->kv_cache_dtype, KvCacheDtype::kBf16);
  EXPECT_EQ(gpu->cache_bytes, CacheBytes(c, 4096, KvCacheDtype::kBf16));
  EXPECT_NE(FormatMemoryPlan(c, *gpu, 4096).find("(bf16 KV)"), std::string::npos);
  auto forced = PlanMemory(c, {{"cuda:0", budget}}, 4096, KvCacheDtype::kF32);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->cache_bytes, CacheBytes(c, 4096));
  auto cpu = PlanMemory(c, {{"cpu", budget}}, 4096, KvCacheDtype::kAuto);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(cpu->kv_cache_dtype, KvCacheDtype::kF32);
  ModelConfig fp32 = c;
  fp32.weight_dtype = DType::kF32;
  auto wide = PlanMemory(fp32, {{"cuda:0", budget}}, 4096, KvCacheDtype::kAuto);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->kv_cache_dtype, KvCacheDtype::kF32);
}

TEST(Plan, KvCacheDtypeNamesParse) {
  for (const char* name : {"auto", "f32", "bf16"}) {
    auto d = ParseKvCacheDtype(name);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_STREQ(KvCacheDtypeName(*d), name);
  }
  EXPECT_EQ(*ParseKvCacheDtype("bfloat16"), KvCacheDtype::kBf16);
  EXPECT_EQ(*ParseKvCacheDtype("fp32"), KvCacheDtype::kF32);
  auto bad = ParseKvCacheDtype("fp8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--kv-cache-dtype fp8"), std::string_view::npos) << bad.status();
}

TEST(Plan, DecodeBytesCountTheRoutedExpertsAndWhatTheCachesMove) {
  const ModelConfig c = Qwen3_30B();
  // Per layer: q/k/v and o (2048 x 40 x 128, 32 x 128 x 2048), the router (128 x 2048), 8 experts of three
  // 2048 x 768 matrices; then lm_head (151,936 x 2048); bf16.
  const uint64_t per_layer = 2048ull * 40 * 128 + 32ull * 128 * 2048 + 128ull * 2048 + 8ull * 3 * 2048 * 768;
  EXPECT_EQ(DecodeWeightBytes(c, 2, 1), 2 * (48 * per_layer + 151936ull * 2048));
  // A batch reads more distinct experts, and a large one all 128 of each layer.
  EXPECT_GT(DecodeWeightBytes(c, 2, 8), DecodeWeightBytes(c, 2, 1));
  EXPECT_EQ(DecodeWeightBytes(c, 2, 10000), DecodeWeightBytes(c, 2, 1) + 2 * 48ull * 120 * 3 * 2048 * 768);
  // fp32 K and V of 4 kv heads x 128 per layer and position, for each sequence.
  EXPECT_EQ(DecodeCacheBytes(c, 1, 8192), 48ull * 2 * 4 * 128 * 8192 * 4);
  EXPECT_EQ(DecodeCacheBytes(c, 2, 64.5), 48ull * 2 * 4 * 128 * 129 * 4);
  // Qwen3-Next: 12 attention layers (2 kv heads x 256) and 36 DeltaNet layers whose 32 x 128 x 128 state
  // and conv state (3 positions of 2 x 2048 + 4096) are read and written back, whatever the context.
  const uint64_t states = 36ull * 2 * (32 * 128 * 128 + (2 * 2048 + 4096) * 3) * 4;
  EXPECT_EQ(DecodeCacheBytes(Qwen3Next80B(), 1, 0), states);
  EXPECT_EQ(DecodeCacheBytes(Qwen3Next80B(), 1, 1000), states + 12ull * 2 * 2 * 256 * 1000 * 4);
}

TEST(Plan, StepBuffersAreCountedOnTheDenseDeviceAndExpertScratchOnEachGpu) {
  const ModelConfig c = Qwen3_30B();
  const uint64_t t = 2048;
  const StepBuffers b = StepBufferBytes(c, static_cast<uint32_t>(t));
  // x, router logits, route weights, qkv, q, attn, gate/up, act (fp32), one row of logits, and the
  // decode attention's shares (32 splits of 32 heads, each a max, a sum and 128 dimensions) and counters.
  EXPECT_EQ(b.model, 4 * (t * (2048 + 128 + 8 + 40 * 128 + 32 * 128 + 32 * 128 + 2 * 6144 + 6144) + 151936 +
                          32 * 32 * 130 + 32));
  EXPECT_EQ(b.linear, t * 6144 * 6);                          // fp32 rows and their bf16 copy
  EXPECT_EQ(b.expert_io, t * (2048 + 8 * 2048) * 4 + t * 8 * 4);  // input, an output row per pair, routing
  EXPECT_EQ(b.expert_scratch, t * 8 * 768 * 6);                // fp32 activations and the bf16 copy
  // A budget that holds the weights and caches alone is refused; with the buffers it fits.
  const uint64_t bare = DenseWeightBytes(c) + CacheBytes(c, 4096) + 48ull * 128 * c.ExpertBytes();
  auto short_by_buffers = PlanMemory(c, {{"cuda:0", bare}}, 4096);
  ASSERT_FALSE(short_by_buffers.ok());
  EXPECT_NE(short_by_buffers.status().message().find("step buffers"), std::string_view::npos)
      << short_by_buffers.status();
  const uint64_t enough = bare + b.model + b.linear + b.expert_io + b.expert_scratch;
  auto fits = PlanMemory(c, {{"cuda:0", enough}}, 4096);
  ASSERT_TRUE(fits.ok()) << fits.status();
  ExpectConsistent(c, *fits);
  EXPECT_EQ(fits->devices[0].scratch_bytes, b.expert_scratch);
}

TEST(Plan, SplitsByCapacityAndStaysWithinBudgets) {
  const ModelConfig c = Qwen3_30B();
  auto plan = PlanMemory(c, {{"cuda:0", static_cast<uint64_t>(70 * kGiB)}, {"cuda:1", static_cast<uint64_t>(14 * kGiB)}}, 8192);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectConsistent(c, *plan);
  // Every layer's experts are spread over both cards, the larger taking the larger share.
  for (const auto& set : plan->placement.per_worker[1]) EXPECT_GT(set.experts.size(), 0u);
  EXPECT_GT(plan->devices[0].experts, plan->devices[1].experts);
  EXPECT_NE(FormatMemoryPlan(c, *plan, 8192).find("cuda:1"), std::string::npos);
}

TEST(Plan, RefusesWhatDoesNotFitAndTakesSystemMemory) {
  const ModelConfig c = Qwen3Next80B();
  std::vector<DeviceBudget> two = {{"cuda:0", static_cast<uint64_t>(70 * kGiB)}, {"cuda:1", static_cast<uint64_t>(70 * kGiB)}};
  auto refused = PlanMemory(c, two, 32768);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("do not fit"), std::string_view::npos) << refused.status();
  two.push_back({"cpu", static_cast<uint64_t>(64 * kGiB)});
  auto fits = PlanMemory(c, two, 32768);
  ASSERT_TRUE(fits.ok()) << fits.status();
  ExpectConsistent(c, *fits);
  // The GPUs are filled first; system memory holds only the overflow.
  const uint64_t per = c.ExpertBytes();
  for (int d : {0, 1}) {
    const DevicePlan& g = fits->devices[d];
    EXPECT_GT(g.dense_bytes + g.expert_bytes + g.scratch_bytes + per, g.budget) << g.name;
  }
  EXPECT_LT(fits->devices[2].experts, 48 * 512 / 10);
  // With room on the GPUs, nothing goes to system memory.
  auto roomy = PlanMemory(c, {{"cuda:0", static_cast<uint64_t>(140 * kGiB)}, {"cuda:1", static_cast<uint64_t>(70 * kGiB)},
                              {"cpu", static_cast<uint64_t>(64 * kGiB)}}, 32768);
  ASSERT_TRUE(roomy.ok()) << roomy.status();
  EXPECT_EQ(roomy->devices[2].experts, 0);
  auto tiny = PlanMemory(c, {{"cuda:0", static_cast<uint64_t>(1 * kGiB)}}, 32768);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("dense part"), std::string_view::npos);
}

TEST(Plan, ParsesBudgets) {
  auto d = ParseDeviceBudgets("0,1", "0=70GiB,1=14.5GB", "64GiB");
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->size(), 3u);
  EXPECT_EQ((*d)[0].bytes, static_cast<uint64_t>(70 * kGiB));
  EXPECT_EQ((*d)[1].bytes, 14500000000u);
  EXPECT_EQ((*d)[2].name, "cpu");
  EXPECT_FALSE(ParseDeviceBudgets("0,1", "0=70GiB", "").ok());   // no budget for GPU 1
  EXPECT_FALSE(ParseDeviceBudgets("", "0=70XB", "").ok());
  EXPECT_FALSE(ParseDeviceBudgets("0", "0=70GiB,2=8GiB", "").ok());
}

}  // namespace
}  // namespace pinmoe
