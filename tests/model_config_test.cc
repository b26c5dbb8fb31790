#include "common/model_config.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace pinmoe {
namespace {

nlohmann::json HubConfig() {
  return testing::ReadJson(testing::TestData("qwen3moe-f32/config.json"));
}

TEST(ModelConfig, HubStyle) {
  auto c = LoadModelConfig(testing::TestData("qwen3moe-f32"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->top_k, 2);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->weight_dtype, DType::kF32);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ModelConfig, TransformersV5Style) {
  auto c = LoadModelConfig(testing::TestData("qwen3moe-bf16"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts, 6);  // from num_local_experts
  EXPECT_DOUBLE_EQ(c->rope_theta, 1000000.0);  // from rope_parameters
  EXPECT_EQ(c->weight_dtype, DType::kBF16);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->IsMoeLayer(1));  // mlp_only_layers
  EXPECT_TRUE(c->IsMoeLayer(2));
  auto g = LoadGenerationConfig(testing::TestData("qwen3moe-bf16"));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->eos_token_ids, (std::vector<int>{1001, 1002}));
}

TEST(ModelConfig, Qwen3NextLayerKindsFromIntervalOrLayerTypes) {
  auto hub = LoadModelConfig(testing::TestData("qwen3next-f32"));  // full_attention_interval only
  ASSERT_TRUE(hub.ok()) << hub.status();
  auto v5 = LoadModelConfig(testing::TestData("qwen3next-bf16"));  // layer_types + rope_parameters
  ASSERT_TRUE(v5.ok()) << v5.status();
  for (const ModelConfig* c : {&*hub, &*v5}) {
    EXPECT_EQ(c->architecture, Architecture::kQwen3Next);
    ASSERT_EQ(c->layer_kinds.size(), 8u);
    for (int l = 0; l < 8; ++l) {
      EXPECT_EQ(c->layer_kinds[l], (l + 1) % 4 == 0 ? LayerKind::kFullAttention : LayerKind::kLinearAttention);
    }
    EXPECT_EQ(c->RotaryDim(), 8);  // head_dim 32 x partial_rotary_factor 0.25
    EXPECT_EQ(c->linear_num_value_heads, 4);
    EXPECT_EQ(c->linear_value_head_dim, 24);
    EXPECT_EQ(c->shared_expert_intermediate_size, 48);
  }
  auto j = testing::ReadJson(testing::TestData("qwen3next-bf16/config.json"));
  j["layer_types"][0] = "sliding_attention";
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
  j["layer_types"] = {"linear_attention"};  // wrong length
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
}

TEST(ModelConfig, MissingKeyIsNamed) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_experts", "vocab_size",
                          "num_experts_per_tok", "moe_intermediate_size", "max_position_embeddings"}) {
    auto j = HubConfig();
    j.erase(key);
    auto c = ParseModelConfig(j.dump(), "m/config.json");
    ASSERT_FALSE(c.ok()) << key;
    EXPECT_NE(c.status().message().find(std::string("m/config.json: missing key '") + key), std::string_view::npos)
        << c.status();
  }
}

TEST(ModelConfig, UnsupportedArchitecture) {
  auto j = HubConfig();
  j["architectures"] = {"LlamaForCausalLM"};
  auto c = ParseModelConfig(j.dump(), "m/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("unsupported architecture 'LlamaForCausalLM'"), std::string_view::npos);
}

TEST(ModelConfig, BadValues) {
  auto j = HubConfig();
  j["num_attention_heads"] = 3;  // not a multiple of num_key_value_heads = 2
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
  j = HubConfig();
  j["hidden_size"] = "64";
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
  j = HubConfig();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
  j = HubConfig();
  j["num_experts_per_tok"] = 100;
  EXPECT_FALSE(ParseModelConfig(j.dump(), "x").ok());
  EXPECT_FALSE(ParseModelConfig("{not json", "x").ok());
}

}  // namespace
}  // namespace pinmoe
