// What every GPU model shares: weights in device memory (checkpoint dtype, or seeded synthetic ones),
// one stream, the embedding, the final norm and lm_head with the arg-max or the sampler's top-k
// candidates taken on the device, the activations of a step, and the step itself: a prompt runs in
// chunks of at most max_tokens() of the expert backend, and decode steps (one token) replay a CUDA
// graph captured on first use (one per backend variant, output kind, sequence and batch), so the host
// enqueues one launch per token.
//
// A model holds max_batch sequences, each with its own position, KV caches and recurrent state:
// Forward and friends extend the selected one (SelectSequence; 0 unless changed), and DecodeBatch
// advances sequences 0..B-1 by one token each in one forward pass (the linear layers, router and
// experts see B tokens; attention and DeltaNet keep each to its own sequence). Each architecture
// supplies its layers (EnqueueLayers) and its recurrent state, if any (ResetState).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "coordinator/attention_form.h"
#include "coordinator/causal_lm.h"
#include "coordinator/gpu/delta_net.h"
#include "coordinator/gpu/dense_kernels.h"
#include "coordinator/gpu/device_weights.h"
#include "coordinator/gpu/gpu_experts.h"
#include "coordinator/gpu/linear.h"
#include "coordinator/kv_cache_dtype.h"
#include "common/status.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {

struct GpuModelOptions {
  int device = 0;
  int max_context = 0;              // 0: the config's max_position_embeddings
  uint64_t synthetic_seed = 0;      // non-zero: seeded synthetic weights, no checkpoint
  uint32_t max_step_tokens = 2048;  // activations are sized for this many tokens per step
  int max_batch = 1;                // sequences with their own caches (DecodeBatch); <= max_step_tokens
  // Decode steps replay a captured CUDA graph (one launch instead of ~500); off: launch each kernel.
  bool graphs = true;
  // Qwen3-Next's DeltaNet form (auto: chunked for prompt-sized steps; the others for comparisons).
  DeltaForm delta_form = DeltaForm::kAuto;
  // The KV cache's elements (auto: bf16 for bf16 weights, as the config's dtype says; else fp32).
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kAuto;
};

// An error naming the flag and the remedy when `device` is not a usable CUDA device here.
absl::Status CheckCudaDevice(int device);

class GpuCausalLm : public CausalLm {
 public:
  ~GpuCausalLm() override;
  // Not owned; must outlive the model's use. Its max_tokens() bounds the tokens per step. Where it offers
  // a residual and routing weights (GpuExperts::Buffers), the model uses those as its own.
  void set_experts(GpuExperts* experts);

  absl::Status Forward(std::span<const int32_t> ids, std::vector<float>* last_logits) override;
  // Forward without copying logits to the host: the arg-max is taken on the device.
  absl::StatusOr<int32_t> ForwardGreedy(std::span<const int32_t> ids);
  absl::StatusOr<int32_t> ForwardArgMax(std::span<const int32_t> ids) override { return ForwardGreedy(ids); }
  // The top k (<= kDeviceTopKMax) selected on the device: k keys come back instead of the logits.
  absl::Status ForwardTopK(std::span<const int32_t> ids, int k, std::vector<Candidate>* top) override;
  // Forgets every sequence (caches back to empty) and selects sequence 0.
  void Reset() override;
  // Withdraws the step that a decode step's experts were sent ahead for (GpuExperts::SendAhead).
  absl::Status Settle() override { return experts_ != nullptr ? experts_->Settle() : absl::OkStatus(); }
  int position() const override { return positions_[seq_]; }
  // Which sequence Forward, ForwardGreedy and ForwardTopK extend: 0 <= s < max_batch().
  absl::Status SelectSequence(int s);
  int max_batch() const { return options_.max_batch; }
  int sequence_position(int s) const { return positions_[s]; }
  // One decode step of sequences 0..B-1 (B = ids.size() <= max_batch()), ids[b] appended to sequence b
  // at its own position; argmax[b] is the greedy next token of sequence b, and `logits`, when not null,
  // receives [B, vocab]. Replays a CUDA graph per B after the first step.
  absl::Status DecodeBatch(std::span<const int32_t> ids, std::vector<int32_t>* argmax, std::vector<float>* logits);
  int max_context() const override { return max_context_; }
  KvCacheDtype kv_cache_dtype() const { return kv_cache_dtype_; }  // resolved
  const ModelConfig& config() const override { return config_; }
  uint64_t weight_bytes() const { return weights_->bytes(); }
  // The decode attention's form: 0 one block per head, else the most blocks per head (per-head split
  // form) or per column of query heads (grouped split form); grouped mode -1: by the step's context
  // (gpu_causal_lm.cc), 0: never, 1: always.
  int attention_splits() const { return attn_splits_; }
  int attention_grouped_mode() const { return attn_grouped_mode_; }
  // The host clock when the last step's work was enqueued (its graph launched): the bench's timeline.
  std::chrono::steady_clock::time_point last_launch() const { return last_launch_; }

 protected:
  GpuCausalLm() = default;
  // Weights source, stream, embedding / final norm (plus norm_add) / lm_head, the shared activations.
  absl::Status InitCommon(const ModelConfig& config, Checkpoint* checkpoint, const GpuModelOptions& options,
                          float final_norm_add);
  // Everything between the embedding (x_ holds it) and the final norm: `n` tokens of sequence seq_ at
  // its position (also in position_dev_[0] for graph replays) when batch_ is 1, else n == batch_ tokens,
  // token b of sequence b at position_dev_[b]. Per-sequence state goes through SeqOffset.
  virtual absl::Status EnqueueLayers(int n, int variant) = 0;
  // Zeroes every sequence's recurrent state beyond the KV caches (positions are reset by Reset).
  virtual absl::Status ResetState() { return absl::OkStatus(); }

  // Device scratch of `count` elements of T (zeroed), owned by the weights.
  template <typename T>
  absl::Status Alloc(size_t count, T** dst) {
    ASSIGN_OR_RETURN(void* p, weights_->Scratch(std::max<size_t>(count, 1) * sizeof(T)));
    *dst = static_cast<T*>(p);
    return absl::OkStatus();
  }
  // One attention layer's K or V cache for every sequence (cache_elems_ each, in the cache's dtype).
  absl::Status AllocCache(void** dst) {
    return Alloc(cache_elems_ * options_.max_batch * KvCacheElementBytes(kv_cache_dtype_),
                 reinterpret_cast<uint8_t**>(dst));
  }
  // Where the step's state of one layer starts, for per-sequence blocks of `per_sequence` elements:
  // seq_'s block, or sequence 0's in a batched step (the kernels step per sequence from there).
  size_t SeqOffset(size_t per_sequence) const { return batch_ > 1 ? 0 : static_cast<size_t>(seq_) * per_sequence; }
  // The layout of a fused q/k/v projection's rows [q heads | k heads | v heads] in `qkv`, for the
  // attention core; with gated_query each query head is followed by its gate (Qwen3-Next). The caches
  // are the layer's (sequence 0 first, cache_elems_ per sequence).
  QkNormRopeCacheArgs FusedQkvLayout(const float* qkv, bool gated_query, const float* q_norm, const float* k_norm,
                                     float* q_out, void* k_cache, void* v_cache) const;
  // q/k norm + RoPE + cache append, then attention (tensor cores for bf16 prefill), into attn_out.
  absl::Status EnqueueAttention(const QkNormRopeCacheArgs& layout, int n, bool bf16_model, float* attn_out);
  // A dense SwiGLU layer's weights (mlp.gate_proj / up_proj fused by rows, mlp.down_proj) of `layer`.
  absl::Status LoadDenseMlp(int layer, DeviceMatrix* gate_up, DeviceMatrix* down);
  // A dense SwiGLU layer on x_: x += down(silu(gate) * up) of norm(x), gate_up fused by rows
  // [gate; up] ([2 inter, hidden]); scratch gate_up [n, 2 inter], act [n, inter].
  absl::Status EnqueueDenseMlp(const DeviceMatrix& gate_up, const DeviceMatrix& down, const float* post_norm,
                               int inter, int n, float* gate_up_out, float* act);
  // The routed half of an MoE layer on x_: router (with the post-attention norm fused; the normalised
  // rows land in the experts' input), softmax top-k, the experts (`between` is enqueued while they run
  // elsewhere), and x += sum of weights * slots.
  template <typename Between>
  absl::Status EnqueueRoutedMoe(int layer, const DeviceMatrix& router, const float* post_norm, int n, int variant,
                                Between between);

  ModelConfig config_;
  GpuModelOptions options_;
  int max_context_ = 0;
  std::vector<int> positions_;  // [max_batch]
  int seq_ = 0;                 // the sequence of single-sequence steps
  int batch_ = 1;               // sequences in the step being enqueued (> 1: DecodeBatch)
  size_t cache_elems_ = 0;      // one sequence's K (or V) cache of one attention layer
  KvCacheDtype kv_cache_dtype_ = KvCacheDtype::kF32;  // resolved (never kAuto)
  GpuExperts* experts_ = nullptr;
  std::unique_ptr<DeviceWeights> weights_;
  std::unique_ptr<LinearRunner> linear_;
  cudaStream_t stream_ = nullptr;
  DeviceMatrix embed_, lm_head_;
  float* final_norm_ = nullptr;
  float* inv_freq_ = nullptr;   // [rotary_dim / 2]
  // Shared activations, sized for max_step_tokens.
  int32_t* ids_dev_ = nullptr;
  float* x_ = nullptr;              // [t, hidden]: the residual stream
  float* router_logits_ = nullptr;  // [t, experts]
  float* route_weights_ = nullptr;  // [t, top_k]
  float* own_x_ = nullptr;              // the model's own, in use unless the experts offer theirs
  float* own_route_weights_ = nullptr;
  int32_t* position_dev_ = nullptr;  // [max_batch]
  unsigned int* router_blocks_done_ = nullptr;  // the fused router top-k's block counter

 private:
  // What a step leaves on the host: the logits, their arg-max, or their top top_k_ keys.
  enum class Output { kLogits = 0, kArgMax = 1, kTopK = 2 };
  absl::Status CheckIds(std::span<const int32_t> ids) const;
  // Runs ids in steps of at most max_tokens(); the last step produces `output`.
  absl::Status Run(std::span<const int32_t> ids, Output output);
  absl::Status CheckVocabulary(std::span<const int32_t> ids) const;
  absl::Status Step(const int32_t* ids, int n, Output output, bool want_output);
  // Stages the ids and the positions (the selected sequence's, or sequences 0..batch-1 for a batched
  // step of one token each), runs the step and waits for it; positions are the caller's to advance.
  absl::Status Submit(std::span<const int32_t> ids, int batch, Output output, bool want_output);
  // Enqueues the step (ids and positions already on the device), as a graph replay where it can be one.
  absl::Status Launch(int n, Output output, bool want_output, int variant);
  absl::Status EnqueueStep(int n, Output output, bool want_output, int variant);

  cudaEvent_t step_done_ = nullptr;
  float* last_h_ = nullptr;   // [max_batch, hidden]
  float* logits_ = nullptr;   // [max_batch, vocab]
  int32_t* argmax_ = nullptr;  // [max_batch]
  std::vector<ArgMaxScratch> argmax_scratch_;  // one per row
  unsigned long long* topk_partial_ = nullptr;  // [TopKPartialKeys(vocab)]
  // The decode attention's splits per head (QkNormRopeCacheArgs::splits) and their scratch.
  int attn_splits_ = 0;
  int attn_grouped_mode_ = 0;
  bool attn_tensor_cores_ = true;  // PINMOE_ATTN_TENSOR_CORES
  bool attn_prefetch_ = true;      // PINMOE_ATTN_PREFETCH
  bool router_cluster_ = true;     // PINMOE_ROUTER_CLUSTER (GemvTopK::one_cluster)
  // A decode step sends its experts the next step ahead (GpuExperts::SendAhead): PINMOE_STEP_AHEAD=1.
  bool step_ahead_ = false;
  std::chrono::steady_clock::time_point last_launch_;
  // This step's form, chosen in Submit (the decode graphs are keyed by it).
  AttentionForm step_attn_;
  float* attn_partials_ = nullptr;
  unsigned int* attn_counters_ = nullptr;
  unsigned long long* topk_keys_ = nullptr;     // [kDeviceTopKMax]
  int top_k_ = 0;                               // the k of Output::kTopK
  // Decode graphs, captured on first use.
  struct GraphKey {
    int variant, output, seq, batch, top_k;
    bool grouped_attention;
    int attention_splits;  // the form's grid follows them
    bool operator<(const GraphKey& o) const {
      return std::tie(variant, output, seq, batch, top_k, grouped_attention, attention_splits) <
             std::tie(o.variant, o.output, o.seq, o.batch, o.top_k, o.grouped_attention, o.attention_splits);
    }
  };
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  // Pinned host staging.
  int32_t* ids_host_ = nullptr;
  int32_t* position_host_ = nullptr;  // [max_batch]
  float* logits_host_ = nullptr;      // [max_batch, vocab]
  int32_t* argmax_host_ = nullptr;    // [max_batch]
  unsigned long long* topk_host_ = nullptr;
};

template <typename Between>
absl::Status GpuCausalLm::EnqueueRoutedMoe(int layer, const DeviceMatrix& router, const float* post_norm, int n,
                                           int variant, Between between) {
  const GpuExperts::Buffers moe = experts_->buffers();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  ASSIGN_OR_RETURN(const GpuExperts::RouterStores stores, experts_->InputsReady(layer, variant));
  const GemvTopK topk{config_.top_k,       config_.norm_topk_prob, moe.routing, route_weights_,
                      router_blocks_done_, stores.ready,           stores.soon, router_cluster_};
  RETURN_IF_ERROR(linear_->RunRouter(router, x_, GemvNorm{post_norm, eps, moe.input}, n, router_logits_, topk));
  RETURN_IF_ERROR(experts_->StartLayer(layer, static_cast<uint32_t>(n), stream_, variant));
  RETURN_IF_ERROR(between());
  RETURN_IF_ERROR(experts_->FinishLayer(layer, stream_, variant));
  if (experts_->Combines(layer, static_cast<uint32_t>(n))) return absl::OkStatus();  // done by the experts
  return CudaStatus(LaunchMoeCombine(moe.slots, route_weights_, n, config_.top_k, config_.hidden_size, x_, stream_),
                    "combine launch");
}

}  // namespace pinmoe
