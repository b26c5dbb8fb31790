// Where the coordinator's routed-expert work goes: to worker processes (WorkerPool) or, for comparison
// and for the smallest setups, to experts held in the coordinator itself (InProcessExperts).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "worker/expert_store.h"

namespace pinmoe {

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;
  // x: [tokens, hidden]; routing: [tokens, top_k] expert ids; out: [tokens, top_k, hidden], every pair
  // filled with the raw output of its routed expert (the caller applies the routing weights).
  virtual absl::Status RunMoe(int layer, const float* x, uint32_t tokens, const int32_t* routing,
                              float* out) = 0;
};

class InProcessExperts : public ExpertBackend {
 public:
  static absl::StatusOr<std::unique_ptr<InProcessExperts>> Load(const ModelConfig& config,
                                                                Checkpoint& checkpoint);
  absl::Status RunMoe(int layer, const float* x, uint32_t tokens, const int32_t* routing,
                      float* out) override;

 private:
  std::unique_ptr<CpuExpertStore> store_;
  uint32_t top_k_ = 0;
};

}  // namespace pinmoe
