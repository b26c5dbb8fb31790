#include "coordinator/expert_backend.h"

#include "common/status.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<InProcessExperts>> InProcessExperts::Load(const ModelConfig& config,
                                                                         Checkpoint& checkpoint) {
  std::vector<LayerExpertSet> all;
  for (int l = 0; l < config.num_layers; ++l) {
    if (!config.IsMoeLayer(l)) continue;
    LayerExpertSet s;
    s.layer = l;
    for (int e = 0; e < config.num_experts; ++e) s.experts.push_back(e);
    all.push_back(std::move(s));
  }
  auto backend = std::make_unique<InProcessExperts>();
  ASSIGN_OR_RETURN(backend->store_, CpuExpertStore::Load(config, checkpoint, all));
  backend->top_k_ = static_cast<uint32_t>(config.top_k);
  return backend;
}

absl::Status InProcessExperts::RunMoe(int layer, const float* x, uint32_t tokens,
                                      const int32_t* routing, float* out) {
  ASSIGN_OR_RETURN(uint32_t pairs, store_->Compute(layer, x, tokens, top_k_, routing, out));
  PINMOE_CHECK(pairs == tokens * top_k_);
  return absl::OkStatus();
}

}  // namespace pinmoe
