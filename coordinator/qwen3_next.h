// Qwen3-Next (Qwen3-Next-80B-A3B): layers alternate Gated DeltaNet (linear attention with a recurrent
// state) and gated full attention, 3:1; every layer's MoE has routed experts (in the workers) plus one
// shared expert scaled by sigmoid(shared_expert_gate) (in the coordinator). Norms are zero-centred
// (weight applied as 1 + w), except the gated RMSNorm inside DeltaNet.
//
// The recurrence (GatedDeltaRule, coordinator/layers.h) runs token by token, also in prefill; the conv
// and recurrent states carry across calls, so decoding after a prefill equals feeding the prompt one
// token at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/causal_lm.h"
#include "coordinator/expert_backend.h"
#include "coordinator/layers.h"

namespace pinmoe {

// The layer kinds agree with the tensors, every name the config implies is there and nothing else is
// (mtp.* tensors are accepted and counted: the result), and the experts have their shapes. Shared by the
// CPU and GPU models.
absl::StatusOr<int> CheckQwen3NextCheckpoint(const ModelConfig& config, Checkpoint& checkpoint);

class Qwen3NextModel : public CausalLm {
 public:
  // Checks every tensor name against the config (layer kinds included), accepts and counts mtp.*
  // tensors without reading them, and reads the dense weights.
  static absl::StatusOr<std::unique_ptr<Qwen3NextModel>> Load(const ModelConfig& config,
                                                              Checkpoint& checkpoint, int max_context);
  void set_experts(ExpertBackend* experts) { experts_ = experts; }
  // Load notes for the user (e.g. ignored multi-token-prediction tensors).
  const std::vector<std::string>& notes() const { return notes_; }

  absl::Status Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) override;
  void Reset() override;
  int position() const override { return position_; }
  int max_context() const override { return max_context_; }
  const ModelConfig& config() const override { return config_; }

 private:
  struct FullAttention {
    std::vector<float> q_proj;  // [heads * head_dim * 2, hidden]: per head, query then gate
    std::vector<float> k_proj;  // [kv_heads * head_dim, hidden]
    std::vector<float> v_proj;  // [kv_heads * head_dim, hidden]
    std::vector<float> o_proj;  // [hidden, heads * head_dim]
    std::vector<float> q_norm;  // [head_dim], stored as 1 + w
    std::vector<float> k_norm;  // [head_dim], stored as 1 + w
    KvCache cache;
  };
  struct DeltaNet {
    std::vector<float> in_proj_qkvz;  // [2 * key_dim + 2 * value_dim, hidden], grouped per key head
    std::vector<float> in_proj_ba;    // [2 * v_heads, hidden], grouped per key head
    std::vector<float> conv;          // [conv_dim, kernel]
    std::vector<float> dt_bias;       // [v_heads]
    std::vector<float> a_log;         // [v_heads]
    std::vector<float> norm;          // [v_head_dim], used as is
    std::vector<float> out_proj;      // [hidden, value_dim]
    std::vector<float> conv_state;    // [kernel - 1, conv_dim]: the last inputs, oldest first
    std::vector<float> state;         // [v_heads, k_head_dim, v_head_dim]
  };
  struct Layer {
    LayerKind kind;
    std::vector<float> input_norm;  // [hidden], 1 + w
    std::vector<float> post_norm;   // [hidden], 1 + w
    FullAttention attn;
    DeltaNet delta;
    bool moe = false;
    std::vector<float> router;         // [experts, hidden]
    std::vector<float> shared_gate;    // [shared_inter, hidden] (or the dense MLP's)
    std::vector<float> shared_up;      // [shared_inter, hidden]
    std::vector<float> shared_down;    // [hidden, shared_inter]
    std::vector<float> shared_scale;   // [1, hidden]: shared_expert_gate
  };
  Qwen3NextModel(const ModelConfig& config, int max_context)
      : config_(config), max_context_(max_context),
        rope_(config.head_dim, config.RotaryDim(), config.rope_theta) {}

  void Attention(FullAttention& a, const float* h, int tokens, float* out);
  void GatedDeltaNet(DeltaNet& d, const float* h, int tokens, float* out);
  absl::Status Mlp(int index, Layer& layer, const float* h, int tokens, float* out);

  ModelConfig config_;
  ExpertBackend* experts_ = nullptr;
  int max_context_;
  Rope rope_;
  std::vector<float> embed_;    // [vocab, hidden]
  std::vector<float> norm_;     // [hidden], 1 + w
  std::vector<float> lm_head_;  // [vocab, hidden]; empty when tied
  std::vector<Layer> layers_;
  std::vector<std::string> notes_;
  int position_ = 0;
};

}  // namespace pinmoe
