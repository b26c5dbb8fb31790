// Memory planning from config.json alone (no weights are read): how many bytes the dense part, the caches
// and the routed experts need, and how the experts split over devices with given budgets. The dense part
// (and its caches) sits on the first device; every device then takes a share of every MoE layer's
// experts in proportion to what its budget has left, so that per-layer work follows capacity.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "coordinator/kv_cache_dtype.h"
#include "coordinator/placement.h"

namespace pinmoe {

struct DeviceBudget {
  std::string name;    // "cuda:0", ..., or "cpu"
  uint64_t bytes = 0;  // memory this device may use for pinmoe
};

struct DevicePlan {
  std::string name;
  uint64_t budget = 0;
  uint64_t dense_bytes = 0;   // dense weights + caches + step buffers (first device only)
  uint64_t expert_bytes = 0;
  uint64_t scratch_bytes = 0;  // the experts' step scratch (a GPU holding experts)
  int experts = 0;
};

struct MemoryPlan {
  uint64_t dense_bytes = 0;
  uint64_t cache_bytes = 0;
  uint64_t step_bytes = 0;    // the first device's step buffers (StepBuffers: model, linear, expert_io)
  uint64_t expert_scratch_bytes = 0;  // on every GPU that holds experts
  uint64_t expert_bytes = 0;  // all routed experts
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kF32;  // the caches' elements, resolved
  std::vector<DevicePlan> devices;
  Placement placement;        // per_worker index = device index
};

// Bytes of everything but the routed experts, in the config's weight dtype.
uint64_t DenseWeightBytes(const ModelConfig& config);
// KV cache for `context` tokens plus the recurrent and conv states of one sequence: the states fp32, the
// KV cache in `kv` (resolved; the CPU path's is fp32: coordinator/layers.h KvCache; GpuCausalLm's
// follows --kv-cache-dtype).
uint64_t CacheBytes(const ModelConfig& config, int context, KvCacheDtype kv = KvCacheDtype::kF32);

// What one decode step moves through memory, for the bench's roofline. DecodeWeightBytes: the weights
// read (`bytes_per_weight` each) by a step of `batch` sequences. DecodeCacheBytes: the per-sequence
// state the step moves at a context of `context` positions (a mean may be fractional): the K and V (in
// `kv`) the attention layers read, and the DeltaNet layers' fp32 recurrent and conv states, read and
// written back.
uint64_t DecodeWeightBytes(const ModelConfig& config, int bytes_per_weight, int batch);
uint64_t DecodeCacheBytes(const ModelConfig& config, int batch, double context, KvCacheDtype kv = KvCacheDtype::kF32);

// Device memory for one step of up to `tokens` tokens beyond weights and caches, as the GPU path allocates
// it (fp32 activations; the CUDA context and cuBLAS's workspace are not counted).
struct StepBuffers {
  uint64_t model = 0;      // the coordinator's model (GpuCausalLm and GpuQwen3Moe / GpuQwen3Next scratch)
  uint64_t linear = 0;     // its GEMM staging (LinearRunner: fp32 normed rows and their bf16 copy)
  uint64_t expert_io = 0;  // the experts' hand-over slots: input, routing, an output row per routed pair
  uint64_t expert_scratch = 0;  // each GPU that computes experts: the pairs' activations (GpuExpertStore)
};
StepBuffers StepBufferBytes(const ModelConfig& config, uint32_t tokens);
// The tokens per step the GPU path sizes its buffers for (GpuModelOptions::max_step_tokens).
constexpr uint32_t kGpuStepTokens = 2048;

// Fails with a message that says how much is missing when the budgets cannot hold the model. The first
// device holds the dense part, its caches (in `kv`, resolved against the weights' dtype; fp32 when that
// device is the CPU) and the step buffers; every GPU also the experts' scratch.
absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& config, const std::vector<DeviceBudget>& devices,
                                      int context, KvCacheDtype kv = KvCacheDtype::kF32);
std::string FormatMemoryPlan(const ModelConfig& config, const MemoryPlan& plan, int context);

// "70GiB", "14.5GB", "512MiB", "1024" (bytes).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);
// --gpus "0,1" with --gpu-mem "0=70GiB,1=14GiB" and an optional --cpu-mem "64GiB".
absl::StatusOr<std::vector<DeviceBudget>> ParseDeviceBudgets(const std::string& gpus, const std::string& gpu_mem,
                                                             const std::string& cpu_mem);

}  // namespace pinmoe
