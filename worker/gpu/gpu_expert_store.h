// The routed experts a GPU worker (or the coordinator, for in-process experts) owns, resident in device
// memory in the checkpoint's dtype (bf16, or fp32 for the reference checkpoints; f16 is widened to fp32)
// or drawn synthetically, and the FFNs over them: the decode kernels, or the grouped tensor-core kernels
// for prefill-sized batches (bf16).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "worker/expert_store.h"
#include "worker/gpu/expert_ffn.h"

namespace pinmoe {

// From this many tokens per call on, bf16 experts run grouped on tensor cores (each expert's weights read
// once per tile of pairs); below it, the decode kernels (fp32 activations; a batch's pairs sorted by
// expert, so that shared rows come from the caches). Measured on the H200 for the Qwen3-30B-A3B expert
// shape (gpu_expert_ffn_bench --experts 128): 32 tokens 577 us a layer against 934 grouped, 64 tokens
// 1,142 against 999.
constexpr uint32_t kGroupedMinTokens = 64;

// Where a one-token layer's weighted expert outputs are added (GpuExpertStore::Enqueue).
struct ExpertCombine {
  float* residual = nullptr;       // [hidden]
  const float* weights = nullptr;  // [top_k]
};

class GpuExpertStore {
 public:
  static absl::StatusOr<std::unique_ptr<GpuExpertStore>> Load(const ModelConfig& config, Checkpoint& checkpoint,
                                                              const std::vector<LayerExpertSet>& assignment,
                                                              int device);
  // Full-size experts without a checkpoint: bf16 values drawn on the device from `seed` (each expert's
  // values depend only on the seed, its layer and its index, so any split across workers holds the same
  // weights). For benchmarks.
  static absl::StatusOr<std::unique_ptr<GpuExpertStore>> Synthetic(const ModelConfig& config,
                                                                   const std::vector<LayerExpertSet>& assignment,
                                                                   int device, uint64_t seed);
  ~GpuExpertStore();

  // Sizes the scratch for up to `max_tokens` tokens per call, so that Enqueue never allocates; `grouped`
  // false leaves out the grouped kernels' scratch (for Enqueue with allow_grouped false only).
  absl::Status Reserve(uint32_t max_tokens, uint32_t top_k, bool grouped = true);
  // Enqueues the layer's expert FFNs on `stream` without waiting: pairs whose expert is not here (or whose
  // id is out of range) are skipped. Needs Reserve(tokens) first.
  // `allow_grouped`: false keeps fp32 activations at any batch size (the CPU coordinator's per-layer
  // Work, which is held to the fp32 references). `after`, when it names a counter, is stored once the
  // layer's outputs are written (also when nothing of the layer is here): a hand-over to another process.
  // `before`, when it names a counter, is waited for before x and routing are read: by the decode
  // kernels' blocks themselves (CounterWait; the stream's earlier gate lets them in early), else by a
  // gate enqueued first. Only where KernelWaitsCounters() (stream_sync.h).
  // `combine`, when it names a residual: one token whose every expert of the layer is here; the down
  // kernel also adds the token's weighted slots to the residual (ExpertFfnArgs::residual), so that no
  // combine kernel has to follow.
  absl::Status Enqueue(int layer, const float* x, uint32_t tokens, uint32_t top_k, const int32_t* routing,
                       float* out, cudaStream_t stream, bool allow_grouped = true,
                       const CounterStore& after = CounterStore(), const CounterWait& before = CounterWait(),
                       const ExpertCombine& combine = ExpertCombine());
  // Whether every expert of `layer` is here (what Enqueue's `combine` needs).
  bool HasWholeLayer(int layer) const;
  cudaStream_t stream() const { return stream_; }
  bool HasLayer(int layer) const { return tables_.count(layer) != 0; }

  // Device pointers: x [tokens, hidden], routing [tokens, top_k], out [tokens, top_k, hidden]. Runs on
  // the store's stream (decode kernels, fp32 activations) and waits for it; returns the number of
  // (token, slot) pairs computed.
  absl::StatusOr<uint32_t> Compute(int layer, const float* x, uint32_t tokens, uint32_t top_k,
                                   const int32_t* routing, float* out);

  uint64_t checkpoint_bytes() const { return checkpoint_bytes_; }
  size_t num_experts() const { return num_experts_; }

 private:
  GpuExpertStore() = default;
  // Validates the assignment and creates the stream; `fill(layer, expert, proj, shape, &dev)` places
  // one tensor.
  template <typename Fill>
  static absl::StatusOr<std::unique_ptr<GpuExpertStore>> Build(const ModelConfig& config,
                                                               const std::vector<LayerExpertSet>& assignment,
                                                               int device, Fill fill);
  ModelConfig config_;
  int device_ = 0;
  bool fp32_ = false;
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocations_;
  std::map<int, GpuExpert*> tables_;   // layer -> device array [num_experts]
  std::map<int, std::vector<bool>> owned_;
  unsigned int* arrivals_ = nullptr;  // the down kernel's, for a CounterStore (zeroed)
  float* act_ = nullptr;
  size_t act_capacity_ = 0;
  GroupedFfnScratch grouped_;  // bf16 stores with room for kGroupedMinTokens or more
  size_t grouped_pairs_ = 0;    // the pairs grouped_ holds
  std::vector<void*> grouped_allocations_;
  uint64_t checkpoint_bytes_ = 0;
  size_t num_experts_ = 0;
};

}  // namespace pinmoe
