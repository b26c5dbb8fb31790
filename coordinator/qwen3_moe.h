// Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): the coordinator's dense part on CPU in fp32 — embeddings,
// RMSNorm, attention with q/k norms and RoPE, routers, dense MLP layers, lm_head — with the routed
// experts computed wherever the ExpertBackend sends them.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/causal_lm.h"
#include "coordinator/expert_backend.h"
#include "coordinator/layers.h"

namespace pinmoe {

// Every tensor name the config implies is in the checkpoint and nothing else is (a tied lm_head.weight
// is tolerated), and the experts have their shapes. Shared by the CPU and GPU models.
absl::Status CheckQwen3MoeCheckpoint(const ModelConfig& config, Checkpoint& checkpoint);

class Qwen3MoeModel : public CausalLm {
 public:
  // Checks every tensor name in the checkpoint against the config (missing or unexpected tensors are
  // errors), reads the dense weights, and leaves the experts to the backend set with set_experts.
  static absl::StatusOr<std::unique_ptr<Qwen3MoeModel>> Load(const ModelConfig& config,
                                                             Checkpoint& checkpoint, int max_context);
  // Not owned; must outlive the model's use.
  void set_experts(ExpertBackend* experts) { experts_ = experts; }

  absl::Status Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) override;
  void Reset() override;
  int position() const override { return position_; }
  int max_context() const override { return max_context_; }
  const ModelConfig& config() const override { return config_; }

 private:
  struct Layer {
    std::vector<float> input_norm;   // [hidden]
    std::vector<float> post_norm;    // [hidden]
    std::vector<float> q_proj;       // [heads * head_dim, hidden]
    std::vector<float> k_proj;       // [kv_heads * head_dim, hidden]
    std::vector<float> v_proj;       // [kv_heads * head_dim, hidden]
    std::vector<float> o_proj;       // [hidden, heads * head_dim]
    std::vector<float> q_norm;       // [head_dim]
    std::vector<float> k_norm;       // [head_dim]
    bool moe = false;
    std::vector<float> router;       // [experts, hidden] (MoE layers)
    std::vector<float> mlp_gate;     // [intermediate, hidden] (dense layers)
    std::vector<float> mlp_up;       // [intermediate, hidden]
    std::vector<float> mlp_down;     // [hidden, intermediate]
    KvCache cache;
  };
  Qwen3MoeModel(const ModelConfig& config, int max_context)
      : config_(config),
        max_context_(max_context),
        rope_(config.head_dim, config.RotaryDim(), config.rope_theta) {}

  absl::Status Attention(Layer& layer, const float* h, int tokens, float* out);

  ModelConfig config_;
  ExpertBackend* experts_ = nullptr;
  int max_context_;
  Rope rope_;
  std::vector<float> embed_;    // [vocab, hidden]
  std::vector<float> norm_;     // [hidden]
  std::vector<float> lm_head_;  // [vocab, hidden]; empty when tied to embed_
  std::vector<Layer> layers_;
  int position_ = 0;
};

}  // namespace pinmoe
