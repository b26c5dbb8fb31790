// config.json of a hub model directory, in the hub's style (num_experts, top-level rope_theta) or in
// transformers 5's (num_local_experts, rope_parameters), reduced to the fields pinmoe uses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace pinmoe {

enum class Architecture { kQwen3Moe, kQwen3Next };

// The token mixer of a layer (Qwen3-Next alternates them; Qwen3-MoE has full attention only).
enum class LayerKind { kFullAttention, kLinearAttention };

struct ModelConfig {
  Architecture architecture = Architecture::kQwen3Moe;
  std::string architecture_name;  // as written in config.json
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_experts = 0;
  int top_k = 0;                  // num_experts_per_tok
  int moe_intermediate_size = 0;  // per routed expert
  int intermediate_size = 0;      // dense MLP layers (mlp_only_layers)
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;
  bool norm_topk_prob = false;
  bool tie_word_embeddings = false;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  int max_position_embeddings = 0;
  DType weight_dtype = DType::kBF16;  // torch_dtype / dtype
  double partial_rotary_factor = 1.0;  // RoPE rotates the first head_dim * factor dimensions
  std::vector<LayerKind> layer_kinds;  // [num_layers]

  // Qwen3-Next only: Gated DeltaNet shapes and the shared expert.
  int linear_num_key_heads = 0;
  int linear_num_value_heads = 0;
  int linear_key_head_dim = 0;
  int linear_value_head_dim = 0;
  int linear_conv_kernel_dim = 0;
  int shared_expert_intermediate_size = 0;

  bool IsMoeLayer(int layer) const;
  int RotaryDim() const { return static_cast<int>(head_dim * partial_rotary_factor); }
  // Bytes of one routed expert's three projections in weight_dtype.
  uint64_t ExpertBytes() const;
};

// `label` names the source (the file path) in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view label);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// generation_config.json: end-of-sequence ids (a number or a list) and the model's sampling defaults.
// Every field is optional; a missing file gives an empty config.
struct GenerationConfig {
  std::vector<int> eos_token_ids;
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<int> top_k;
  std::optional<double> top_p;
};
absl::StatusOr<GenerationConfig> ParseGenerationConfig(std::string_view json_text,
                                                       std::string_view label);
absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir);

}  // namespace pinmoe
