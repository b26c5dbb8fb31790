// A loaded model ready to generate: config, tokenizer, dense weights in the coordinator, and the routed
// experts either in worker processes or in-process.
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/tokenizer.h"
#include "coordinator/causal_lm.h"
#include "coordinator/expert_backend.h"
#include "coordinator/plan.h"
#include "coordinator/worker_pool.h"

namespace pinmoe {

struct SessionOptions {
  std::string model_dir;
  int workers = 1;  // 0: experts in the coordinator process
  std::string worker_binary;
  std::vector<std::string> extra_worker_args;
  int context = 0;  // 0: the model's max_position_embeddings
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kAuto;  // the GPU path's KV cache (the CPU path's is fp32)
  int step_timeout_ms = 60000;
  int register_timeout_ms = 10000;
  // "cpu" or "cuda:N" for every worker, or one device per worker ("cuda:0,cpu,cuda:1": CPU and GPU
  // workers mix; the list sets the worker count).
  std::string worker_device = "cpu";
  // Device budgets (--gpus/--gpu-mem/--cpu-mem): one worker per device, placed by PlanMemory. When set,
  // `workers` and `worker_device` are ignored.
  std::vector<DeviceBudget> devices;
  // Where the coordinator's dense part runs: "cpu" (fp32, the reference path) or "cuda:N". With a GPU here, --workers 0 keeps the experts in this process on the same GPU, GPU workers
  // are ordered on the GPU (one message per step), and CPU workers are reached through the host.
  std::string device = "cpu";
};

class GpuExperts;

class Session {
 public:
  // `log` (may be null) receives the placement plan and load notes.
  static absl::StatusOr<std::unique_ptr<Session>> Open(const SessionOptions& options,
                                                       std::ostream* log);

  CausalLm& model() { return *model_; }
  const ModelConfig& config() const { return config_; }
  const GenerationConfig& generation_config() const { return generation_config_; }
  // Null when the model directory has no tokenizer.json.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  WorkerPool* pool() { return pool_.get(); }

 private:
  static absl::StatusOr<std::unique_ptr<Session>> OpenOnGpu(std::unique_ptr<Session> s,
                                                            const SessionOptions& options, int device,
                                                            std::ostream* log);
  ModelConfig config_;
  GenerationConfig generation_config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<InProcessExperts> in_process_;
#if PINMOE_WITH_CUDA
  std::unique_ptr<GpuExperts> gpu_experts_;  // declared before model_: destroyed after it
#endif
  std::unique_ptr<CausalLm> model_;

 public:
  ~Session();
};

}  // namespace pinmoe
