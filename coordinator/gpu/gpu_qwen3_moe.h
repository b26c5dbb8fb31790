// Qwen3-MoE with its dense part on a GPU: embeddings, RMSNorm, fused q/k/v projection, per-head q/k
// norm + RoPE into a KV cache in device memory, causal attention, routers with softmax top-k on the
// device, dense SwiGLU layers, lm_head and greedy arg-max. Weights stay in the checkpoint's dtype (bf16
// or fp32), activations and accumulation are fp32. The routed experts run wherever the GpuExperts
// backend puts them, ordered on the same stream; the host only enqueues and, once per step, waits.
//
// A prompt longer than the backend's max_tokens() runs as several steps (chunked prefill).
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/causal_lm.h"
#include "coordinator/gpu/dense_kernels.h"
#include "coordinator/gpu/device_weights.h"
#include "coordinator/gpu/gpu_experts.h"
#include "coordinator/gpu/linear.h"

namespace pinmoe {

struct GpuModelOptions {
  int device = 0;
  int max_context = 0;          // 0: the config's max_position_embeddings
  uint64_t synthetic_seed = 0;  // non-zero: seeded synthetic weights, no checkpoint
  uint32_t max_step_tokens = 2048;  // activations are sized for this many tokens per step
  // Decode steps replay a captured CUDA graph (one launch instead of ~500); off: launch each kernel.
  bool graphs = true;
};

class GpuQwen3Moe : public CausalLm {
 public:
  // `checkpoint` may be null for synthetic weights; it is only read during Load.
  static absl::StatusOr<std::unique_ptr<GpuQwen3Moe>> Load(const ModelConfig& config, Checkpoint* checkpoint,
                                                           const GpuModelOptions& options);
  ~GpuQwen3Moe() override;
  // Not owned; must outlive the model's use. Its max_tokens() bounds the tokens per step.
  void set_experts(GpuExperts* experts) { experts_ = experts; }

  absl::Status Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) override;
  // Forward without copying logits to the host: the arg-max is taken on the device.
  absl::StatusOr<int32_t> ForwardGreedy(std::span<const int32_t> ids);
  void Reset() override { position_ = 0; }
  int position() const override { return position_; }
  int max_context() const override { return max_context_; }
  const ModelConfig& config() const override { return config_; }
  uint64_t weight_bytes() const { return weights_->bytes(); }

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
    float* k_cache = nullptr;     // [max_context, kv_heads, head_dim]
    float* v_cache = nullptr;
  };
  GpuQwen3Moe() = default;
  absl::Status CheckIds(std::span<const int32_t> ids) const;
  // One step of `n` tokens; the last token's logits land in logits_ (device), then either the arg-max
  // (greedy) or the logits are copied to the pinned host buffer.
  absl::Status Step(const int32_t* ids, int n, bool greedy, bool want_output);
  // The step's device work, enqueued on stream_ (or captured into a graph): everything between the
  // experts' BeginStep and FinishStep.
  absl::Status EnqueueStep(int n, bool greedy, bool want_output, int variant);

  ModelConfig config_;
  GpuModelOptions options_;
  int max_context_ = 0;
  int position_ = 0;
  GpuExperts* experts_ = nullptr;
  std::unique_ptr<DeviceWeights> weights_;
  std::unique_ptr<LinearRunner> linear_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t step_done_ = nullptr;
  DeviceMatrix embed_, lm_head_;
  float* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;
  std::vector<Layer> layers_;
  // Activations, sized for max_step_tokens.
  int32_t* ids_dev_ = nullptr;
  float *x_ = nullptr, *h_ = nullptr, *qkv_ = nullptr, *q_ = nullptr, *attn_ = nullptr;
  float *router_logits_ = nullptr, *route_weights_ = nullptr, *gate_up_ = nullptr, *act_ = nullptr;
  float *last_h_ = nullptr, *logits_ = nullptr;
  int32_t* argmax_ = nullptr;
  ArgMaxScratch argmax_scratch_;
  int32_t* position_dev_ = nullptr;  // the step's first position, read by the kernels (graphs replay it)
  // Decode graphs by [experts' variant][greedy]; null until first used.
  cudaGraphExec_t graphs_[2][2] = {{nullptr, nullptr}, {nullptr, nullptr}};
  // Pinned host staging.
  int32_t* position_host_ = nullptr;
  int32_t* ids_host_ = nullptr;
  float* logits_host_ = nullptr;
  int32_t* argmax_host_ = nullptr;
};

}  // namespace pinmoe
