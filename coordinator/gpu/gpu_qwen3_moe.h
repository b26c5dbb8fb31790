// Qwen3-MoE with its dense part on a GPU: per layer an RMSNorm fused into the q/k/v projection, per-head
// q/k norm + RoPE into the KV cache, attention, o_proj added to the residual, then the router (norm fused)
// with softmax top-k on the device and the routed experts wherever the GpuExperts backend runs them
// (or, in mlp_only layers, a dense SwiGLU). Weights stay in the checkpoint's dtype (bf16 or fp32),
// activations and accumulation are fp32 (bf16 on tensor cores in prefill GEMMs of bf16 models).
#pragma once

#include <memory>
#include <vector>

#include "coordinator/gpu/gpu_causal_lm.h"

namespace pinmoe {

class GpuQwen3Moe : public GpuCausalLm {
 public:
  // `checkpoint` may be null for synthetic weights; it is only read during Load.
  static absl::StatusOr<std::unique_ptr<GpuQwen3Moe>> Load(const ModelConfig& config, Checkpoint* checkpoint,
                                                           const GpuModelOptions& options);

 private:
  struct Layer {
    float* input_norm = nullptr;  // [hidden]
    float* post_norm = nullptr;   // [hidden]
    DeviceMatrix qkv;             // [(heads + 2 kv_heads) * head_dim, hidden]
    DeviceMatrix o;               // [hidden, heads * head_dim]
    float* q_norm = nullptr;      // [head_dim]
    float* k_norm = nullptr;      // [head_dim]
    bool moe = false;
    DeviceMatrix router;          // [experts, hidden]
    DeviceMatrix gate_up;         // [2 * intermediate, hidden] (dense layers)
    DeviceMatrix down;            // [hidden, intermediate]
    void* k_cache = nullptr;      // [max_batch][max_context, kv_heads, head_dim] in the cache's dtype
    void* v_cache = nullptr;
  };
  GpuQwen3Moe() = default;
  absl::Status EnqueueLayers(int n, int variant) override;

  std::vector<Layer> layers_;
  float *qkv_ = nullptr, *q_ = nullptr, *attn_ = nullptr, *gate_up_ = nullptr, *act_ = nullptr;
};

}  // namespace pinmoe
