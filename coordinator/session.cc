#include "coordinator/session.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/status.h"
#include <algorithm>
#include <functional>

#include "common/device_name.h"
#include "common/str_cat.h"
#include "coordinator/qwen3_moe.h"
#include "coordinator/qwen3_next.h"
#if PINMOE_WITH_CUDA
#include "coordinator/gpu/gpu_experts.h"
#include "coordinator/gpu/gpu_qwen3_moe.h"
#include "coordinator/gpu/gpu_qwen3_next.h"
#endif

namespace pinmoe {

Session::~Session() = default;

namespace {

// The pool's options from the session's: worker count, devices and placement.
absl::StatusOr<WorkerPoolOptions> PoolOptions(const ModelConfig& config, const SessionOptions& options,
                                              std::ostream* log) {
  WorkerPoolOptions po;
  po.num_workers = options.workers;
  po.worker_binary = options.worker_binary;
  po.model_dir = options.model_dir;
  po.extra_worker_args = options.extra_worker_args;
  po.step_timeout_ms = options.step_timeout_ms;
  po.register_timeout_ms = options.register_timeout_ms;
  po.worker_device = options.worker_device;
  if (options.worker_device.find(',') != std::string::npos) {  // one device per worker, e.g. cuda:0,cpu
    po.worker_devices = absl::StrSplit(options.worker_device, ',');
    po.num_workers = static_cast<int>(po.worker_devices.size());
  }
  if (!options.devices.empty()) {
    const int context = options.context > 0 ? std::min(options.context, config.max_position_embeddings)
                                            : config.max_position_embeddings;
    // The caches are the GPU path's when the dense part runs on a GPU.
    const KvCacheDtype kv = options.device == "cpu" ? KvCacheDtype::kF32 : options.kv_cache_dtype;
    ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(config, options.devices, context, kv));
    if (log != nullptr) *log << "pinmoe: memory plan\n" << FormatMemoryPlan(config, plan, context);
    po.num_workers = static_cast<int>(options.devices.size());
    for (const auto& d : options.devices) po.worker_devices.push_back(d.name);
    po.placement = plan.placement;
  }
  return po;
}

// The placement the pool made (its split depends on the workers' devices), unless a memory plan was
// printed instead.
void LogPlacement(const ModelConfig& config, const SessionOptions& options, const WorkerPool& pool,
                  std::ostream* log) {
  if (log == nullptr || !options.devices.empty()) return;
  *log << absl::StrFormat("pinmoe: placement plan, %d worker(s) on %s, %d layers x %d experts\n",
                          pool.placement().per_worker.size(), options.worker_device, config.num_layers,
                          config.num_experts)
       << FormatPlacement(config, pool.placement());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session>> Session::OpenOnGpu(std::unique_ptr<Session> s, const SessionOptions& options,
                                                            int device, std::ostream* log) {
#if PINMOE_WITH_CUDA
  GpuModelOptions mo;
  mo.device = device;
  mo.max_context = options.context;
  mo.kv_cache_dtype = options.kv_cache_dtype;
  std::unique_ptr<GpuCausalLm> model;
  switch (s->config_.architecture) {
    case Architecture::kQwen3Moe: {
      ASSIGN_OR_RETURN(model, GpuQwen3Moe::Load(s->config_, s->checkpoint_.get(), mo));
      break;
    }
    case Architecture::kQwen3Next: {
      ASSIGN_OR_RETURN(auto next, GpuQwen3Next::Load(s->config_, s->checkpoint_.get(), mo));
      if (log != nullptr) {
        for (const auto& note : next->notes()) *log << "pinmoe: " << note << "\n";
      }
      model = std::move(next);
      break;
    }
  }
  if (options.workers == 0 && options.devices.empty()) {
    ASSIGN_OR_RETURN(s->gpu_experts_, DeviceExperts::Load(s->config_, s->checkpoint_.get(), device,
                                                          mo.max_step_tokens, /*seed=*/0));
    if (log != nullptr) *log << "pinmoe: dense part and experts in the coordinator process on cuda:" << device << "\n";
  } else {
    ASSIGN_OR_RETURN(WorkerPoolOptions po, PoolOptions(s->config_, options, log));
    po.buffer_device = device;
    bool all_gpu = true;
    std::vector<std::string> devices = po.worker_devices;
    if (devices.empty()) devices.assign(po.num_workers, po.worker_device);
    for (const auto& d : devices) all_gpu = all_gpu && d != "cpu";
    po.max_tokens_per_step = all_gpu ? mo.max_step_tokens : 512;
    ASSIGN_OR_RETURN(s->pool_, WorkerPool::Start(s->config_, po));
    LogPlacement(s->config_, options, *s->pool_, log);
    if (all_gpu) {
      ASSIGN_OR_RETURN(s->gpu_experts_, PooledGpuExperts::Create(s->pool_.get()));
    } else {
      ASSIGN_OR_RETURN(s->gpu_experts_, HostBridgeExperts::Create(s->config_, s->pool_.get(), device, 512));
      if (log != nullptr) {
        *log << "pinmoe: CPU workers with a GPU dense part: each MoE layer makes a host round trip\n";
      }
    }
  }
  model->set_experts(s->gpu_experts_.get());
  s->model_ = std::move(model);
  return s;
#else
  (void)s;
  (void)device;
  (void)log;
  return absl::UnimplementedError(StrCat("--device ", options.device, ": this build has no CUDA"));
#endif
}

absl::StatusOr<std::unique_ptr<Session>> Session::Open(const SessionOptions& options,
                                                       std::ostream* log) {
  auto s = std::unique_ptr<Session>(new Session());
  ASSIGN_OR_RETURN(s->config_, LoadModelConfig(options.model_dir));
  ASSIGN_OR_RETURN(s->generation_config_, LoadGenerationConfig(options.model_dir));
  const std::string tokenizer_path = JoinPath(options.model_dir, "tokenizer.json");
  if (FileExists(tokenizer_path)) {
    ASSIGN_OR_RETURN(s->tokenizer_, Tokenizer::Load(tokenizer_path));
  }
  ASSIGN_OR_RETURN(s->checkpoint_, Checkpoint::Open(options.model_dir));
  ASSIGN_OR_RETURN(const int dense_device, ParseDeviceName(options.device));
  if (dense_device >= 0) return OpenOnGpu(std::move(s), options, dense_device, log);
  if (options.kv_cache_dtype == KvCacheDtype::kBf16 && log != nullptr) {
    *log << "pinmoe: --kv-cache-dtype bf16 applies to the GPU path (--device cuda:N); the CPU path keeps its "
            "KV cache in f32\n";
  }
  // The model checks every tensor name and shape before any worker starts.
  std::unique_ptr<CausalLm> model;
  std::function<void(ExpertBackend*)> set_experts;
  switch (s->config_.architecture) {
    case Architecture::kQwen3Moe: {
      ASSIGN_OR_RETURN(auto m, Qwen3MoeModel::Load(s->config_, *s->checkpoint_, options.context));
      set_experts = [p = m.get()](ExpertBackend* e) { p->set_experts(e); };
      model = std::move(m);
      break;
    }
    case Architecture::kQwen3Next: {
      ASSIGN_OR_RETURN(auto m, Qwen3NextModel::Load(s->config_, *s->checkpoint_, options.context));
      if (log != nullptr) {
        for (const auto& note : m->notes()) *log << "pinmoe: " << note << "\n";
      }
      set_experts = [p = m.get()](ExpertBackend* e) { p->set_experts(e); };
      model = std::move(m);
      break;
    }
  }
  if (options.workers == 0 && options.devices.empty()) {
    ASSIGN_OR_RETURN(s->in_process_, InProcessExperts::Load(s->config_, *s->checkpoint_));
    set_experts(s->in_process_.get());
    if (log != nullptr) *log << "pinmoe: experts run in the coordinator process (--workers 0)\n";
  } else {
    ASSIGN_OR_RETURN(WorkerPoolOptions po, PoolOptions(s->config_, options, log));
    ASSIGN_OR_RETURN(s->pool_, WorkerPool::Start(s->config_, po));
    LogPlacement(s->config_, options, *s->pool_, log);
    set_experts(s->pool_.get());
  }
  s->model_ = std::move(model);
  return s;
}

}  // namespace pinmoe
