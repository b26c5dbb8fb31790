// Qwen3-Next with its dense part on a GPU: Gated DeltaNet layers (fused qkvz/ba projection with the
// input norm, causal conv, the delta-rule recurrence and gated RMSNorm on the device, states kept in
// device memory) and gated full attention (fused q+gate/k/v projection, per-head norm and partial RoPE
// into the KV cache, attention, sigmoid output gate), 3:1; each MoE layer's routed experts go to the
// GpuExperts backend while the shared expert (with its sigmoid gate as one more row of the fused
// gate/up matrix) runs here in the meantime. Zero-centred norms are stored as 1 + w.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "coordinator/gpu/delta_net.h"
#include "coordinator/gpu/gpu_causal_lm.h"

namespace pinmoe {

class GpuQwen3Next : public GpuCausalLm {
 public:
  // `checkpoint` may be null for synthetic weights; it is only read during Load.
  static absl::StatusOr<std::unique_ptr<GpuQwen3Next>> Load(const ModelConfig& config, Checkpoint* checkpoint,
                                                            const GpuModelOptions& options);
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  struct Layer {
    LayerKind kind;
    float* input_norm = nullptr;  // [hidden], 1 + w
    float* post_norm = nullptr;   // [hidden], 1 + w
    // Full attention.
    DeviceMatrix qkv;             // [2 heads head_dim + 2 kv_heads head_dim, hidden]: per head query|gate, k, v
    DeviceMatrix o;               // [hidden, heads * head_dim]
    float* q_norm = nullptr;      // [head_dim], 1 + w
    float* k_norm = nullptr;
    void* k_cache = nullptr;      // [max_batch][max_context, kv_heads, head_dim] in the cache's dtype
    void* v_cache = nullptr;
    // Gated DeltaNet.
    DeviceMatrix in_proj;         // [qkvz_dim + 2 v_heads, hidden]
    DeviceMatrix out_proj;        // [hidden, value_dim]
    float* conv_w = nullptr;      // [conv_dim, kernel]
    float* a_log = nullptr;       // [v_heads]
    float* dt_bias = nullptr;     // [v_heads]
    float* delta_norm = nullptr;  // [v_head_dim], as is
    float* conv_state = nullptr;  // [kernel - 1, conv_dim]
    float* state = nullptr;       // [v_heads, k_head_dim, v_head_dim]
    // MLP.
    bool moe = false;
    DeviceMatrix router;          // [experts, hidden]
    DeviceMatrix gate_up;         // [2 inter (+ 1 for the shared expert's gate), hidden]
    DeviceMatrix down;            // [hidden, inter]
  };
  GpuQwen3Next() = default;
  absl::Status EnqueueLayers(int n, int variant) override;
  absl::Status ResetState() override;

  std::vector<Layer> layers_;
  std::vector<std::string> notes_;
  size_t conv_state_floats_ = 0, state_floats_ = 0;
  float *qkv_ = nullptr, *q_ = nullptr, *attn_ = nullptr, *proj_ = nullptr, *conv_out_ = nullptr, *core_ = nullptr;
  float *gate_up_ = nullptr, *act_ = nullptr, *mlp_out_ = nullptr;
};

}  // namespace pinmoe
