// Where a GPU model's routed experts run. The model writes each MoE layer's normalised hidden states
// and routing table into buffers the backend provides, then calls EnqueueLayer on its stream; after
// that point of the stream, `slots` holds every (token, slot)'s raw expert output.
//
//  - DeviceExperts: all experts in the coordinator process, on its GPU (the in-process baseline).
//  - PooledGpuExperts: GPU worker processes, ordered on the GPU through counters (WorkerPool's
//    GPU-ordered path): one message per step, none per layer.
//  - HostBridgeExperts: any ExpertBackend (CPU workers, a CPU/GPU mix, CPU in-process experts): the
//    layer's inputs go to the host and the outputs come back, a host round trip per layer. The
//    fallback for mixes, correct but slow.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/status.h"
#include "common/safetensors.h"
#include "coordinator/expert_backend.h"
#include "coordinator/worker_pool.h"
#include "worker/gpu/counter_kernels.h"
#include "worker/gpu/gpu_expert_store.h"
#include "worker/gpu/stream_sync.h"

namespace pinmoe {

class GpuExperts {
 public:
  struct Buffers {
    float* input = nullptr;      // [max_tokens, hidden]
    int32_t* routing = nullptr;  // [max_tokens, top_k]
    float* slots = nullptr;      // [max_tokens, top_k, hidden]
    // Optional (null: the model keeps its own): the residual stream [max_tokens, hidden] and the routing
    // weights [max_tokens, top_k], which the model then uses as its own, so that a backend that combines
    // (Combines) can reach them.
    float* residual = nullptr;
    float* weights = nullptr;
  };
  virtual ~GpuExperts() = default;
  virtual uint32_t max_tokens() const = 0;
  virtual Buffers buffers() = 0;
  // How many distinct versions of a step's enqueued work exist (0: the work cannot be captured in a
  // CUDA graph, e.g. it makes host round trips). The model keeps one decode graph per variant.
  virtual int graph_variants() const = 0;
  // Before the step's first layer; `tokens` <= max_tokens(). Returns the step's variant.
  virtual absl::StatusOr<int> BeginStep(uint32_t tokens) = 0;
  virtual absl::Status EnqueueLayer(int layer, uint32_t tokens, cudaStream_t stream, int variant) = 0;
  // The same in parts, so that the hand-over starts inside the router and independent work (Qwen3-Next's
  // shared expert) can be enqueued between StartLayer and FinishLayer to overlap experts that run
  // elsewhere. InputsReady: the counters that the kernel writing the layer's routing stores: `ready`
  // once the input and routing are written (none: nothing to store) and, optionally, `soon` as it
  // starts (before ready; its value may be read by nothing but a wait); after FinishLayer the slots
  // are ready.
  struct RouterStores {
    CounterStore ready;
    CounterStore soon;
  };
  virtual absl::StatusOr<RouterStores> InputsReady(int layer, int variant) { return RouterStores(); }
  virtual absl::Status StartLayer(int layer, uint32_t tokens, cudaStream_t stream, int variant) {
    return EnqueueLayer(layer, tokens, stream, variant);
  }
  virtual absl::Status FinishLayer(int layer, cudaStream_t stream, int variant) { return absl::OkStatus(); }
  // Whether the layer's experts, in a step of `tokens` tokens, also add the weighted slots to the residual
  // (Buffers::residual, with Buffers::weights): the model then launches no combine of its own.
  virtual bool Combines(int layer, uint32_t tokens) const { return false; }
  // Waits (bounded) for `done`, recorded on the model's stream after the step's last use of the buffers.
  virtual absl::Status FinishStep(cudaEvent_t done) = 0;
  // After a step's work is enqueued, before FinishStep: the next step is expected to have `tokens`
  // tokens (a decode loop), so a backend whose workers learn of a step from a message may send it now;
  // BeginStep then takes it up, or withdraws it first for other tokens. Settle withdraws what was sent
  // ahead: the model calls it when it stops stepping (WorkerPool::SendGpuStepAhead says why it must).
  virtual absl::Status SendAhead(uint32_t tokens) { return absl::OkStatus(); }
  virtual absl::Status Settle() { return absl::OkStatus(); }
};

class DeviceExperts : public GpuExperts {
 public:
  // From the checkpoint, or synthetic (seed != 0, checkpoint unused and may be null).
  static absl::StatusOr<std::unique_ptr<DeviceExperts>> Load(const ModelConfig& config, Checkpoint* checkpoint,
                                                             int device, uint32_t max_tokens, uint64_t seed);
  ~DeviceExperts() override;
  uint32_t max_tokens() const override { return max_tokens_; }
  Buffers buffers() override { return buffers_; }
  int graph_variants() const override { return 1; }
  absl::StatusOr<int> BeginStep(uint32_t tokens) override;
  absl::Status EnqueueLayer(int layer, uint32_t tokens, cudaStream_t stream, int variant) override;
  bool Combines(int layer, uint32_t tokens) const override { return tokens == 1 && ExpertsCombine(); }
  absl::Status FinishStep(cudaEvent_t done) override;

 private:
  DeviceExperts() = default;
  ModelConfig config_;
  std::unique_ptr<GpuExpertStore> store_;
  uint32_t max_tokens_ = 0;
  Buffers buffers_;
  std::vector<void*> allocations_;
};

class PooledGpuExperts : public GpuExperts {
 public:
  // `pool` (not owned) must have every worker on a GPU.
  static absl::StatusOr<std::unique_ptr<PooledGpuExperts>> Create(WorkerPool* pool);
  uint32_t max_tokens() const override { return pool_->max_tokens_per_step(); }
  Buffers buffers() override { return buffers_; }
  int graph_variants() const override { return 2; }  // the step parity
  absl::StatusOr<int> BeginStep(uint32_t tokens) override { return pool_->BeginGpuStep(tokens); }
  absl::Status EnqueueLayer(int layer, uint32_t, cudaStream_t stream, int variant) override {
    return pool_->EnqueueGpuLayer(layer, stream, variant);
  }
  // The router stores the tick (InputsReady); the workers start on it.
  absl::StatusOr<RouterStores> InputsReady(int layer, int variant) override {
    ASSIGN_OR_RETURN(WorkerPool::GpuTick tick, pool_->GpuLayerTick(layer, variant));
    RouterStores stores;
    stores.ready = CounterStore{tick.counter, tick.value, tick.system_scope, tick.stamp};
    if (tick.soon != nullptr) stores.soon = CounterStore{tick.soon, tick.value, tick.system_scope};
    return stores;
  }
  absl::Status StartLayer(int, uint32_t, cudaStream_t, int) override { return absl::OkStatus(); }
  absl::Status FinishLayer(int layer, cudaStream_t stream, int variant) override {
    return pool_->AwaitGpuLayer(layer, stream, variant);
  }
  bool Combines(int layer, uint32_t tokens) const override { return pool_->CombinesGpuLayer(layer, tokens); }
  absl::Status FinishStep(cudaEvent_t done) override { return pool_->FinishGpuStep(done); }
  absl::Status SendAhead(uint32_t tokens) override { return pool_->SendGpuStepAhead(tokens); }
  absl::Status Settle() override { return pool_->WithdrawGpuStepAhead(); }

 private:
  WorkerPool* pool_ = nullptr;
  Buffers buffers_;
};

class HostBridgeExperts : public GpuExperts {
 public:
  // `backend` (not owned) computes on host memory.
  static absl::StatusOr<std::unique_ptr<HostBridgeExperts>> Create(const ModelConfig& config,
                                                                   ExpertBackend* backend, int device,
                                                                   uint32_t max_tokens);
  ~HostBridgeExperts() override;
  uint32_t max_tokens() const override { return max_tokens_; }
  Buffers buffers() override { return buffers_; }
  int graph_variants() const override { return 0; }
  absl::StatusOr<int> BeginStep(uint32_t) override { return 0; }
  absl::Status EnqueueLayer(int layer, uint32_t tokens, cudaStream_t stream, int variant) override;
  absl::Status FinishStep(cudaEvent_t done) override;

 private:
  HostBridgeExperts() = default;
  ModelConfig config_;
  ExpertBackend* backend_ = nullptr;
  uint32_t max_tokens_ = 0;
  Buffers buffers_;
  std::vector<void*> allocations_;
  std::vector<float> x_, slots_;
  std::vector<int32_t> routing_;
};

}  // namespace pinmoe
