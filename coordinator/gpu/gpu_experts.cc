#include "coordinator/gpu/gpu_experts.h"

#include "common/status.h"
#include "common/str_cat.h"
#include "coordinator/placement.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/stream_sync.h"

namespace pinmoe {
namespace {

// `combine`: also the residual and the routing weights (a backend that combines).
absl::Status AllocateBuffers(const ModelConfig& c, uint32_t max_tokens, bool combine, std::vector<void*>* owned,
                             GpuExperts::Buffers* b) {
  const size_t t = max_tokens, h = c.hidden_size, k = c.top_k;
  auto alloc = [&]<typename T>(size_t count, T** dst) -> absl::Status {
    void* p = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&p, count * sizeof(T)));
    owned->push_back(p);
    *dst = static_cast<T*>(p);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(alloc(t * h, &b->input));
  RETURN_IF_ERROR(alloc(t * k, &b->routing));
  RETURN_IF_ERROR(alloc(t * k * h, &b->slots));
  if (combine) {
    RETURN_IF_ERROR(alloc(t * h, &b->residual));
    RETURN_IF_ERROR(alloc(t * k, &b->weights));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceExperts>> DeviceExperts::Load(const ModelConfig& config, Checkpoint* checkpoint,
                                                                   int device, uint32_t max_tokens, uint64_t seed) {
  auto d = std::unique_ptr<DeviceExperts>(new DeviceExperts());
  d->config_ = config;
  d->max_tokens_ = max_tokens;
  const Placement all = MakePlacement(config, 1);
  if (seed != 0) {
    ASSIGN_OR_RETURN(d->store_, GpuExpertStore::Synthetic(config, all.per_worker[0], device, seed));
  } else {
    ASSIGN_OR_RETURN(d->store_, GpuExpertStore::Load(config, *checkpoint, all.per_worker[0], device));
  }
  RETURN_IF_ERROR(d->store_->Reserve(max_tokens, static_cast<uint32_t>(config.top_k)));
  RETURN_IF_ERROR(AllocateBuffers(config, max_tokens, /*combine=*/true, &d->allocations_, &d->buffers_));
  return d;
}

DeviceExperts::~DeviceExperts() {
  for (void* p : allocations_) cudaFree(p);
}

absl::StatusOr<int> DeviceExperts::BeginStep(uint32_t tokens) {
  if (tokens == 0 || tokens > max_tokens_) return absl::InvalidArgumentError(StrCat("a step of ", tokens, " tokens"));
  return 0;
}

absl::Status DeviceExperts::EnqueueLayer(int layer, uint32_t tokens, cudaStream_t stream, int) {
  ExpertCombine combine;
  if (Combines(layer, tokens)) combine = ExpertCombine{buffers_.residual, buffers_.weights};
  return store_->Enqueue(layer, buffers_.input, tokens, static_cast<uint32_t>(config_.top_k), buffers_.routing,
                         buffers_.slots, stream, /*allow_grouped=*/true, CounterStore(), CounterWait(), combine);
}

absl::Status DeviceExperts::FinishStep(cudaEvent_t done) {
  return WaitForEvent(done, std::chrono::seconds(60), "the GPU step", nullptr);
}

absl::StatusOr<std::unique_ptr<PooledGpuExperts>> PooledGpuExperts::Create(WorkerPool* pool) {
  auto p = std::unique_ptr<PooledGpuExperts>(new PooledGpuExperts());
  p->pool_ = pool;
  ASSIGN_OR_RETURN(WorkerPool::DeviceSlots s, pool->device_slots());
  p->buffers_ = {s.input, s.routing, s.output, s.residual, s.weights};
  return p;
}

absl::StatusOr<std::unique_ptr<HostBridgeExperts>> HostBridgeExperts::Create(const ModelConfig& config,
                                                                             ExpertBackend* backend, int device,
                                                                             uint32_t max_tokens) {
  auto b = std::unique_ptr<HostBridgeExperts>(new HostBridgeExperts());
  b->config_ = config;
  b->backend_ = backend;
  b->max_tokens_ = max_tokens;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  RETURN_IF_ERROR(AllocateBuffers(config, max_tokens, /*combine=*/false, &b->allocations_, &b->buffers_));
  return b;
}

HostBridgeExperts::~HostBridgeExperts() {
  for (void* p : allocations_) cudaFree(p);
}

absl::Status HostBridgeExperts::EnqueueLayer(int layer, uint32_t tokens, cudaStream_t stream, int) {
  const size_t h = config_.hidden_size, k = config_.top_k;
  x_.resize(tokens * h);
  routing_.resize(tokens * k);
  slots_.resize(tokens * k * h);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(x_.data(), buffers_.input, x_.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(routing_.data(), buffers_.routing, routing_.size() * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  RETURN_IF_ERROR(backend_->RunMoe(layer, x_.data(), tokens, routing_.data(), slots_.data()));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buffers_.slots, slots_.data(), slots_.size() * sizeof(float),
                                       cudaMemcpyHostToDevice, stream));
  // The host vector may be reused by the next layer before the copy ran.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::Status HostBridgeExperts::FinishStep(cudaEvent_t done) {
  return WaitForEvent(done, std::chrono::seconds(60), "the GPU step", nullptr);
}

}  // namespace pinmoe
