#include "coordinator/session.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/status.h"
#include <algorithm>
#include <functional>

#include "coordinator/qwen3_moe.h"
#include "coordinator/qwen3_next.h"

namespace pinmoe {

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
      const int context = options.context > 0 ? std::min(options.context, s->config_.max_position_embeddings)
                                              : s->config_.max_position_embeddings;
      ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(s->config_, options.devices, context));
      if (log != nullptr) *log << "pinmoe: memory plan\n" << FormatMemoryPlan(s->config_, plan, context);
      po.num_workers = static_cast<int>(options.devices.size());
      for (const auto& d : options.devices) po.worker_devices.push_back(d.name);
      po.placement = plan.placement;
    } else if (log != nullptr) {
      *log << absl::StrFormat("pinmoe: placement plan, %d worker(s) on %s, %d layers x %d experts\n",
                              po.num_workers, options.worker_device, s->config_.num_layers,
                              s->config_.num_experts)
           << FormatPlacement(s->config_, MakePlacement(s->config_, po.num_workers));
    }
    ASSIGN_OR_RETURN(s->pool_, WorkerPool::Start(s->config_, po));
    set_experts(s->pool_.get());
  }
  s->model_ = std::move(model);
  return s;
}

}  // namespace pinmoe
